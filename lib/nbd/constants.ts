// NBD protocol constants, named as in the NBD project's doc/proto.md.

/** "NBDMAGIC" */
export const NBDMAGIC = 0x4e42444d41474943n
/** "IHAVEOPT": the server's second greeting word and every option's prefix. */
export const IHAVEOPT = 0x49484156454f5054n
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n
export const REQUEST_MAGIC = 0x25609513
export const SIMPLE_REPLY_MAGIC = 0x67446698
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef

export const GREETING_LENGTH = 18
export const CLIENT_FLAGS_LENGTH = 4
/** IHAVEOPT, option, length. */
export const OPTION_HEADER_LENGTH = 16
/** magic, option, reply type, length. */
export const OPTION_REPLY_HEADER_LENGTH = 20
/** magic, flags, type, cookie, offset, length. */
export const REQUEST_HEADER_LENGTH = 28
/** magic, error, cookie. */
export const SIMPLE_REPLY_HEADER_LENGTH = 16
/** magic, flags, type, cookie, length. */
export const STRUCTURED_REPLY_HEADER_LENGTH = 20
/** Padding after NBD_OPT_EXPORT_NAME's reply unless NO_ZEROES was agreed. */
export const EXPORT_NAME_ZEROES = 124
/** Longest string the protocol allows (names, queries, messages). */
export const MAX_STRING = 4096

export const HandshakeFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const

export const ClientFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const

export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const

const ERR = 0x80000000
export const OptionReply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: ERR + 1,
  ERR_POLICY: ERR + 2,
  ERR_INVALID: ERR + 3,
  ERR_PLATFORM: ERR + 4,
  ERR_TLS_REQD: ERR + 5,
  ERR_UNKNOWN: ERR + 6,
  ERR_SHUTDOWN: ERR + 7,
  ERR_BLOCK_SIZE_REQD: ERR + 8,
  ERR_TOO_BIG: ERR + 9,
} as const

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const

export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const

export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const

export const CommandFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const

export const ReplyFlag = {
  DONE: 1 << 0,
} as const

export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const

/** Error values on the wire (Linux numbering, whatever the host). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const
export type NbdErrnoValue = (typeof NbdErrno)[keyof typeof NbdErrno]

/** Flags of geom-rowr's own metadata context. */
export const WrittenState = {
  /** The range is served from the read-write device. */
  WRITTEN: 1 << 0,
} as const

export const BASE_ALLOCATION = 'base:allocation'
export const ROWR_WRITTEN = 'geom-rowr:written'
