// The messages geom-rowr exchanges with Linux's nbd driver over generic
// netlink, built and parsed without a socket (the glue is nbd-netlink.ts).
// Layouts: <linux/netlink.h> (nlmsghdr, nlattr, nlmsgerr), <linux/genetlink.h>
// (genlmsghdr, the "nlctrl" controller) and <linux/nbd-netlink.h> (the nbd
// family's commands and attributes). Netlink headers and integer attributes
// are in the host's byte order; every attribute is padded to 4 bytes.
import { endianness } from 'node:os'

/** <linux/netlink.h> */
export const NETLINK_GENERIC = 16
export const NlmsgType = { ERROR: 2, DONE: 3 } as const
const NlmFlag = { REQUEST: 0x1, MULTI: 0x2, ACK: 0x4 } as const
/** nla_type's flag for an attribute that holds attributes. */
const NLA_F_NESTED = 0x8000
const NLA_TYPE_MASK = ~(0x8000 | 0x4000) & 0xffff
const NLMSG_HEADER_BYTES = 16
const GENL_HEADER_BYTES = 4
const NLA_HEADER_BYTES = 4

/** <linux/genetlink.h>: the controller that resolves family names. */
export const GENL_ID_CTRL = 0x10
const CtrlCmd = { NEWFAMILY: 1, GETFAMILY: 3 } as const
const CtrlAttr = { FAMILY_ID: 1, FAMILY_NAME: 2 } as const
const CTRL_VERSION = 2

/** <linux/nbd-netlink.h> */
const NBD_FAMILY_NAME = 'nbd'
const NBD_GENL_VERSION = 1
const NbdCmd = { CONNECT: 1, DISCONNECT: 2, RECONFIGURE: 3, LINK_DEAD: 4, STATUS: 5 } as const
const NbdAttr = {
  INDEX: 1,
  SIZE_BYTES: 2,
  BLOCK_SIZE_BYTES: 3,
  TIMEOUT: 4,
  SERVER_FLAGS: 5,
  CLIENT_FLAGS: 6,
  SOCKETS: 7,
  DEAD_CONN_TIMEOUT: 8,
  DEVICE_LIST: 9,
} as const
const NBD_SOCK_ITEM = 1
const NBD_SOCK_FD = 1
const NbdDeviceAttr = { INDEX: 1, CONNECTED: 2 } as const

const LE = endianness() === 'LE'
const align4 = (n: number): number => (n + 3) & ~3

const u16 = (b: Buffer, v: number, at: number): void => void (LE ? b.writeUInt16LE(v, at) : b.writeUInt16BE(v, at))
const u32 = (b: Buffer, v: number, at: number): void => void (LE ? b.writeUInt32LE(v, at) : b.writeUInt32BE(v, at))
const readU16 = (b: Buffer, at: number): number => (LE ? b.readUInt16LE(at) : b.readUInt16BE(at))
const readU32 = (b: Buffer, at: number): number => (LE ? b.readUInt32LE(at) : b.readUInt32BE(at))
const readI32 = (b: Buffer, at: number): number => (LE ? b.readInt32LE(at) : b.readInt32BE(at))

/** One attribute: type and payload, padded. */
const attr = (type: number, payload: Buffer): Buffer => {
  const b = Buffer.alloc(align4(NLA_HEADER_BYTES + payload.length))
  u16(b, NLA_HEADER_BYTES + payload.length, 0)
  u16(b, type, 2)
  payload.copy(b, NLA_HEADER_BYTES)
  return b
}

const attrU32 = (type: number, v: number): Buffer => {
  const p = Buffer.alloc(4)
  u32(p, v, 0)
  return attr(type, p)
}

const attrU64 = (type: number, v: number | bigint): Buffer => {
  const p = Buffer.alloc(8)
  if (LE) p.writeBigUInt64LE(BigInt(v))
  else p.writeBigUInt64BE(BigInt(v))
  return attr(type, p)
}

/** A NUL-terminated string, as NLA_NUL_STRING and the controller want it. */
const attrString = (type: number, s: string): Buffer => attr(type, Buffer.from(`${s}\0`))

const attrNested = (type: number, children: readonly Buffer[]): Buffer => attr(type | NLA_F_NESTED, Buffer.concat(children))

