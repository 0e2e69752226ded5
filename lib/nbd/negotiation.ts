// Option haggling (fixed newstyle): what the server answers to each option,
// and what the client has agreed to by the time transmission starts. Pure
// logic over parsed bytes; the connection does the socket work.
import { BASE_ALLOCATION, ClientFlag, Info, MAX_STRING, Option, OptionReply, ROWR_WRITTEN, TransmissionFlag } from './constants.js'
import {
  exportNameReply,
  infoBlockSize,
  infoExport,
  infoString,
  metaContextReply,
  optionError,
  optionReply,
  serverReply,
} from './replies.js'

export interface ExportDescription {
  /** The export's name; the empty name also selects it. */
  readonly name: string
  readonly description: string
  readonly size: number
  /** Minimum, preferred and maximum request sizes (NBD_INFO_BLOCK_SIZE). */
  readonly minimumBlock: number
  readonly preferredBlock: number
  readonly maximumPayload: number
}

interface OptionOutcome {
  readonly replies: Buffer[]
  /** What happens after the replies are sent. */
  readonly next: 'options' | 'transmission' | 'close'
}

/** The metadata contexts this server offers, by id. */
const META_CONTEXTS: ReadonlyMap<number, string> = new Map([
  [1, BASE_ALLOCATION],
  [2, ROWR_WRITTEN],
])

class MalformedOption extends Error {}

/** Bounds-checked reading of one option's data. */
class OptionData {
  #pos = 0
  readonly #b: Buffer
  constructor(b: Buffer) {
    this.#b = b
  }
  #need(n: number): void {
    if (this.#pos + n > this.#b.length) throw new MalformedOption('option data too short')
  }
  u16(): number {
    this.#need(2)
    const v = this.#b.readUInt16BE(this.#pos)
    this.#pos += 2
    return v
  }
  u32(): number {
    this.#need(4)
    const v = this.#b.readUInt32BE(this.#pos)
    this.#pos += 4
    return v
  }
  string(length: number): string {
    if (length > MAX_STRING) throw new MalformedOption(`string of ${length} bytes is over the ${MAX_STRING}-byte limit`)
    this.#need(length)
    const s = this.#b.toString('utf8', this.#pos, this.#pos + length)
    this.#pos += length
    return s
  }
  end(): void {
    if (this.#pos !== this.#b.length) throw new MalformedOption('option data has trailing bytes')
  }
}

export class Negotiation {
  readonly export: ExportDescription
  structuredReplies = false
  noZeroes = false
  /** Contexts selected by NBD_OPT_SET_META_CONTEXT, by id. */
  metaContexts: ReadonlyMap<number, string> = new Map()

  constructor(exp: ExportDescription) {
    this.export = exp
  }

  /** Accepts the client's flags; false means the connection must close. */
  clientFlags(flags: number): boolean {
    if ((flags & ~(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)) !== 0) return false
    this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0
    return true
  }

  transmissionFlags(): number {
    let flags =
      TransmissionFlag.HAS_FLAGS |
      TransmissionFlag.SEND_FLUSH |
      TransmissionFlag.SEND_FUA |
      TransmissionFlag.SEND_TRIM |
      TransmissionFlag.SEND_WRITE_ZEROES |
      TransmissionFlag.SEND_CACHE |
      // One engine serves every connection and FLUSH syncs RW itself, so a
      // flush on any connection covers writes completed on all of them.
      TransmissionFlag.CAN_MULTI_CONN
    if (this.structuredReplies) flags |= TransmissionFlag.SEND_DF
    return flags
  }

  #knows(name: string): boolean {
    return name === '' || name === this.export.name
  }

  option(option: number, data: Buffer): OptionOutcome {
    try {
      return this.#option(option, data)
    } catch (e) {
      if (!(e instanceof MalformedOption)) throw e
      return { replies: [optionError(option, OptionReply.ERR_INVALID, e.message)], next: 'options' }
    }
  }

