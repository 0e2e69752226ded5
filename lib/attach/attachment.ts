// Kernel block devices over the engine, and taking them away again. On
// Linux the NBD export is attached in one of two ways: the kernel's nbd
// module where it is loaded (configured over netlink), otherwise nbdfuse shows the
// export as a file and a loop device sits on that file. On FreeBSD the
// device is a GEOM Gate provider (lib/ggate), which the daemon starts itself;
// here it is only taken away after a daemon died.
import fs from 'node:fs'
import { platform } from '../../native-bindings/libc.js'
import { geomProviders, kernelUses, providerName } from '../devices/geom-users.js'
import { RowrError, errnoCode } from '../errors.js'
import { attachNbdModule, detachNbdModule, type NbdModuleAttachment } from './nbd-module.js'
import { attachLoopOverFuse, detachLoopOverFuse, type LoopOverFuseAttachment } from './loop-over-fuse.js'
import { destroyProvider, type GGateAttachment } from '../ggate/front-end.js'

export type Attachment = LoopOverFuseAttachment | NbdModuleAttachment | GGateAttachment

export interface AttachOptions {
  readonly name: string
  readonly nbdSocket: string
  /** An empty directory for the FUSE mount. */
  readonly mountDir: string
  readonly sectorSize: number
  /** The device keeps a map: a new daemon can take over from one that died (nbd driver only). */
  readonly persistent: boolean
  readonly log: (message: string) => void
}

/** Where the kernel's nbd driver is loaded (cannot be tested on machines without it). */
export const nbdModuleLoaded = (): boolean => fs.existsSync('/sys/module/nbd')

/**
 * Largest logical sector size a Linux block device takes, loop and nbd alike:
 * the kernel's page size (blk_validate_block_size), 4096 on x86 and most arm64.
 */
export const LINUX_MAX_SECTOR_SIZE = 4096

export const attach = (options: AttachOptions): Promise<LoopOverFuseAttachment | NbdModuleAttachment> =>
  nbdModuleLoaded() ? attachNbdModule(options) : attachLoopOverFuse(options)

export const detach = async (attachment: Attachment, { force }: { force: boolean }): Promise<void> => {
  switch (attachment.kind) {
    case 'nbd':
      return detachNbdModule(attachment)
    case 'loop':
      return detachLoopOverFuse(attachment, { force })
    case 'ggate':
      return destroyProvider(attachment.name, { force })
  }
}

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

export const checkAttachable = (sectorSize: number): void => {
  if (sectorSize > LINUX_MAX_SECTOR_SIZE) {
    throw new RowrError(
      'EATTACH',
      `a ${sectorSize}-byte sector size is larger than the ${LINUX_MAX_SECTOR_SIZE} bytes a Linux block device allows; ` +
        `use --sector-size ${LINUX_MAX_SECTOR_SIZE} or smaller, or --no-attach to serve NBD only`,
    )
  }
}
