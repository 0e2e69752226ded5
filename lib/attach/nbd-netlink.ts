// Linux's nbd driver configured over generic netlink (the messages are in
// nbd-netlink-codec.ts): one request at a time, each acknowledged.
import { errnoName } from '../../native-bindings/errno.js'
import { openNetlinkSocket, type NetlinkSocket } from '../../native-bindings/netlink.js'
import {
  GENL_ID_CTRL,
  NETLINK_GENERIC,
  NlmsgType,
  errorCode,
  getFamilyRequest,
  nbdConnectRequest,
  nbdDisconnectRequest,
  nbdReconfigureRequest,
  nbdStatusRequest,
  parseConnectIndex,
  parseFamilyId,
  parseMessages,
  parseStatusConnected,
  type NbdConnectConfig,
  type NetlinkMessage,
} from './nbd-netlink-codec.js'

/** Far longer than the kernel takes to answer; a hung answer fails instead of blocking forever. */
const ANSWER_MS = 30_000

export class NetlinkRequestError extends Error {
  /** The positive errno the kernel answered with. */
  readonly errno: number
  constructor(what: string, errno: number) {
    super(`${what}: the kernel answered ${errnoName(errno)}`)
    this.errno = errno
  }
}

class NbdNetlink {
  readonly #socket: NetlinkSocket
  readonly #family: number
  #seq: number

  private constructor(socket: NetlinkSocket, family: number, seq: number) {
    this.#socket = socket
    this.#family = family
    this.#seq = seq
  }

  /** Resolves the "nbd" family; ENOENT from the controller means the module is not loaded. */
  static async open(): Promise<NbdNetlink> {
    const socket = openNetlinkSocket(NETLINK_GENERIC, ANSWER_MS)
    try {
      const seq = Date.now() >>> 0
      const [reply] = await exchange(socket, getFamilyRequest(seq), seq, 'resolving the nbd netlink family')
      if (!reply || reply.type !== GENL_ID_CTRL) throw new Error('the netlink controller did not name the nbd family')
      return new NbdNetlink(socket, parseFamilyId(reply), seq + 1)
    } catch (e) {
      socket.close()
      throw e
    }
  }

  /** Attaches a device; resolves to its index (/dev/nbdINDEX). */
  async connect(config: NbdConnectConfig): Promise<number> {
    const seq = this.#seq++
    const replies = await exchange(this.#socket, nbdConnectRequest(this.#family, seq, config), seq, 'NBD_CMD_CONNECT')
    const reply = replies.find(m => m.type === this.#family)
    if (!reply) throw new Error('NBD_CMD_CONNECT succeeded without naming the device')
    return parseConnectIndex(reply)
  }

  async reconfigure(index: number, socketFd: number, deadConnTimeoutSeconds: number): Promise<void> {
    const seq = this.#seq++
    await exchange(
      this.#socket,
      nbdReconfigureRequest(this.#family, seq, index, socketFd, deadConnTimeoutSeconds),
      seq,
      `NBD_CMD_RECONFIGURE of nbd${index}`,
    )
  }

  async disconnect(index: number): Promise<void> {
    const seq = this.#seq++
    await exchange(this.#socket, nbdDisconnectRequest(this.#family, seq, index), seq, `NBD_CMD_DISCONNECT of nbd${index}`)
  }

  /** Whether device `index` is configured (undefined: no such device). */
  async connected(index: number): Promise<boolean | undefined> {
    const seq = this.#seq++
    const replies = await exchange(this.#socket, nbdStatusRequest(this.#family, seq, index), seq, `NBD_CMD_STATUS of nbd${index}`)
    const reply = replies.find(m => m.type === this.#family)
    return reply && parseStatusConnected(reply, index)
  }

  close(): void {
    this.#socket.close()
  }
}

/** Sends `request` and collects the answers to it up to its acknowledgement. */
const exchange = async (socket: NetlinkSocket, request: Buffer, seq: number, what: string): Promise<NetlinkMessage[]> => {
  socket.send(request)
  const out: NetlinkMessage[] = []
  for (;;) {
    for (const m of parseMessages(await socket.receive())) {
      if (m.seq !== seq >>> 0) continue
      if (m.type === NlmsgType.ERROR) {
        const code = errorCode(m)
        if (code !== 0) throw new NetlinkRequestError(what, -code)
        return out
      }
      if (m.type !== NlmsgType.DONE) out.push(m)
    }
  }
}

/** Runs `f` with a netlink channel to the nbd driver, closed afterwards. */
export const withNbdNetlink = async <T>(f: (nl: NbdNetlink) => Promise<T>): Promise<T> => {
  const nl = await NbdNetlink.open()
  try {
    return await f(nl)
  } finally {
    nl.close()
  }
}