/** A generic netlink request: nlmsghdr, genlmsghdr, attributes. Port id 0: the kernel fills it in. */
const genlMessage = (o: {
  family: number
  cmd: number
  version: number
  seq: number
  flags?: number
  attrs: readonly Buffer[]
}): Buffer => {
  const body = Buffer.concat(o.attrs)
  const b = Buffer.alloc(NLMSG_HEADER_BYTES + GENL_HEADER_BYTES + body.length)
  u32(b, b.length, 0)
  u16(b, o.family, 4)
  u16(b, o.flags ?? NlmFlag.REQUEST | NlmFlag.ACK, 6)
  u32(b, o.seq >>> 0, 8)
  u32(b, 0, 12)
  b[16] = o.cmd
  b[17] = o.version
  body.copy(b, NLMSG_HEADER_BYTES + GENL_HEADER_BYTES)
  return b
}

export const getFamilyRequest = (seq: number, name = NBD_FAMILY_NAME): Buffer =>
  genlMessage({ family: GENL_ID_CTRL, cmd: CtrlCmd.GETFAMILY, version: CTRL_VERSION, seq, attrs: [attrString(CtrlAttr.FAMILY_NAME, name)] })

/** What NBD_CMD_CONNECT configures; the kernel chooses the device unless `index` is given. */
export interface NbdConnectConfig {
  readonly index?: number
  readonly sizeBytes: number
  readonly blockSizeBytes: number
  /** The export's transmission flags, as the server sent them. */
  readonly serverFlags: number
  /** Seconds before a request without a reply fails; 0: never (it is retried on a reconnected socket). */
  readonly timeoutSeconds: number
  /** Seconds new requests wait for a dead connection to be replaced before they fail. */
  readonly deadConnTimeoutSeconds: number
  /** Descriptors of connected sockets, past the NBD handshake. */
  readonly socketFds: readonly number[]
}

const sockets = (fds: readonly number[]): Buffer =>
  attrNested(
    NbdAttr.SOCKETS,
    fds.map(fd => attrNested(NBD_SOCK_ITEM, [attrU32(NBD_SOCK_FD, fd)])),
  )

const nbdMessage = (family: number, cmd: number, seq: number, attrs: readonly Buffer[]): Buffer =>
  genlMessage({ family, cmd, version: NBD_GENL_VERSION, seq, attrs })

export const nbdConnectRequest = (family: number, seq: number, c: NbdConnectConfig): Buffer =>
  nbdMessage(family, NbdCmd.CONNECT, seq, [
    ...(c.index !== undefined ? [attrU32(NbdAttr.INDEX, c.index)] : []),
    attrU64(NbdAttr.SIZE_BYTES, c.sizeBytes),
    attrU64(NbdAttr.BLOCK_SIZE_BYTES, c.blockSizeBytes),
    attrU64(NbdAttr.TIMEOUT, c.timeoutSeconds),
    attrU64(NbdAttr.SERVER_FLAGS, c.serverFlags),
    attrU64(NbdAttr.DEAD_CONN_TIMEOUT, c.deadConnTimeoutSeconds),
    sockets(c.socketFds),
  ])

/** Replaces the dead connection of device `index` with `socketFd`. */
export const nbdReconfigureRequest = (
  family: number,
  seq: number,
  index: number,
  socketFd: number,
  deadConnTimeoutSeconds: number,
): Buffer =>
  nbdMessage(family, NbdCmd.RECONFIGURE, seq, [
    attrU32(NbdAttr.INDEX, index),
    attrU64(NbdAttr.DEAD_CONN_TIMEOUT, deadConnTimeoutSeconds),
    sockets([socketFd]),
  ])

export const nbdDisconnectRequest = (family: number, seq: number, index: number): Buffer =>
  nbdMessage(family, NbdCmd.DISCONNECT, seq, [attrU32(NbdAttr.INDEX, index)])

export const nbdStatusRequest = (family: number, seq: number, index: number): Buffer =>
  nbdMessage(family, NbdCmd.STATUS, seq, [attrU32(NbdAttr.INDEX, index)])

export interface NetlinkMessage {
  readonly type: number
  readonly flags: number
  readonly seq: number
  /** Everything after the nlmsghdr. */
  readonly payload: Buffer
}

