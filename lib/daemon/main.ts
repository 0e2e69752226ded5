// The detached daemon's entry point, started by startDetached (detached.ts)
// as `main.js NAME OPTIONS`: OPTIONS is the JSON of its DetachedOptions,
// NAME is there for ps. It serves the device until it is destroyed or
// signalled, and reports on the IPC channel that it is ready, or why it
// could not start.
import '../runtime-tuning.js'
import assert from 'node:assert/strict'
import { failureMessage } from '../failure-message.js'
import { cappedLogWriter, removeDaemonLog } from './daemon-log.js'
import type { DaemonReport, DetachedOptions } from './detached.js'
import { runDevice } from './run-device.js'

const [name, json] = process.argv.slice(2)
assert(name !== undefined && json !== undefined, 'usage: main.js NAME OPTIONS (started by geom-rowr create)')
const options = JSON.parse(json) as DetachedOptions
assert.equal(options.name, name)

const send = (m: DaemonReport): Promise<void> => new Promise(resolve => (process.send ? process.send(m, () => resolve()) : resolve()))

// Standard error is the log file: timestamped lines, capped.
const write = cappedLogWriter(process.stderr.fd)
const log = (message: string): void => write(`${new Date().toISOString()} geom-rowr[${name}]: ${message}\n`)

try {
  await runDevice({ ...options, log }, d => {
    void send({ type: 'ready', device: d.state.device ?? d.state.nbd, state: d.state, warnings: d.warnings }).then(() =>
      process.disconnect?.(),
    )
  })
  // Destroyed (not stopped by a signal): nothing in the log is needed any more.
  if (!process.exitCode) removeDaemonLog(name)
} catch (e) {
  const message = failureMessage(e)
  log(`could not start: ${message}`)
  await send({ type: 'error', message })
  process.disconnect?.()
  process.exitCode = 1
}
