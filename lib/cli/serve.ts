// geom-rowr serve: NBD in the foreground, no kernel device, no root needed.
import path from 'node:path'
import { liveness } from '../daemon/run-state.js'
import { clearStale } from '../daemon/stale.js'
import { resolveDevicePath, resolveRwPath } from '../devices/device-path.js'
import { NO_RO } from '../devices/absent-ro.js'
import type { Listen } from '../nbd/server.js'
import { runDevice } from '../daemon/run-device.js'
import { announce, hydrationOptions, mapOptions, stderrLog, warn, type HydrationArgs, type MapArgs } from './foreground.js'

interface ServeArgs extends MapArgs, HydrationArgs {
  readonly ro: string
  readonly rw: string
  readonly name?: string
  readonly socket?: string
  readonly port?: number
  readonly bind: string
  readonly 'sector-size'?: number
  readonly verbose: boolean
}

/** rowr0, rowr1, ...: the first with no device. */
const firstFreeName = (): string => {
  for (let n = 0; ; n++) {
    if (liveness(`rowr${n}`).kind === 'absent') return `rowr${n}`
  }
}

export const serve = async (a: ServeArgs): Promise<void> => {
  const name = a.name ?? firstFreeName()
  await clearStale(name, warn)
  const listen: Listen | undefined =
    a.port !== undefined ? { port: a.port, host: a.bind } : a.socket !== undefined ? { socket: path.resolve(a.socket) } : undefined
  await runDevice(
    {
      name,
      ro: a.ro === NO_RO ? NO_RO : resolveDevicePath(a.ro),
      rw: resolveRwPath(a.rw),
      sectorSize: a['sector-size'],
      attach: false,
      ...mapOptions(a),
      ...hydrationOptions(a),
      listen,
      log: stderrLog(name, a.verbose),
    },
    d => {
      announce(d.state, d.warnings)
      process.stdout.write(`${d.state.nbd}\n`)
    },
  )
}
