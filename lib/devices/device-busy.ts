// Whether a block device is in use by someone: for the device a running
// rowr device attached (revert, commit and destroy refuse while it is open).
import fs from 'node:fs'
import { platform } from '../../native-bindings/platform.js'
import { errnoCode } from '../errors.js'
import { geomProviders, kernelUses, providerName } from './geom-users.js'

/**
 * Whether something holds the block device exclusively: a mounted file
 * system, a swap area, a device-mapper or md table. On Linux an exclusive
 * open fails with EBUSY exactly then; it runs on the thread pool, never on
 * the event loop: the first open of a freshly attached nbd device scans it
 * for partitions, and those reads come back to this process's NBD server.
 * FreeBSD ignores O_EXCL on disks; GEOM's access counts say it instead
 * (geom-users.ts).
 */
export const deviceBusy = async (device: string): Promise<boolean> => {
  if (platform() === 'freebsd') {
    const name = providerName(device)
    const provider = name === undefined ? undefined : geomProviders().get(name)
    return provider !== undefined && kernelUses(provider).length > 0
  }
  try {
    await (await fs.promises.open(device, fs.constants.O_RDONLY | fs.constants.O_EXCL)).close()
    return false
  } catch (e) {
    if (errnoCode(e) === 'EBUSY') return true
    if (errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENXIO') return false
    throw e
  }
}
