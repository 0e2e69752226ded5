// Everything the server sends, serialized. Fixed headers are built here and
// nowhere else.
import {
  GREETING_LENGTH,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  OPTION_REPLY_HEADER_LENGTH,
  OPTION_REPLY_MAGIC,
  OptionReply,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_HEADER_LENGTH,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_HEADER_LENGTH,
  STRUCTURED_REPLY_MAGIC,
  EXPORT_NAME_ZEROES,
  type NbdErrnoValue,
} from './constants.js'

/** A request's cookie, kept as two 32-bit halves to echo it without BigInt. */
export interface Cookie {
  readonly hi: number
  readonly lo: number
}

export const greeting = (): Buffer => {
  const b = Buffer.allocUnsafe(GREETING_LENGTH)
  b.writeBigUInt64BE(NBDMAGIC, 0)
  b.writeBigUInt64BE(IHAVEOPT, 8)
  b.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16)
  return b
}

export const optionReply = (option: number, type: number, data?: Buffer): Buffer => {
  const length = data?.length ?? 0
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_LENGTH + length)
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0)
  b.writeUInt32BE(option, 8)
  b.writeUInt32BE(type, 12)
  b.writeUInt32BE(length, 16)
  data?.copy(b, OPTION_REPLY_HEADER_LENGTH)
  return b
}

export const optionError = (option: number, type: number, message: string): Buffer =>
  optionReply(option, type, Buffer.from(message, 'utf8'))

/** A 32-bit number followed by a string: the shape of SERVER and META_CONTEXT data. */
const numberAndString = (n: number, text: string): Buffer => {
  const s = Buffer.from(text, 'utf8')
  const data = Buffer.allocUnsafe(4 + s.length)
  data.writeUInt32BE(n, 0)
  s.copy(data, 4)
  return data
}

/** NBD_REP_SERVER: one export's name. */
export const serverReply = (option: number, name: string): Buffer =>
  optionReply(option, OptionReply.SERVER, numberAndString(Buffer.byteLength(name, 'utf8'), name))

export const infoExport = (option: number, size: number, flags: number): Buffer => {
  const data = Buffer.allocUnsafe(12)
  data.writeUInt16BE(Info.EXPORT, 0)
  data.writeBigUInt64BE(BigInt(size), 2)
  data.writeUInt16BE(flags, 10)
  return optionReply(option, OptionReply.INFO, data)
}

export const infoBlockSize = (option: number, minimum: number, preferred: number, maximum: number): Buffer => {
  const data = Buffer.allocUnsafe(14)
  data.writeUInt16BE(Info.BLOCK_SIZE, 0)
  data.writeUInt32BE(minimum, 2)
  data.writeUInt32BE(preferred, 6)
  data.writeUInt32BE(maximum, 10)
  return optionReply(option, OptionReply.INFO, data)
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: a type and a string. */
export const infoString = (option: number, info: number, text: string): Buffer => {
  const s = Buffer.from(text, 'utf8')
  const data = Buffer.allocUnsafe(2 + s.length)
  data.writeUInt16BE(info, 0)
  s.copy(data, 2)
  return optionReply(option, OptionReply.INFO, data)
}

export const metaContextReply = (option: number, id: number, name: string): Buffer =>
  optionReply(option, OptionReply.META_CONTEXT, numberAndString(id, name))

/** The reply to NBD_OPT_EXPORT_NAME: size, flags and maybe 124 zeros. */
export const exportNameReply = (size: number, flags: number, noZeroes: boolean): Buffer => {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_ZEROES))
  b.writeBigUInt64BE(BigInt(size), 0)
  b.writeUInt16BE(flags, 8)
  return b
}

export const simpleReply = (cookie: Cookie, error: number): Buffer => {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_LENGTH)
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0)
  b.writeUInt32BE(error, 4)
  b.writeUInt32BE(cookie.hi, 8)
  b.writeUInt32BE(cookie.lo, 12)
  return b
}

const writeChunkHeader = (b: Buffer, cookie: Cookie, flags: number, type: number, length: number): void => {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0)
  b.writeUInt16BE(flags, 4)
  b.writeUInt16BE(type, 6)
  b.writeUInt32BE(cookie.hi, 8)
  b.writeUInt32BE(cookie.lo, 12)
  b.writeUInt32BE(length, 16)
}

/** The head of a final OFFSET_DATA chunk; `dataLength` bytes follow it. */
export const offsetDataHeader = (cookie: Cookie, offset: number, dataLength: number): Buffer => {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_LENGTH + 8)
  writeChunkHeader(b, cookie, ReplyFlag.DONE, ReplyType.OFFSET_DATA, 8 + dataLength)
  b.writeBigUInt64BE(BigInt(offset), STRUCTURED_REPLY_HEADER_LENGTH)
  return b
}

/** A final chunk with no payload: success for a command with no data. */
export const structuredDone = (cookie: Cookie): Buffer => {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_LENGTH)
  writeChunkHeader(b, cookie, ReplyFlag.DONE, ReplyType.NONE, 0)
  return b
}

export const structuredError = (cookie: Cookie, error: NbdErrnoValue, message: string): Buffer => {
  const m = Buffer.from(message.slice(0, 1024), 'utf8')
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_LENGTH + 6 + m.length)
  writeChunkHeader(b, cookie, ReplyFlag.DONE, ReplyType.ERROR, 6 + m.length)
  b.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_LENGTH)
  b.writeUInt16BE(m.length, STRUCTURED_REPLY_HEADER_LENGTH + 4)
  m.copy(b, STRUCTURED_REPLY_HEADER_LENGTH + 6)
  return b
}

export interface StatusDescriptor {
  readonly length: number
  readonly flags: number
}

export const blockStatusChunk = (cookie: Cookie, contextId: number, descriptors: readonly StatusDescriptor[], done: boolean): Buffer => {
  const length = 4 + 8 * descriptors.length
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_LENGTH + length)
  writeChunkHeader(b, cookie, done ? ReplyFlag.DONE : 0, ReplyType.BLOCK_STATUS, length)
  let at = STRUCTURED_REPLY_HEADER_LENGTH
  b.writeUInt32BE(contextId, at)
  at += 4
  for (const d of descriptors) {
    b.writeUInt32BE(d.length, at)
    b.writeUInt32BE(d.flags, at + 4)
    at += 8
  }
  return b
}
