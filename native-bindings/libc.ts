// The one place that loads the C library through koffi. Nothing koffi-typed
// leaves this module: callers get plain functions over numbers and Buffers.
// The library may be the ggctl simulator's (platform.ts), which exports the
// same entry points.
import { createRequire } from 'node:module'
import { constants } from 'node:os'
import { libcPath, libcReplaced, platform } from './platform.js'

const require = createRequire(import.meta.url)

/** The subset of koffi's API this module uses. */
interface KoffiLibrary {
  func(signature: string): KoffiFunction
}
interface KoffiFunction {
  (...args: unknown[]): number
  async(...args: unknown[]): void
}
interface Koffi {
  load(path: string): KoffiLibrary
  errno(): number
  address(buffer: Buffer): bigint
}

/** O_RDWR agrees; O_CLOEXEC is the running kernel's own (FreeBSD's or Linux's). */
export const O_RDWR = 0x2
export const O_CLOEXEC = process.platform === 'freebsd' ? 0x100000 : 0x80000

interface Libc {
  /** open(2); returns -1 and sets errno on failure. */
  open(path: string, flags: number): number
  /** close(2). */
  close(fd: number): number
  /** setsockopt(2) with an int-sized option value. */
  setsockopt(fd: number, level: number, name: number, value: Buffer): number
  /** ioctl(2) with a pointer argument; returns -1 and sets errno on failure. */
  ioctl(fd: number, request: number, arg: Buffer): number
  /**
   * ioctl(2) on the thread pool, for a request that may be repeated
   * (a flush, a delete): resolves to 0 or the errno.
   */
  ioctlRetryable(fd: number, request: number, arg: Buffer): Promise<number>
  /**
   * lseek(2) with SEEK_DATA ('data') or SEEK_HOLE ('hole'): the next offset
   * at or after `offset` in data or in a hole, or -1 with errno set (ENXIO:
   * no data past `offset`).
   */
  seek(fd: number, offset: number, to: 'data' | 'hole'): number
  /** fallocate(2) on the thread pool; resolves to its return value. */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<number>
  /** Whether preadNowait is available (Linux's own libc only). */
  readonly canReadNowait: boolean
  /**
   * preadv2(RWF_NOWAIT): reads only what is already in the page cache,
   * never blocking. Returns the bytes read, or -1 (see errno(): EAGAIN when
   * the data is not cached). Only where canReadNowait.
   */
  preadNowait(fd: number, buf: Buffer, offset: number, length: number, position: number): number
  /**
   * flock(2): an advisory lock on the open file description; returns -1
   * and sets errno on failure (EWOULDBLOCK with LOCK_NB while another holds
   * a conflicting one).
   */
  flock(fd: number, operation: number): number
  /**
   * Extended attributes of an open file (Linux's fgetxattr family, FreeBSD's
   * extattr_*_fd): `space` 'system' is root's namespace (Linux's trusted.*,
   * FreeBSD's system), 'user' anyone's. Each returns -1 and sets errno on
   * failure (ATTRIBUTE_ABSENT: no such attribute); get returns the value's
   * length.
   */
  getAttribute(fd: number, space: AttributeSpace, name: string, value: Buffer): number
  setAttribute(fd: number, space: AttributeSpace, name: string, value: Buffer): number
  removeAttribute(fd: number, space: AttributeSpace, name: string): number
  /** The address of a Buffer's bytes, for pointers inside structs. */
  address(buf: Buffer): bigint
  /** The errno left by the last synchronous call on this thread. */
  errno(): number
  /**
   * FreeBSD's sysctlbyname(3) for a string node (kern.geom.confxml): its
   * value, or the errno it failed with.
   */
  sysctlString(name: string): string | { readonly errno: number }
  /**
   * Blocks every signal on the calling thread (pthread_sigmask), so that
   * the process's signals go to another thread; for threads that sleep in
   * the kernel, where a signal would end the sleep.
   */
  blockSignals(): void
  /**
   * _exit(2): ends the process now, without Node's exit sequence, which
   * waits for every worker thread, even one that sleeps in an ioctl.
   */
  exitNow(code: number): never
}

export type AttributeSpace = 'system' | 'user'

