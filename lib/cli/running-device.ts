// Finding a device by NAME for the commands that need it running.
import type { DeviceStatus } from '../daemon/control-protocol.js'
import { cleanupStale, heldMessage, probe, waitingMessage } from '../daemon/stale.js'
import { RowrError } from '../errors.js'
import { warn } from './foreground.js'

export const noSuchDevice = (name: string): RowrError =>
  new RowrError('ENONAME', `no device named ${name}; 'geom-rowr list' shows the devices`)

/** The status of running device NAME, or an error that says why there is none. */
export const runningStatus = async (name: string): Promise<DeviceStatus> => {
  const p = await probe(name)
  if (p.kind === 'stale') await cleanupStale(name, p, warn)
  if (p.kind === 'absent' || p.kind === 'stale') throw noSuchDevice(name)
  if (p.kind === 'starting') throw new RowrError('EBUSY', `${name} is still being created; try again in a moment`)
  if (p.kind === 'waiting') throw new RowrError('EDAEMON', waitingMessage(p))
  if (p.kind === 'held') throw new RowrError('EDAEMON', heldMessage(p))
  if (p.kind === 'unresponsive') {
    throw new RowrError(
      'EDAEMON',
      `the daemon of ${name} (pid ${p.state.pid}) does not answer; geom-rowr destroy -f ${name} kills it and cleans up`,
    )
  }
  return p.status
}
