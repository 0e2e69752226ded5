// An open file or disk device: its size, its sector size and whole-range I/O.
import fs from 'node:fs'
import { constants } from 'node:os'
import { DiskIoctlError, diskDelete, diskFlush, diskGeometry } from '../../native-bindings/disk-ioctl.js'
import { libc } from '../../native-bindings/libc.js'
import { platform } from '../../native-bindings/platform.js'
import { RowrError, errnoCode } from '../errors.js'
import { InlineWrites } from './inline-writes.js'

/** Counts a device keeps about itself, for status. */
export interface DeviceCounters {
  /** Writes run inline on the calling thread, and those of them that stalled it (see inline-writes.ts). */
  readonly inlineWrites: number
  readonly writeStalls: number
}

/** What the engine needs from a device; tests substitute fakes. */
export interface BlockIo {
  readonly path: string
  /** Bytes. */
  readonly size: number
  read(buf: Buffer, offset: number, length: number, position: number): Promise<void>
  /**
   * Reads the range now, without blocking, if it can (all of it in the page
   * cache); false when it cannot, or the platform cannot tell, and `read`
   * must be used. It may have filled part of the range by then.
   */
  readNow(buf: Buffer, offset: number, length: number, position: number): boolean
  write(buf: Buffer, offset: number, length: number, position: number): Promise<void>
  /** Makes every completed write durable. */
  datasync(): Promise<void>
  /**
   * Makes [position, position+length) read back as zeros: a punched hole
   * where the device allows it, or written zeros (always with `allocate`).
   */
  zero(position: number, length: number, options?: { readonly allocate?: boolean }): Promise<void>
  /**
   * Gives the space of [position, position+length) back without writing
   * (a punched hole, a BIO_DELETE); false where it cannot. What the range
   * reads afterwards is unspecified: zero() says when it is zeros.
   */
  release(position: number, length: number): Promise<boolean>
  /**
   * Whether `position` lies in data or in a hole (SEEK_DATA / SEEK_HOLE of
   * a sparse file), and where that extent ends; absent where the device
   * cannot tell (then everything is data).
   */
  extentAt?(position: number): Extent
  counters(): DeviceCounters
}

export interface Extent {
  readonly data: boolean
  /** The first byte past the extent (at most the device's size). */
  readonly end: number
}

type DeviceKind = 'file' | 'disk'

export interface DeviceIdentity {
  readonly kind: DeviceKind
  readonly dev: number
  readonly ino: number
  readonly rdev: number
}

const EAGAIN = constants.errno.EAGAIN
const EOPNOTSUPP = constants.errno.EOPNOTSUPP
const ENXIO = constants.errno.ENXIO

/** md(4): a BIO_DELETE frees whole pages and zeroes partial ones (md.c), so the range reads as zeros. */
const MD_DEVICE = /^\/dev\/md\d+$/

// fallocate(2) modes from <linux/falloc.h>.
const FALLOC_FL_KEEP_SIZE = 0x01
const FALLOC_FL_PUNCH_HOLE = 0x02

/** Writes of zeros, where holes cannot be punched, go in pieces this large. */
const ZERO_CHUNK = 1 << 20
let zeroChunk: Buffer | undefined
const zeros = (): Buffer => (zeroChunk ??= Buffer.alloc(ZERO_CHUNK))

const fsRead = (fd: number, buf: Buffer, offset: number, length: number, position: number) =>
  new Promise<number>((resolve, reject) => fs.read(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))))

const fsWrite = (fd: number, buf: Buffer, offset: number, length: number, position: number) =>
  new Promise<number>((resolve, reject) => fs.write(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))))

/** The largest single pwrite (see BlockDevice.write). */
const WRITE_PIECE = 256 * 1024

class ShortIoError extends Error {
  readonly code = 'EIO'
  constructor(op: 'read' | 'write', path: string, position: number) {
    super(`short ${op} at byte ${position} of ${path}: the device ended early`)
  }
}

export class BlockDevice implements BlockIo {
  readonly path: string
  readonly fd: number
  readonly size: number
  /** The device's logical sector size (512 for regular files). */
  readonly sectorSize: number
  readonly identity: DeviceIdentity
  readonly writable: boolean
  #punchHoles: boolean
  /**
   * A FreeBSD disk: fdatasync of its vnode sends no BIO_FLUSH, and holes are
   * made with BIO_DELETE, both by ioctl.
   */
  readonly #freebsdDisk: boolean
  /** Cleared once the disk says it has no write cache to flush (EOPNOTSUPP). */
  #diskCache: boolean
  /** Cleared once the kernel says non-blocking reads are not supported here. */
  #canReadNow = libc().canReadNowait
  /**
   * Small writes run on the calling thread where they land in a page cache
   * (see inline-writes.ts): regular files, and Linux's buffered disks, but
   * not FreeBSD's disks, which have no cache in front of them.
   */
  readonly inlineWrites: InlineWrites | undefined
  /**
   * Hole punches running: they hold the file's lock for as long as a large
   * range takes, and an inline write would wait for it on the event loop.
   */
  #releasing = 0
  #closed = false

