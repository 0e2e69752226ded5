// Attaching the NBD export as a Linux kernel block device, and taking it
// away again. Two ways: the kernel's nbd module through nbd-client where it
// is loaded, otherwise nbdfuse shows the export as a file and a loop device
// sits on that file.
import fs from 'node:fs'
import { RowrError, errnoCode } from '../errors.js'
import { attachNbdModule, detachNbdModule, type NbdModuleAttachment } from './nbd-module.js'
import { attachLoopOverFuse, detachLoopOverFuse, type LoopOverFuseAttachment } from './loop-over-fuse.js'

export type Attachment = LoopOverFuseAttachment | NbdModuleAttachment

export interface AttachOptions {
  readonly name: string
  readonly nbdSocket: string
  /** An empty directory for the FUSE mount. */
  readonly mountDir: string
  readonly sectorSize: number
  readonly log: (message: string) => void
}

/** Where the kernel's nbd driver is loaded (cannot be tested on machines without it). */
export const nbdModuleLoaded = (): boolean => fs.existsSync('/sys/module/nbd')

/** Largest logical sector size a Linux loop device accepts. */
export const LOOP_MAX_SECTOR_SIZE = 4096

export const attach = (options: AttachOptions): Promise<Attachment> =>
  nbdModuleLoaded() ? attachNbdModule(options) : attachLoopOverFuse(options)

export const detach = (attachment: Attachment, { force }: { force: boolean }): Promise<void> =>
  attachment.kind === 'nbd' ? detachNbdModule(attachment) : detachLoopOverFuse(attachment, { force })

/**
 * Whether something holds the block device exclusively: a mounted file
 * system, a swap area, a device-mapper or md table. An exclusive open fails
 * with EBUSY exactly then.
 */
export const deviceBusy = (device: string): boolean => {
  try {
    fs.closeSync(fs.openSync(device, fs.constants.O_RDONLY | fs.constants.O_EXCL))
    return false
  } catch (e) {
    if (errnoCode(e) === 'EBUSY') return true
    if (errnoCode(e) === 'ENOENT' || errnoCode(e) === 'ENXIO') return false
    throw e
  }
}

export const checkAttachable = (sectorSize: number): void => {
  if (!nbdModuleLoaded() && sectorSize > LOOP_MAX_SECTOR_SIZE) {
    throw new RowrError(
      'EATTACH',
      `a ${sectorSize}-byte sector size is larger than the ${LOOP_MAX_SECTOR_SIZE} bytes a Linux loop device allows; ` +
        `use --sector-size ${LOOP_MAX_SECTOR_SIZE} or smaller, or --no-attach to serve NBD only`,
    )
  }
}
