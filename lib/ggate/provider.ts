// A GEOM Gate provider seen from outside its daemon: opening /dev/ggctl
// with messages a user can act on, who holds a provider open, and taking a
// provider away after its daemon is gone. The daemon's side is front-end.ts.
import { FreeBsdErrno } from '../../native-bindings/ggate-abi.js'
import { providerPath } from '../../native-bindings/platform.js'
import { geomProviders, providerUses } from '../devices/geom-users.js'
import { RowrError } from '../errors.js'
import { GGCTL_PATH, GGateControl, GGateError } from './ggctl.js'

/** A provider as the run state records it. */
export interface GGateAttachment {
  readonly kind: 'ggate'
  readonly device: string
  readonly name: string
}

export const openControl = (): GGateControl => {
  try {
    return GGateControl.open()
  } catch (e) {
    if (e instanceof GGateError && e.errno === FreeBsdErrno.ENOENT) {
      throw new RowrError('EATTACH', `${GGCTL_PATH} does not exist: the geom_gate module is not loaded; load it with kldload geom_gate`)
    }
    if (e instanceof GGateError && e.errno === FreeBsdErrno.EACCES) {
      throw new RowrError('EATTACH', `${GGCTL_PATH} is for root only: run geom-rowr create as root, or use --no-attach for NBD only`)
    }
    throw new RowrError('EATTACH', `cannot open ${GGCTL_PATH}: ${(e as Error).message}`, { cause: e })
  }
}

/** Who has provider NAME open, from kern.geom.confxml: a mount, an open of /dev/NAME, ... */
export const providerOpenBy = (name: string): string[] => {
  const found = geomProviders().get(name)
  return found ? providerUses(found) : []
}

/** DESTROY refused: who holds the provider, and the way out. */
export const providerBusy = (name: string, device: string, fix: string): RowrError => {
  let uses: string[] = []
  try {
    uses = providerOpenBy(name)
  } catch {
    // The refusal stands without the names of its users.
  }
  return new RowrError('EBUSY', `${name} (${device}) is open${uses.length ? ` (${uses.join(', ')})` : ''}: ${fix}`)
}

/**
 * Takes provider NAME away when its daemon is gone (stale cleanup); without
 * force, not while it is open.
 */
export const destroyProvider = (name: string, { force }: { force: boolean }): void => {
  const control = openControl()
  try {
    control.destroy(name, { force })
  } catch (e) {
    if (e instanceof GGateError && e.errno === FreeBsdErrno.EBUSY) {
      // Its daemon is gone: an unmount would wait on I/O nobody serves.
      throw providerBusy(
        name,
        providerPath(name),
        `nothing serves its I/O, which waits; end the wait with geom-rowr destroy -f ${name} (its users get I/O errors)`,
      )
    }
    if (!(e instanceof GGateError && e.errno === FreeBsdErrno.ENXIO)) throw e
  } finally {
    control.close()
  }
}
