// A netlink socket and descriptor duplication, which Node.js has no API for,
// through koffi. Linux only; it loads the C library itself rather than
// through libc.ts, whose library may be the ggctl simulator's (platform.ts),
// which stands in for FreeBSD's GEOM Gate and knows nothing of netlink. Nothing koffi-typed leaves here.
import { createRequire } from 'node:module'
import { endianness } from 'node:os'
import { errnoName } from './errno.js'

const require = createRequire(import.meta.url)

interface KoffiFunction {
  (...args: unknown[]): number
  async(...args: unknown[]): void
}
interface Koffi {
  load(path: string): { func(signature: string): KoffiFunction }
  errno(): number
}

/** <sys/socket.h>, <fcntl.h>, <asm-generic/socket.h> on Linux. */
const AF_NETLINK = 16
const SOCK_RAW = 3
const SOCK_CLOEXEC = 0x80000
const SOL_SOCKET = 1
const SO_RCVTIMEO = 20
const F_DUPFD_CLOEXEC = 1030
const F_GETFL = 3
const F_SETFL = 4
const O_NONBLOCK = 0x800

interface Calls {
  socket: KoffiFunction
  setsockopt: KoffiFunction
  send: KoffiFunction
  recv: KoffiFunction
  fcntl: KoffiFunction
  close: KoffiFunction
  errno: () => number
}

let calls: Calls | undefined
const c = (): Calls => {
  if (calls) return calls
  const koffi = require('koffi') as Koffi
  const lib = koffi.load('libc.so.6')
  calls = {
    socket: lib.func('int socket(int domain, int type, int protocol)'),
    setsockopt: lib.func('int setsockopt(int fd, int level, int name, void *value, uint32_t length)'),
    send: lib.func('intptr_t send(int fd, void *buf, uintptr_t len, int flags)'),
    recv: lib.func('intptr_t recv(int fd, void *buf, uintptr_t len, int flags)'),
    // Variadic in C; its third argument is an int for every command used here.
    fcntl: lib.func('int fcntl(int fd, int cmd, int arg)'),
    close: lib.func('int close(int fd)'),
    errno: () => koffi.errno(),
  }
  return calls
}

class SystemCallError extends Error {
  readonly errno: number
  constructor(call: string, errno: number) {
    super(`${call}: ${errnoName(errno)}`)
    this.errno = errno
  }
}

/** Kernel messages are at most a page plus headers; the kernel truncates to this. */
const RECEIVE_BYTES = 32 * 1024

export interface NetlinkSocket {
  send(message: Buffer): void
  /** One datagram, received on the thread pool (the kernel may take a while to answer). */
  receive(): Promise<Buffer>
  close(): void
}

/** A netlink socket of `protocol` whose receives give up after `timeoutMs`. */
export const openNetlinkSocket = (protocol: number, timeoutMs: number): NetlinkSocket => {
  const k = c()
  const fd = k.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol)
  if (fd < 0) throw new SystemCallError('socket(AF_NETLINK)', k.errno())
  const timeval = Buffer.alloc(16)
  const seconds = BigInt(Math.floor(timeoutMs / 1000))
  const micros = BigInt((timeoutMs % 1000) * 1000)
  if (endianness() === 'LE') {
    timeval.writeBigInt64LE(seconds, 0)
    timeval.writeBigInt64LE(micros, 8)
  } else {
    timeval.writeBigInt64BE(seconds, 0)
    timeval.writeBigInt64BE(micros, 8)
  }
  if (k.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, timeval, timeval.length) !== 0) {
    const errno = k.errno()
    k.close(fd)
    throw new SystemCallError('setsockopt(SO_RCVTIMEO)', errno)
  }
  let open = true
  return {
    send: message => {
      const n = k.send(fd, message, message.length, 0)
      if (n < 0) throw new SystemCallError('send(netlink)', k.errno())
      if (n !== message.length) throw new Error(`send(netlink): ${n} of ${message.length} bytes sent`)
    },
    receive: () =>
      new Promise<Buffer>((resolve, reject) => {
        const buf = Buffer.alloc(RECEIVE_BYTES)
        k.recv.async(fd, buf, buf.length, 0, (err: Error | null, n: number) => {
          if (err) return reject(err)
          // errno does not survive koffi's async call: a failed receive is
          // a timeout (SO_RCVTIMEO) or the socket was closed under it.
          if (n < 0) return reject(new SystemCallError('recv(netlink)', open ? 11 : 9))
          resolve(buf.subarray(0, n))
        })
      }),
    close: () => {
      if (open) k.close(fd)
      open = false
    },
  }
}

/**
 * A second descriptor for `fd`'s socket, in blocking mode: the one handed to
 * the kernel, so that the caller may close its own (Node's) at any time.
 */
export const dupBlocking = (fd: number): number => {
  const k = c()
  const copy = k.fcntl(fd, F_DUPFD_CLOEXEC, 0)
  if (copy < 0) throw new SystemCallError('fcntl(F_DUPFD_CLOEXEC)', k.errno())
  const flags = k.fcntl(copy, F_GETFL, 0)
  if (flags < 0 || k.fcntl(copy, F_SETFL, flags & ~O_NONBLOCK) < 0) {
    const errno = k.errno()
    k.close(copy)
    throw new SystemCallError('fcntl(F_SETFL)', errno)
  }
  return copy
}

export const closeFd = (fd: number): void => {
  c().close(fd)
}