class NetlinkFormatError extends Error {
  override name = 'NetlinkFormatError'
}

/** The messages in one datagram from the kernel. */
export const parseMessages = (b: Buffer): NetlinkMessage[] => {
  const out: NetlinkMessage[] = []
  let at = 0
  while (at + NLMSG_HEADER_BYTES <= b.length) {
    const length = readU32(b, at)
    if (length < NLMSG_HEADER_BYTES || at + length > b.length) {
      throw new NetlinkFormatError(`a netlink message of ${length} bytes at offset ${at} of ${b.length}`)
    }
    out.push({
      type: readU16(b, at + 4),
      flags: readU16(b, at + 6),
      seq: readU32(b, at + 8),
      payload: b.subarray(at + NLMSG_HEADER_BYTES, at + length),
    })
    at += align4(length)
  }
  return out
}

/** NLMSG_ERROR's code: 0 for an acknowledgement, else a negative errno. */
export const errorCode = (m: NetlinkMessage): number => {
  if (m.payload.length < 4) throw new NetlinkFormatError('an NLMSG_ERROR without its error code')
  return readI32(m.payload, 0)
}

/** Attributes by type (the nested flag cleared); a repeated type keeps its first. */
const parseAttrs = (b: Buffer): Map<number, Buffer> => {
  const out = new Map<number, Buffer>()
  let at = 0
  while (at + NLA_HEADER_BYTES <= b.length) {
    const length = readU16(b, at)
    if (length < NLA_HEADER_BYTES || at + length > b.length) {
      throw new NetlinkFormatError(`an attribute of ${length} bytes at offset ${at} of ${b.length}`)
    }
    const type = readU16(b, at + 2) & NLA_TYPE_MASK
    if (!out.has(type)) out.set(type, b.subarray(at + NLA_HEADER_BYTES, at + length))
    at += align4(length)
  }
  return out
}

/** A generic netlink message's command and attributes. */
const parseGenl = (m: NetlinkMessage): { cmd: number; attrs: Map<number, Buffer> } => {
  if (m.payload.length < GENL_HEADER_BYTES) throw new NetlinkFormatError('a generic netlink message without its header')
  return { cmd: m.payload[0]!, attrs: parseAttrs(m.payload.subarray(GENL_HEADER_BYTES)) }
}

const need = (attrs: Map<number, Buffer>, type: number, bytes: number, what: string): Buffer => {
  const v = attrs.get(type)
  if (!v || v.length < bytes) throw new NetlinkFormatError(`the kernel's reply has no ${what}`)
  return v
}

/** The family id in the controller's reply to GETFAMILY. */
export const parseFamilyId = (m: NetlinkMessage): number => {
  const { cmd, attrs } = parseGenl(m)
  if (cmd !== CtrlCmd.NEWFAMILY) throw new NetlinkFormatError(`the controller answered with command ${cmd}`)
  return readU16(need(attrs, CtrlAttr.FAMILY_ID, 2, 'family id'), 0)
}

/** The device index in the nbd family's reply to CONNECT. */
export const parseConnectIndex = (m: NetlinkMessage): number => readU32(need(parseGenl(m).attrs, NbdAttr.INDEX, 4, 'device index'), 0)

/** Whether the device in STATUS's reply is configured (has a connection set up, live or dead). */
export const parseStatusConnected = (m: NetlinkMessage, index: number): boolean | undefined => {
  const list = parseGenl(m).attrs.get(NbdAttr.DEVICE_LIST)
  if (!list) return undefined
  let at = 0
  while (at + NLA_HEADER_BYTES <= list.length) {
    const length = readU16(list, at)
    if (length < NLA_HEADER_BYTES || at + length > list.length) throw new NetlinkFormatError('a malformed device list')
    const item = parseAttrs(list.subarray(at + NLA_HEADER_BYTES, at + length))
    const i = item.get(NbdDeviceAttr.INDEX)
    const connected = item.get(NbdDeviceAttr.CONNECTED)
    if (i && i.length >= 4 && readU32(i, 0) === index && connected && connected.length >= 1) return connected[0] !== 0
    at += align4(length)
  }
  return undefined
}
