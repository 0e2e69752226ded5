// Disk sizing ioctls, per platform. Linux numbers from <linux/fs.h>
// (_IOR(0x12, 114, size_t) and _IO(0x12, 104)); FreeBSD numbers from
// <sys/disk.h> as listed in docs/ggate-abi.md (FreeBSD's IOC_OUT is
// 0x40000000, unlike Linux's 0x80000000).
import { libc } from './libc.js'
import { platform, type Platform } from './platform.js'
import { endianness } from 'node:os'
import { errnoName } from './errno.js'

interface DiskIoctls {
  /** Returns the media size in bytes into a 64-bit integer. */
  readonly mediaSize: number
  readonly mediaSizeName: string
  /** Returns the logical sector size into a 32-bit unsigned integer. */
  readonly sectorSize: number
  readonly sectorSizeName: string
}

const DISK_IOCTLS: Record<Platform, DiskIoctls> = {
  linux: {
    mediaSize: 0x80081272,
    mediaSizeName: 'BLKGETSIZE64',
    sectorSize: 0x1268,
    sectorSizeName: 'BLKSSZGET',
  },
  freebsd: {
    mediaSize: 0x40086481,
    mediaSizeName: 'DIOCGMEDIASIZE',
    sectorSize: 0x40046480,
    sectorSizeName: 'DIOCGSECTORSIZE',
  },
}

export class DiskIoctlError extends Error {
  readonly code: string
  readonly syscall = 'ioctl'
  readonly ioctl: string
  readonly path: string
  constructor(ioctl: string, path: string, errno: number) {
    const code = errnoName(errno)
    super(`${ioctl} on ${path} failed: ${code}`)
    this.code = code
    this.ioctl = ioctl
    this.path = path
  }
}

/** Media size and logical sector size of an open disk device. */
export const diskGeometry = (fd: number, path: string): { mediaSize: number; sectorSize: number } => {
  const ioctls = DISK_IOCTLS[platform()]
  const c = libc()
  const size = Buffer.alloc(8)
  if (c.ioctl(fd, ioctls.mediaSize, size) !== 0) {
    throw new DiskIoctlError(ioctls.mediaSizeName, path, c.errno())
  }
  const sector = Buffer.alloc(4)
  if (c.ioctl(fd, ioctls.sectorSize, sector) !== 0) {
    throw new DiskIoctlError(ioctls.sectorSizeName, path, c.errno())
  }
  const le = endianness() === 'LE'
  return {
    mediaSize: Number(le ? size.readBigUInt64LE(0) : size.readBigUInt64BE(0)),
    sectorSize: le ? sector.readUInt32LE(0) : sector.readUInt32BE(0),
  }
}

/**
 * FreeBSD's cache flush and delete pass-through (<sys/disk.h>):
 * DIOCGFLUSH = _IO('d', 135), DIOCGDELETE = _IOW('d', 136, off_t[2]), with
 * FreeBSD's IOC_VOID 0x20000000 and IOC_IN 0x80000000.
 */
const FREEBSD_DIOCGFLUSH = 0x20006487
const FREEBSD_DIOCGDELETE = 0x80106488

/** BIO_FLUSH to the disk under `fd`; resolves to 0 or the errno. */
export const diskFlush = (fd: number): Promise<number> => libc().ioctlRetryable(fd, FREEBSD_DIOCGFLUSH, Buffer.alloc(0))

/** BIO_DELETE of a byte range of the disk under `fd`; resolves to 0 or the errno. */
export const diskDelete = (fd: number, offset: number, length: number): Promise<number> => {
  const range = Buffer.alloc(16)
  range.writeBigInt64LE(BigInt(offset), 0)
  range.writeBigInt64LE(BigInt(length), 8)
  return libc().ioctlRetryable(fd, FREEBSD_DIOCGDELETE, range)
}