  private constructor(path: string, fd: number, size: number, sectorSize: number, identity: DeviceIdentity, writable: boolean) {
    this.path = path
    this.fd = fd
    this.size = size
    this.sectorSize = sectorSize
    this.identity = identity
    this.writable = writable
    this.#punchHoles = writable
    this.#freebsdDisk = identity.kind === 'disk' && platform() === 'freebsd'
    this.#diskCache = writable && this.#freebsdDisk
    this.inlineWrites = writable && (identity.kind === 'file' || platform() === 'linux') ? new InlineWrites() : undefined
  }

  /**
   * Opens PATH read-only, or read-write when `writable`. The read-only open
   * is the guarantee that RO is never written. `exclusive` (Linux disks):
   * O_EXCL, which fails EBUSY while the disk is mounted or held.
   */
  static open(path: string, { writable, exclusive = false }: { writable: boolean; exclusive?: boolean }): BlockDevice {
    let fd: number
    try {
      fd = fs.openSync(path, (writable ? fs.constants.O_RDWR : fs.constants.O_RDONLY) | (exclusive ? fs.constants.O_EXCL : 0))
    } catch (e) {
      throw openError(path, writable, e)
    }
    try {
      const st = fs.fstatSync(fd)
      const identity = { dev: st.dev, ino: st.ino, rdev: st.rdev }
      if (st.isFile()) {
        return new BlockDevice(path, fd, st.size, 512, { kind: 'file', ...identity }, writable)
      }
      if (st.isBlockDevice() || st.isCharacterDevice()) {
        const g = diskGeometry(fd, path)
        return new BlockDevice(path, fd, g.mediaSize, g.sectorSize, { kind: 'disk', ...identity }, writable)
      }
      throw new RowrError('ENOTDEV', `${path} is neither a regular file nor a disk device; give an image file or a block device`)
    } catch (e) {
      fs.closeSync(fd)
      throw e
    }
  }

  read(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    return this.#whole('read', fsRead, buf, offset, length, position)
  }

  readNow(buf: Buffer, offset: number, length: number, position: number): boolean {
    if (!this.#canReadNow) return false
    const c = libc()
    while (length > 0) {
      const n = c.preadNowait(this.fd, buf, offset, length, position)
      if (n <= 0) {
        // EAGAIN: not cached. Anything else: this file or platform cannot
        // do it, so stop trying; the thread pool serves every read.
        if (n < 0 && c.errno() !== EAGAIN) this.#canReadNow = false
        return false
      }
      offset += n
      length -= n
      position += n
    }
    return true
  }

  /**
   * Small writes run inline while the device answers quickly (see
   * inline-writes.ts). Large writes go as concurrent pieces of at most
   * WRITE_PIECE bytes: ext4 allocates a file's unwritten range much more
   * slowly for one large pwrite than for several smaller ones side by side
   * (measured: bench/results/design-figures.md).
   */
  write(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    if (this.#releasing === 0 && this.inlineWrites?.allows(length)) {
      try {
        this.inlineWrites.run(() => this.#writeNow(buf, offset, length, position))
        return Promise.resolve()
      } catch (e) {
        return Promise.reject(e)
      }
    }
    if (length <= WRITE_PIECE) return this.#whole('write', fsWrite, buf, offset, length, position)
    const pieces: Promise<void>[] = []
    for (let at = 0; at < length; at += WRITE_PIECE) {
      pieces.push(this.#whole('write', fsWrite, buf, offset + at, Math.min(WRITE_PIECE, length - at), position + at))
    }
    return Promise.all(pieces).then(() => undefined)
  }

  #writeNow(buf: Buffer, offset: number, length: number, position: number): void {
    while (length > 0) {
      const n = fs.writeSync(this.fd, buf, offset, length, position)
      if (n === 0) throw new ShortIoError('write', this.path, position)
      offset += n
      length -= n
      position += n
    }
  }

  /** Repeats a partial read or write until the whole range is done. */
  async #whole(op: 'read' | 'write', io: typeof fsRead, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    while (length > 0) {
      const n = await io(this.fd, buf, offset, length, position)
      if (n === 0) throw new ShortIoError(op, this.path, position)
      offset += n
      length -= n
      position += n
    }
  }

