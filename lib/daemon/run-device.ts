// Running a device in this process until it is destroyed or signalled: for
// the detached daemon, and for create -v and serve in the foreground.
import { constants } from 'node:os'
import { RowrDaemon, type DaemonOptions } from './daemon.js'

/**
 * Starts the device, calls `ready`, and returns once it has been destroyed
 * (exit status 0) or stopped by SIGINT, SIGTERM or SIGHUP (128 + the
 * signal's number), flushing either way. A signal leaves a kernel device
 * that is open serving (RowrDaemon.signalled).
 */
export const runDevice = async (o: DaemonOptions, ready: (daemon: RowrDaemon) => void): Promise<void> => {
  const daemon = await RowrDaemon.start(o)
  let signalled: NodeJS.Signals | undefined
  const onSignal = (signal: NodeJS.Signals): void => {
    daemon.signalled(signal).then(
      stopping => {
        if (stopping) signalled ??= signal
      },
      e => o.log(`${signal}: ${(e as Error).message}`),
    )
  }
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']
  for (const s of signals) process.on(s, onSignal)
  try {
    ready(daemon)
    await daemon.done
  } finally {
    for (const s of signals) process.off(s, onSignal)
  }
  o.log(`${o.name} stopped`)
  if (signalled) process.exitCode = 128 + constants.signals[signalled]
}
