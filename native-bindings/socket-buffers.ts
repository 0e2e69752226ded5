// Larger kernel buffers for a Unix-domain socket. Node.js has no API for
// SO_SNDBUF/SO_RCVBUF, so this sets them with setsockopt(2) on the socket's
// descriptor, read from Node's internal handle (absent: nothing is done).
import type net from 'node:net'
import { endianness } from 'node:os'
import { libc } from './libc.js'

/** <asm-generic/socket.h> on Linux, <sys/socket.h> on FreeBSD. */
const OPTIONS =
  process.platform === 'freebsd'
    ? { SOL_SOCKET: 0xffff, SO_SNDBUF: 0x1001, SO_RCVBUF: 0x1002 }
    : { SOL_SOCKET: 1, SO_SNDBUF: 7, SO_RCVBUF: 8 }

const socketFd = (socket: net.Socket): number | undefined => {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd
  return typeof fd === 'number' && fd >= 0 ? fd : undefined
}

/**
 * Asks for `bytes` of send and receive buffer; the kernel caps it at
 * net.core.wmem_max / rmem_max. Returns whether both were set.
 */
export const enlargeSocketBuffers = (socket: net.Socket, bytes: number): boolean => {
  const fd = socketFd(socket)
  if (fd === undefined) return false
  const value = Buffer.alloc(4)
  if (endianness() === 'LE') value.writeInt32LE(bytes)
  else value.writeInt32BE(bytes)
  const c = libc()
  return (
    c.setsockopt(fd, OPTIONS.SOL_SOCKET, OPTIONS.SO_SNDBUF, value) === 0 &&
    c.setsockopt(fd, OPTIONS.SOL_SOCKET, OPTIONS.SO_RCVBUF, value) === 0
  )
}
