// Kernel block devices over the engine, and taking them away again. On
// Linux the NBD export is attached in one of two ways: the kernel's nbd
// module where it is loaded (configured over netlink), otherwise nbdfuse shows the
// export as a file and a loop device sits on that file. On FreeBSD the
// device is a GEOM Gate provider (lib/ggate), which the daemon starts itself;
// here it is only taken away after a daemon died.
import fs from 'node:fs'
import { RowrError } from '../errors.js'
import type { AttachOptions } from './attach-options.js'
import { attachNbdModule, detachNbdModule, type NbdModuleAttachment } from './nbd-module.js'
import { attachLoopOverFuse, detachLoopOverFuse, type LoopOverFuseAttachment } from './loop-over-fuse.js'
import { destroyProvider, type GGateAttachment } from '../ggate/provider.js'

export type Attachment = LoopOverFuseAttachment | NbdModuleAttachment | GGateAttachment

/** Where the kernel's nbd driver is loaded (cannot be tested on machines without it). */
export const nbdModuleLoaded = (): boolean => fs.existsSync('/sys/module/nbd')

/**
 * Largest logical sector size a Linux block device takes, loop and nbd alike:
 * the kernel's page size (blk_validate_block_size), 4096 on x86 and most arm64.
 */
const LINUX_MAX_SECTOR_SIZE = 4096

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

export const checkAttachable = (sectorSize: number): void => {
  if (sectorSize > LINUX_MAX_SECTOR_SIZE) {
    throw new RowrError(
      'EATTACH',
      `a ${sectorSize}-byte sector size is larger than the ${LINUX_MAX_SECTOR_SIZE} bytes a Linux block device allows; ` +
        `use --sector-size ${LINUX_MAX_SECTOR_SIZE} or smaller, or --no-attach to serve NBD only`,
    )
  }
}
