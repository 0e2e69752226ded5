// geom-rowr create: start a daemon for NAME and print the device it made.
// Without -v the daemon detaches; this process waits until it reports ready
// (or why it could not start) over an IPC channel, then exits.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import type { DaemonOptions } from '../daemon/daemon.js'
import { cappedLogWriter, openDaemonLog, removeDaemonLog } from '../daemon/daemon-log.js'
import { clearStale } from '../daemon/stale.js'
import { resolveDevicePath, resolveRwPath } from '../devices/device-path.js'
import { NO_RO } from '../devices/absent-ro.js'
import { RowrError } from '../errors.js'
import { failureMessage } from '../failure-message.js'
import { platform } from '../../native-bindings/libc.js'
import { DAEMON_NODE_FLAGS } from '../runtime-tuning.js'
import { announce, hydrationOptions, mapOptions, runInForeground, stderrLog, warn, type HydrationArgs, type MapArgs } from './foreground.js'

export interface CreateArgs extends MapArgs, HydrationArgs {
  readonly name: string
  readonly ro: string
  readonly rw: string
  readonly verbose: boolean
  readonly 'sector-size'?: number
  readonly attach: boolean
  readonly 'systemd-mark': boolean
  readonly 'daemon-child': boolean
}

type ChildMessage =
  | {
      readonly type: 'ready'
      readonly device: string
      readonly state: { rw: string; rwAuto: boolean; mediasize: number; map: string | null }
      readonly warnings: readonly string[]
    }
  | { readonly type: 'error'; readonly message: string }

/** How long a detached daemon may take to report ready. */
const START_TIMEOUT_MS = 60_000

const checkCanAttach = (): void => {
  if (process.getuid?.() !== 0) {
    const what = platform() === 'freebsd' ? 'a GEOM Gate provider (/dev/ggctl)' : 'a kernel block device'
    throw new RowrError(
      'EPLATFORM',
      `attaching ${what} needs root: run it as root, or use --no-attach (or geom-rowr serve) for NBD only`,
    )
  }
}

export const create = async (a: CreateArgs): Promise<void> => {
  if (a.attach) checkCanAttach()
  // Here rather than in the daemon, so that the message reaches the user.
  if (!a['daemon-child']) await clearStale(a.name, warn)
  const options = {
    name: a.name,
    ro: a.ro === NO_RO ? NO_RO : resolveDevicePath(a.ro),
    rw: resolveRwPath(a.rw),
    sectorSize: a['sector-size'],
    attach: a.attach,
    ...mapOptions(a),
    ...hydrationOptions(a),
  }
  if (a['daemon-child']) {
    await runDaemonChild({ ...options, log: daemonChildLog(a.name) })
  } else if (a.verbose) {
    await runInForeground({ ...options, log: stderrLog(a.name, true) }, d => {
      announce(d.state, d.warnings)
      process.stdout.write(`${d.state.device ?? d.state.nbd}\n`)
    })
  } else {
    const ready = await spawnDaemon(options, a['systemd-mark'])
    announce(ready.state, ready.warnings)
    process.stdout.write(`${ready.device}\n`)
  }
}

/** The detached daemon's standard error is its log file: timestamped lines, capped. */
const daemonChildLog = (name: string): DaemonOptions['log'] => {
  const write = cappedLogWriter(process.stderr.fd)
  return message => write(`${new Date().toISOString()} geom-rowr[${name}]: ${message}\n`)
}

const runDaemonChild = async (o: DaemonOptions): Promise<void> => {
  const send = (m: ChildMessage): Promise<void> =>
    new Promise(resolve => (process.send ? process.send(m, () => resolve()) : resolve()))
  try {
    await runInForeground(o, d => {
      void send({ type: 'ready', device: d.state.device ?? d.state.nbd, state: d.state, warnings: d.warnings }).then(() =>
        process.disconnect?.(),
      )
    })
    // Destroyed (not stopped by a signal): nothing in the log is needed any more.
    if (!process.exitCode) removeDaemonLog(o.name)
  } catch (e) {
    const message = failureMessage(e)
    o.log(`could not start: ${message}`)
    await send({ type: 'error', message })
    process.disconnect?.()
    process.exitCode = 1
  }
}

/**
 * The argv[0] of a daemon that serves the root file system: systemd's
 * shutdown spares processes whose argv[0] begins with '@' (its "root storage
 * daemons"), which must outlive the remount of the root read-only.
 */
const SYSTEMD_MARKED_ARGV0 = '@geom-rowr'

const spawnDaemon = async (o: Omit<DaemonOptions, 'log'>, systemdMark: boolean): Promise<Extract<ChildMessage, { type: 'ready' }>> => {
  const { fd: logFd, path: logPath } = openDaemonLog(o.name)
  const args = [
    ...DAEMON_NODE_FLAGS,
    process.argv[1]!,
    'create',
    '--daemon-child',
    ...(o.sectorSize ? ['--sector-size', String(o.sectorSize)] : []),
    ...(o.attach ? [] : ['--no-attach']),
    ...(o.map !== undefined ? ['--map', o.map] : []),
    ...(o.mapOnRw ? ['--map-on-rw'] : []),
    ...(o.force ? ['--force'] : []),
    ...(o.discardMap ? ['--discard-map'] : []),
    ...(o.hydration?.start ? ['--hydrate'] : []),
    ...(o.hydration ? ['--hydrate-rate', String(o.hydration.rate), '--hydrate-share', String(o.hydration.share * 100)] : []),
    ...(o.hydration?.copyOnRead ? ['--copy-on-read'] : []),
    o.name,
    o.ro,
    o.rw,
  ]
  const child = spawn(process.execPath, args, {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'ipc'],
    ...(systemdMark ? { argv0: SYSTEMD_MARKED_ARGV0 } : {}),
  })
  fs.closeSync(logFd)
  try {
    const message = await new Promise<ChildMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGTERM')
        reject(new RowrError('EDAEMON', `the daemon for ${o.name} did not become ready within ${START_TIMEOUT_MS / 1000} s; see ${logPath}`))
      }, START_TIMEOUT_MS)
      child.once('message', m => {
        clearTimeout(timer)
        child.removeAllListeners('exit')
        resolve(m as ChildMessage)
      })
      child.once('exit', (code, signal) => {
        clearTimeout(timer)
        const tail = fs.readFileSync(logPath, 'utf8').trim().split('\n').slice(-3).join('\n')
        reject(new RowrError('EDAEMON', `the daemon for ${o.name} exited (${signal ?? `status ${code}`}) before it was ready; ${logPath} says:\n${tail}`))
      })
    })
    if (message.type === 'error') {
      // A refusal leaves nothing behind, the failed daemon included.
      if (child.exitCode === null && child.signalCode === null) {
        await new Promise(resolve => child.once('exit', resolve))
      }
      throw new Error(`${message.message}\n(the daemon's log: ${logPath})`)
    }
    return message
  } finally {
    child.removeAllListeners()
    if (child.connected) child.disconnect()
    child.unref()
  }
}