  #option(option: number, data: Buffer): OptionOutcome {
    const reply = (...replies: Buffer[]): OptionOutcome => ({ replies, next: 'options' })
    switch (option) {
      case Option.EXPORT_NAME: {
        const name = new OptionData(data).string(data.length)
        // EXPORT_NAME cannot fail politely: an unknown name ends the session.
        if (!this.#knows(name)) return { replies: [], next: 'close' }
        return {
          replies: [exportNameReply(this.export.size, this.transmissionFlags(), this.noZeroes)],
          next: 'transmission',
        }
      }
      case Option.ABORT:
        return { replies: [optionReply(option, OptionReply.ACK)], next: 'close' }
      case Option.LIST:
        if (data.length !== 0) return reply(optionError(option, OptionReply.ERR_INVALID, 'NBD_OPT_LIST takes no data'))
        return reply(serverReply(option, this.export.name), optionReply(option, OptionReply.ACK))
      case Option.STARTTLS:
        return reply(optionError(option, OptionReply.ERR_POLICY, 'TLS is not configured on this server'))
      case Option.INFO:
      case Option.GO:
        return this.#info(option, new OptionData(data))
      case Option.STRUCTURED_REPLY:
        if (data.length !== 0) {
          return reply(optionError(option, OptionReply.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data'))
        }
        this.structuredReplies = true
        return reply(optionReply(option, OptionReply.ACK))
      case Option.LIST_META_CONTEXT:
      case Option.SET_META_CONTEXT:
        return this.#metaContext(option, new OptionData(data))
      default:
        return reply(optionError(option, OptionReply.ERR_UNSUP, `option ${option} is not supported`))
    }
  }

  #info(option: number, d: OptionData): OptionOutcome {
    const name = d.string(d.u32())
    const requests: number[] = []
    for (let n = d.u16(); n > 0; n--) requests.push(d.u16())
    d.end()
    if (!this.#knows(name)) {
      return {
        replies: [optionError(option, OptionReply.ERR_UNKNOWN, `no export named "${name}"; this server has "${this.export.name}"`)],
        next: 'options',
      }
    }
    const e = this.export
    const replies = [infoExport(option, e.size, this.transmissionFlags())]
    for (const info of new Set(requests)) {
      if (info === Info.BLOCK_SIZE) {
        replies.push(infoBlockSize(option, e.minimumBlock, e.preferredBlock, e.maximumPayload))
      } else if (info === Info.NAME) {
        replies.push(infoString(option, Info.NAME, e.name))
      } else if (info === Info.DESCRIPTION) {
        replies.push(infoString(option, Info.DESCRIPTION, e.description))
      }
    }
    replies.push(optionReply(option, OptionReply.ACK))
    return { replies, next: option === Option.GO ? 'transmission' : 'options' }
  }

  #metaContext(option: number, d: OptionData): OptionOutcome {
    const name = d.string(d.u32())
    const queries: string[] = []
    for (let n = d.u32(); n > 0; n--) queries.push(d.string(d.u32()))
    d.end()
    const fail = (type: number, message: string): OptionOutcome => ({
      replies: [optionError(option, type, message)],
      next: 'options',
    })
    if (!this.structuredReplies) {
      return fail(OptionReply.ERR_INVALID, 'negotiate NBD_OPT_STRUCTURED_REPLY before metadata contexts')
    }
    if (!this.#knows(name)) return fail(OptionReply.ERR_UNKNOWN, `no export named "${name}"`)
    const set = option === Option.SET_META_CONTEXT
    const chosen = new Map<number, string>()
    for (const [id, context] of META_CONTEXTS) {
      // LIST with no query lists everything; SET with no query selects nothing.
      const wanted = queries.length === 0 ? !set : queries.some(q => matches(q, context))
      if (wanted) chosen.set(id, context)
    }
    if (set) this.metaContexts = chosen
    const replies = [...chosen].map(([id, context]) => metaContextReply(option, set ? id : 0, context))
    replies.push(optionReply(option, OptionReply.ACK))
    return { replies, next: 'options' }
  }
}

/** "ns:" selects every context of namespace ns; anything else is an exact name. */
const matches = (query: string, context: string): boolean => (query.endsWith(':') ? context.startsWith(query) : query === context)