  async datasync(): Promise<void> {
    await new Promise<void>((resolve, reject) => fs.fdatasync(this.fd, err => (err ? reject(err) : resolve())))
    if (!this.#diskCache) return
    const errno = await diskFlush(this.fd)
    if (errno === EOPNOTSUPP) this.#diskCache = false
    else if (errno !== 0) throw new DiskIoctlError('DIOCGFLUSH', this.path, errno)
  }

  /**
   * Punches a hole where the file system or disk can: Linux fallocate, or a
   * BIO_DELETE on a FreeBSD disk (on a swap-backed md the only way to give
   * its memory back).
   */
  async release(position: number, length: number): Promise<boolean> {
    if (!this.#punchHoles) return false
    this.#releasing++
    try {
      if (this.#freebsdDisk) {
        const errno = await diskDelete(this.fd, position, length)
        if (errno === 0) return true
        if (errno === EOPNOTSUPP) this.#punchHoles = false
        return false
      }
      const rc = await libc().fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, position, length)
      if (rc === 0) return true
      // Unsupported here (or a platform without fallocate): stop trying.
      this.#punchHoles = false
      return false
    } finally {
      this.#releasing--
    }
  }

  /**
   * Releases the range where that guarantees zeros on read (a punched hole;
   * an md's BIO_DELETE; not a disk's TRIM), else writes zeros; always writes
   * them with `allocate`.
   */
  async zero(position: number, length: number, { allocate = false } = {}): Promise<void> {
    const releaseZeroes = !allocate && (!this.#freebsdDisk || MD_DEVICE.test(this.path))
    if (releaseZeroes && (await this.release(position, length))) return
    const z = zeros()
    while (length > 0) {
      const n = Math.min(length, z.length)
      await this.write(z, 0, n, position)
      position += n
      length -= n
    }
  }

  /** A regular file's data and holes (lseek SEEK_DATA / SEEK_HOLE); a disk is all data. */
  extentAt(position: number): Extent {
    if (this.identity.kind !== 'file') return { data: true, end: this.size }
    const data = libc().seek(this.fd, position, 'data')
    if (data < 0) {
      // ENXIO: no data from here to the end; anything else: take it as data.
      return libc().errno() === ENXIO ? { data: false, end: this.size } : { data: true, end: this.size }
    }
    if (data > position) return { data: false, end: Math.min(data, this.size) }
    const hole = libc().seek(this.fd, position, 'hole')
    return { data: true, end: hole > position ? Math.min(hole, this.size) : this.size }
  }

  counters(): DeviceCounters {
    return { inlineWrites: this.inlineWrites?.inline ?? 0, writeStalls: this.inlineWrites?.stalls ?? 0 }
  }

  close(): void {
    if (this.#closed) return
    this.#closed = true
    fs.closeSync(this.fd)
  }
}

/** Why a device could not be opened, as a refusal that names it and the fix. */
export const openError = (path: string, writable: boolean, e: unknown): Error => {
  const code = errnoCode(e)
  if (writable && code === 'EPERM' && platform() === 'freebsd' && isDeviceNode(path)) {
    // GEOM refuses write access to a provider mounted read-write (g_vfs
    // holds its exclusive count; g_access fails EPERM), whoever asks.
    return new RowrError(
      'EINUSE',
      `${path} cannot be opened for writing (EPERM): it is in use (mounted?) — GEOM refuses to write a provider that is mounted or held exclusively; ` +
        `see where with: mount | grep ${path}; unmount it first (umount MOUNTPOINT), or choose another RW`,
      { cause: e },
    )
  }
  if (code === 'ENOENT') {
    return new RowrError('ENOENT', `${path} does not exist; check the path or create the device first`, {
      cause: e,
    })
  }
  if (writable && (code === 'EACCES' || code === 'EROFS' || code === 'EPERM' || code === 'ETXTBSY')) {
    return new RowrError(
      'ENOTWRITABLE',
      `${path} cannot be opened for writing (${code}): it is read-only to you, on a read-only file system, ` +
        `immutable (lsattr shows it), or a running program's file; check its permissions, attributes and mount`,
      { cause: e },
    )
  }
  return e instanceof Error ? e : new Error(String(e))
}

const isDeviceNode = (path: string): boolean => {
  try {
    const st = fs.statSync(path)
    return st.isCharacterDevice() || st.isBlockDevice()
  } catch {
    return false
  }
}