/** The errno of a missing extended attribute: Linux's ENODATA, FreeBSD's ENOATTR. */
export const ATTRIBUTE_ABSENT = process.platform === 'freebsd' ? 87 : 61
/** <sys/extattr.h> */
const EXTATTR_NAMESPACE = { user: 1, system: 2 } as const
/** Linux's names carry their namespace as a prefix. */
const XATTR_PREFIX = { user: 'user.', system: 'trusted.' } as const

/** ENOMEM: the same number on Linux and FreeBSD. */
const ENOMEM = 12

/** lseek(2)'s SEEK_DATA and SEEK_HOLE: the same numbers on Linux and FreeBSD. */
const SEEK = { data: 3, hole: 4 } as const

/** flock(2)'s operations: the same numbers on Linux and FreeBSD. */
export const LOCK_SH = 1
export const LOCK_EX = 2
export const LOCK_NB = 4

/** <linux/fs.h>: return EAGAIN instead of blocking. */
const RWF_NOWAIT = 0x08

/**
 * pthread_sigmask's SIG_SETMASK and the size of sigset_t, the running
 * kernel's (FreeBSD: sys/signal.h, 4 words; glibc: 1024 bits).
 */
const SIG_SETMASK = process.platform === 'freebsd' ? 3 : 2
const SIGSET_BYTES = process.platform === 'freebsd' ? 16 : 128

let loaded: Libc | undefined

