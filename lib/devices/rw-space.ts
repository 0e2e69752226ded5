// RW's space: a sparse file RW takes space from its file system only as the
// device is written, so a file system with less free space than the device
// can still need fails writes with ENOSPC long after create succeeded.
import fs from 'node:fs'
import { human } from '../units.js'
import type { BlockDevice } from './block-device.js'

/** st_blocks counts 512-byte units (Linux and FreeBSD alike). */
const BLOCK_UNIT = 512

/** Bytes RW really holds: a file's allocated blocks; a disk, all of it. */
export const allocatedBytes = (rw: BlockDevice): number => (rw.identity.kind === 'file' ? fs.fstatSync(rw.fd).blocks * BLOCK_UNIT : rw.size)

/** Free bytes this process may write on the file system of `file` (root may use the reserve). */
const freeBytes = (file: string): number => {
  const s = fs.statfsSync(file)
  return (process.getuid?.() === 0 ? s.bfree : s.bavail) * s.bsize
}

/**
 * A warning when RW is a file whose file system cannot hold the rest of
 * the device (`mediaSize` bytes, less what RW has allocated already), or null.
 */
export const rwSpaceWarning = (rw: BlockDevice, mediaSize: number): string | null => {
  if (rw.identity.kind !== 'file') return null
  const allocated = allocatedBytes(rw)
  const needed = mediaSize - allocated
  if (needed <= 0) return null
  const free = freeBytes(rw.path)
  if (free >= needed) return null
  return (
    `${rw.path} is a sparse file with ${allocated} bytes allocated: the device can need ${needed} bytes more ` +
    `(${human(needed)}), but its file system has ${free} bytes (${human(free)}) free; writes past that fail with ENOSPC ` +
    `and geom-rowr status shows the device degraded. Free at least ${needed - free} bytes (${human(needed - free)}) ` +
    `on that file system before the device fills it`
  )
}
