// The client side of the NBD handshake, done in user space: the kernel's nbd
// driver only speaks transmission, so a socket is connected to the daemon's
// own NBD server, negotiated here (fixed newstyle, NBD_OPT_EXPORT_NAME), and
// then its descriptor is handed to the kernel.
import net from 'node:net'
import { dupBlocking } from '../../native-bindings/netlink.js'
import { ClientFlag, EXPORT_NAME_ZEROES, GREETING_LENGTH, HandshakeFlag, IHAVEOPT, NBDMAGIC, Option } from '../nbd/constants.js'

const HANDSHAKE_MS = 15_000

interface NegotiatedSocket {
  /** A blocking descriptor of the socket, the caller's to hand over and close. */
  readonly fd: number
  readonly size: number
  /** The export's transmission flags. */
  readonly flags: number
}

/** Bytes arriving on `socket`, taken in exact amounts. */
const reader = (socket: net.Socket) => {
  let buffered = Buffer.alloc(0)
  let wake: (() => void) | undefined
  let ended: Error | undefined
  socket.on('data', (c: Buffer) => {
    buffered = Buffer.concat([buffered, c])
    wake?.()
  })
  socket.on('close', () => {
    ended ??= new Error('the NBD server closed the connection during the handshake')
    wake?.()
  })
  socket.on('error', e => {
    ended = e
    wake?.()
  })
  return async (n: number): Promise<Buffer> => {
    while (buffered.length < n) {
      if (ended) throw ended
      await new Promise<void>(resolve => (wake = resolve))
      wake = undefined
    }
    const out = buffered.subarray(0, n)
    buffered = buffered.subarray(n)
    return out
  }
}

const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(v)
  return b
}

/** Connects to the NBD server at `path`, selects export `name` and returns the socket's descriptor. */
export const negotiateForKernel = async (path: string, name: string): Promise<NegotiatedSocket> => {
  const socket = net.connect(path)
  const timer = setTimeout(() => socket.destroy(new Error(`no NBD handshake with ${path} within ${HANDSHAKE_MS / 1000} s`)), HANDSHAKE_MS)
  try {
    const read = reader(socket)
    const greeting = await read(GREETING_LENGTH)
    if (greeting.readBigUInt64BE(0) !== NBDMAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) {
      throw new Error(`${path} is not a newstyle NBD server`)
    }
    const serverFlags = greeting.readUInt16BE(16)
    if (!(serverFlags & HandshakeFlag.FIXED_NEWSTYLE)) throw new Error(`${path} does not speak fixed newstyle NBD`)
    const noZeroes = (serverFlags & HandshakeFlag.NO_ZEROES) !== 0
    const option = Buffer.alloc(16)
    option.writeBigUInt64BE(IHAVEOPT, 0)
    option.writeUInt32BE(Option.EXPORT_NAME, 8)
    option.writeUInt32BE(Buffer.byteLength(name), 12)
    socket.write(Buffer.concat([u32(ClientFlag.FIXED_NEWSTYLE | (noZeroes ? ClientFlag.NO_ZEROES : 0)), option, Buffer.from(name)]))
    const reply = await read(10 + (noZeroes ? 0 : EXPORT_NAME_ZEROES))
    // Nothing more arrives until the kernel sends a request: no byte of
    // transmission can be left in Node's buffers when the socket changes hands.
    socket.pause()
    const handle = (socket as unknown as { _handle?: { fd?: unknown } })._handle
    if (typeof handle?.fd !== 'number' || handle.fd < 0) throw new Error('the socket to the NBD server has no descriptor')
    return { fd: dupBlocking(handle.fd), size: Number(reply.readBigUInt64BE(0)), flags: reply.readUInt16BE(8) }
  } finally {
    clearTimeout(timer)
    // Only Node's descriptor closes: the duplicate keeps the connection open.
    socket.destroy()
  }
}