export const libc = (): Libc => {
  if (loaded) return loaded
  const koffi = require('koffi') as Koffi
  const lib = koffi.load(libcPath())
  // Declared with a pointer third argument rather than as variadic: koffi
  // cannot make async calls to variadic functions, and on amd64/arm64 the
  // calling conventions agree for this signature.
  const ioctl = lib.func('int ioctl(int fd, unsigned long request, void *arg)')
  // open is variadic too; its mode argument is read only with O_CREAT.
  const open = lib.func('int open(const char *path, int flags, int mode)')
  const close = lib.func('int close(int fd)')
  // Bound on first use: glibc has no sysctlbyname.
  let sysctlbyname: KoffiFunction | undefined
  let pthreadSigmask: KoffiFunction | undefined
  let exit: KoffiFunction | undefined
  let lseek: KoffiFunction | undefined
  const setsockopt = lib.func('int setsockopt(int fd, int level, int name, void *value, uint32_t length)')
  const flock = lib.func('int flock(int fd, int operation)')
  // By the running kernel, not platform(): the ggctl simulator of the FreeBSD
  // issue runs on Linux's libc.
  const attributes =
    process.platform === 'freebsd'
      ? {
          get: lib.func('intptr_t extattr_get_fd(int fd, int space, const char *name, void *value, size_t length)'),
          set: lib.func('intptr_t extattr_set_fd(int fd, int space, const char *name, void *value, size_t length)'),
          remove: lib.func('int extattr_delete_fd(int fd, int space, const char *name)'),
        }
      : {
          get: lib.func('intptr_t fgetxattr(int fd, const char *name, void *value, size_t length)'),
          set: lib.func('int fsetxattr(int fd, const char *name, void *value, size_t length, int flags)'),
          remove: lib.func('int fremovexattr(int fd, const char *name)'),
        }
  const attributeArgs = (space: AttributeSpace, name: string): unknown[] =>
    process.platform === 'freebsd' ? [EXTATTR_NAMESPACE[space], name] : [XATTR_PREFIX[space] + name]
  let fallocate: KoffiFunction | undefined
  let preadv2: KoffiFunction | undefined
  if (platform() === 'linux' && !libcReplaced()) {
    fallocate = lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)')
    // The iovec is passed as raw bytes: building a koffi struct per call
    // costs more than the read it describes.
    preadv2 = lib.func('intptr_t preadv2(int fd, void *iov, int iovcnt, int64_t offset, int flags)')
  }
  // One iovec, reused: JavaScript calls this from one thread at a time. It
  // is filled through 32-bit halves of the address as a Number (user-space
  // addresses fit in 53 bits): BigInt arithmetic and writeBigUInt64 cost a
  // noticeable share of a call that cached reads make every time.
  const iovec = Buffer.alloc(16)
  const iovecWords = new Uint32Array(iovec.buffer, iovec.byteOffset, 4)
  const [low, high] = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? [0, 1] : [1, 0]
  loaded = {
    open: (path, flags) => open(path, flags, 0),
    close: fd => close(fd),
    setsockopt: (fd, level, name, value) => setsockopt(fd, level, name, value, value.length),
    ioctl: (fd, request, arg) => ioctl(fd, request, arg),
    ioctlRetryable: (fd, request, arg) =>
      new Promise<number>((resolve, reject) => {
        ioctl.async(fd, request, arg, (err: Error | null, res: number) => {
          if (err) return reject(err)
          if (res === 0) return resolve(0)
          // errno does not survive koffi's async call (seen here: 0 after a
          // failed one), so a failure is asked again on this thread.
          resolve(ioctl(fd, request, arg) === 0 ? 0 : koffi.errno())
        })
      }),
    fallocate: (fd, mode, offset, length) =>
      new Promise<number>((resolve, reject) => {
        if (!fallocate) {
          resolve(-1)
          return
        }
        fallocate.async(fd, mode, offset, length, (err: Error | null, res: number) => (err ? reject(err) : resolve(res)))
      }),
    seek: (fd, offset, to) => {
      lseek ??= lib.func('int64_t lseek(int fd, int64_t offset, int whence)')
      return Number(lseek(fd, offset, SEEK[to]))
    },
    canReadNowait: preadv2 !== undefined,
    preadNowait: (fd, buf, offset, length, position) => {
      if (!preadv2) throw new Error('preadv2 is not available here')
      const base = Number(koffi.address(buf)) + offset
      iovecWords[low] = base >>> 0
      iovecWords[high] = base / 2 ** 32
      // iov_len: a single read is far below 4 GiB, so its high half stays 0.
      iovecWords[2 + low] = length
      return preadv2(fd, iovec, 1, position, RWF_NOWAIT)
    },
    flock: (fd, operation) => flock(fd, operation),
    getAttribute: (fd, space, name, value) => attributes.get(fd, ...attributeArgs(space, name), value, value.length),
    // Linux's flags 0: create or replace.
    setAttribute: (fd, space, name, value) =>
      attributes.set(fd, ...attributeArgs(space, name), value, value.length, ...(process.platform === 'freebsd' ? [] : [0])),
    removeAttribute: (fd, space, name) => attributes.remove(fd, ...attributeArgs(space, name)),
    address: buf => koffi.address(buf),
    errno: () => koffi.errno(),
    sysctlString: name => {
      sysctlbyname ??= lib.func('int sysctlbyname(const char *name, void *oldp, _Inout_ size_t *oldlenp, void *newp, size_t newlen)')
      // The value may grow between asking its size and reading it.
      for (let attempt = 0; ; attempt++) {
        const size = [0]
        if (sysctlbyname(name, null, size, null, 0) !== 0) return { errno: koffi.errno() }
        const value = Buffer.alloc(size[0]! + 4096)
        const length = [value.length]
        if (sysctlbyname(name, value, length, null, 0) === 0) {
          const text = value.subarray(0, length[0])
          return text.subarray(0, text.at(-1) === 0 ? -1 : undefined).toString()
        }
        const errno = koffi.errno()
        if (errno !== ENOMEM || attempt === 3) return { errno }
      }
    },
    blockSignals: () => {
      pthreadSigmask ??= lib.func('int pthread_sigmask(int how, void *set, void *oldset)')
      // Signal n is bit n - 1 of little-endian words. A fault's own signal
      // stays open: blocked, the fault would end the process instead.
      const set = Buffer.alloc(SIGSET_BYTES, 0xff)
      for (const fault of ['SIGSEGV', 'SIGBUS', 'SIGFPE', 'SIGILL', 'SIGTRAP'] as const) {
        const n = constants.signals[fault] - 1
        set[n >> 3]! &= ~(1 << (n & 7))
      }
      pthreadSigmask(SIG_SETMASK, set, null)
    },
    exitNow: code => {
      exit ??= lib.func('void _exit(int status)')
      exit(code)
      throw new Error('_exit returned')
    },
  }
  return loaded
}
