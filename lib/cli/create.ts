// geom-rowr create: start a daemon for NAME and print the device it made.
// Without -v the daemon detaches (lib/daemon/detached.ts); this process
// waits until it reports ready, or why it could not start, then exits.
import { startDetached } from '../daemon/detached.js'
import { runDevice } from '../daemon/run-device.js'
import { clearStale } from '../daemon/stale.js'
import { resolveDevicePath, resolveRwPath } from '../devices/device-path.js'
import { NO_RO } from '../devices/absent-ro.js'
import { RowrError } from '../errors.js'
import { platform } from '../../native-bindings/platform.js'
import { announce, hydrationOptions, mapOptions, stderrLog, warn, type HydrationArgs, type MapArgs } from './foreground.js'

export interface CreateArgs extends MapArgs, HydrationArgs {
  readonly name: string
  readonly ro: string
  readonly rw: string
  readonly verbose: boolean
  readonly 'sector-size'?: number
  readonly attach: boolean
  readonly 'systemd-mark': boolean
}

const checkCanAttach = (): void => {
  if (process.getuid?.() !== 0) {
    const what = platform() === 'freebsd' ? 'a GEOM Gate provider (/dev/ggctl)' : 'a kernel block device'
    throw new RowrError('EPLATFORM', `attaching ${what} needs root: run it as root, or use --no-attach (or geom-rowr serve) for NBD only`)
  }
}

export const create = async (a: CreateArgs): Promise<void> => {
  if (a.attach) checkCanAttach()
  // Here rather than in the daemon, so that the message reaches the user.
  await clearStale(a.name, warn)
  const options = {
    name: a.name,
    ro: a.ro === NO_RO ? NO_RO : resolveDevicePath(a.ro),
    rw: resolveRwPath(a.rw),
    sectorSize: a['sector-size'],
    attach: a.attach,
    ...mapOptions(a),
    ...hydrationOptions(a),
  }
  if (a.verbose) {
    await runDevice({ ...options, log: stderrLog(a.name, true) }, d => {
      announce(d.state, d.warnings)
      process.stdout.write(`${d.state.device ?? d.state.nbd}\n`)
    })
  } else {
    const ready = await startDetached(options, { systemdMark: a['systemd-mark'] })
    announce(ready.state, ready.warnings)
    process.stdout.write(`${ready.device}\n`)
  }
}
