// Transmission-phase requests: the 28-byte header parsed once into a typed
// value. The engine never sees raw protocol bytes.
import { REQUEST_MAGIC } from './constants.js'
import type { Cookie } from './replies.js'

export interface NbdRequest {
  readonly flags: number
  readonly type: number
  readonly cookie: Cookie
  /**
   * Byte offset. Offsets beyond 2^53 cannot be represented exactly and are
   * outside any export this server can have, so they become Infinity.
   */
  readonly offset: number
  readonly length: number
}

class BadRequestMagic extends Error {
  readonly code = 'EBADMAGIC'
  constructor(magic: number) {
    super(`bad request magic 0x${magic.toString(16).padStart(8, '0')}`)
  }
}

/** Parses a request header; `b` holds exactly REQUEST_HEADER_LENGTH bytes. */
export const parseRequest = (b: Buffer): NbdRequest => {
  const magic = b.readUInt32BE(0)
  if (magic !== REQUEST_MAGIC) throw new BadRequestMagic(magic)
  const offsetHi = b.readUInt32BE(16)
  const offsetLo = b.readUInt32BE(20)
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: { hi: b.readUInt32BE(8), lo: b.readUInt32BE(12) },
    offset: offsetHi < 0x200000 ? offsetHi * 0x100000000 + offsetLo : Infinity,
    length: b.readUInt32BE(24),
  }
}
