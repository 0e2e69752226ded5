// One client connection: greeting, option haggling, then requests handed to
// the engine concurrently, each answered as soon as it completes.
//
// Socket reads land where the connection says (Node's `onread`): the rest of
// a write payload being received goes straight into its pooled buffer, with
// no copy and no per-read allocation; everything else lands in the free part
// of a scratch buffer and is queued as a view of it.
//
// Hostile input never costs more than bounded memory: option data and write
// payloads have caps checked before anything is allocated, reading stops
// while too much is in flight, and anything that cannot be parsed ends this
// connection only.
import { Socket } from 'node:net'
import { INLINE_READ_MAX, type RowrDevice } from '../engine/rowr-device.js'
import { ioFailure } from '../errors.js'
import { BufferPool } from './buffer-pool.js'
import { ByteQueue } from './byte-queue.js'
import {
  BASE_ALLOCATION,
  CLIENT_FLAGS_LENGTH,
  Command,
  CommandFlag,
  IHAVEOPT,
  NbdErrno,
  OPTION_HEADER_LENGTH,
  REQUEST_HEADER_LENGTH,
  WrittenState,
  type NbdErrnoValue,
} from './constants.js'
import { Negotiation, type ExportDescription } from './negotiation.js'
import {
  blockStatusChunk,
  greeting,
  offsetDataHeader,
  simpleReply,
  structuredDone,
  structuredError,
  type StatusDescriptor,
} from './replies.js'
import { parseRequest, type NbdRequest } from './request.js'

export interface ConnectionLimits {
  /** Largest option data accepted during haggling. */
  readonly maxOptionLength: number
  /** Requests handled at once before reading pauses. */
  readonly maxInFlight: number
  /** Payload bytes (reads and writes) held at once before reading pauses. */
  readonly maxInFlightBytes: number
  /** Most descriptors in one block status reply. */
  readonly maxExtents: number
}

export const DEFAULT_LIMITS: ConnectionLimits = {
  maxOptionLength: 64 * 1024,
  maxInFlight: 128,
  maxInFlightBytes: 128 * 1024 * 1024,
  maxExtents: 1024,
}

export type Log = (message: string) => void

/** A request the server refuses, answered with an NBD error. */
class RequestError extends Error {
  readonly errno: NbdErrnoValue
  constructor(errno: NbdErrnoValue, message: string) {
    super(message)
    this.errno = errno
  }
}

const FLAGS_ALLOWED: Record<number, number> = {
  [Command.READ]: CommandFlag.DF,
  [Command.WRITE]: CommandFlag.FUA,
  [Command.DISC]: 0,
  [Command.FLUSH]: 0,
  [Command.TRIM]: CommandFlag.FUA,
  [Command.CACHE]: 0,
  [Command.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE,
  [Command.BLOCK_STATUS]: CommandFlag.REQ_ONE,
}

/** Maps an engine or system failure to the error a client is told. */
const errnoFor = (e: unknown): NbdErrnoValue => (e instanceof RequestError ? e.errno : NbdErrno[ioFailure(e)])

type Phase = 'flags' | 'options' | 'transmission' | 'disconnecting' | 'closed'

/** Socket reads outside write payloads land in buffers this large... */
const SCRATCH_BYTES = 64 * 1024
/** ...and a new one is started when less than this is left. */
const SCRATCH_MIN_READ = 16 * 1024

/** A write payload being received: its buffer and how much of it has arrived. */
interface IncomingPayload {
  readonly data: Buffer
  filled: number
}

/**
 * The handle of a socket that net.Server accepted, paused (`pauseOnConnect`):
 * a Socket made over it again can choose where its reads land, which an
 * accepted socket cannot.
 */
interface AcceptedSocket extends Socket {
  readonly _handle: unknown
}

export class NbdConnection {
  readonly #socket: Socket
  readonly #engine: RowrDevice
  readonly #negotiation: Negotiation
  readonly #limits: ConnectionLimits
  readonly #log: Log
  readonly #queue = new ByteQueue()
  #phase: Phase = 'flags'
  #option: { code: number; length: number } | undefined
  #request: NbdRequest | undefined
  #inFlight = 0
  #inFlightBytes = 0
  #paused = false
  #corked = false
  #scratch = Buffer.allocUnsafeSlow(SCRATCH_BYTES)
  #payload: IncomingPayload | undefined
  /** Whether the read in progress lands in #payload (else in #scratch). */
  #readingPayload = false
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>

  readonly #pool: BufferPool

  /** `accepted` comes from a net.Server listening with `pauseOnConnect`. */
  constructor(
    accepted: Socket,
    engine: RowrDevice,
    exp: ExportDescription,
    log: Log,
    pool: BufferPool,
    limits = DEFAULT_LIMITS,
  ) {
    const socket = new Socket({
      handle: (accepted as AcceptedSocket)._handle,
      onread: { buffer: () => this.#readTarget(), callback: (n: number) => this.#received(n) },
    } as ConstructorParameters<typeof Socket>[0])
    this.#socket = socket
    this.#pool = pool
    this.#engine = engine
    this.#negotiation = new Negotiation(exp)
    this.#limits = limits
    this.#log = log
    this.closed = new Promise(resolve => socket.once('close', () => resolve()))
    socket.on('close', () => {
      this.#phase = 'closed'
      this.#queue.clear()
      if (this.#payload) this.#pool.release(this.#payload.data)
      this.#payload = undefined
      // The accepted socket is the server's count of this connection.
      accepted.destroy()
    })
    // Resets and broken pipes are the client's business; 'close' follows.
    socket.on('error', e => this.#log(`connection error: ${e.message}`))
    socket.on('drain', () => this.#pump())
    socket.setNoDelay?.(true)
    this.#send(greeting())
  }

  /** Stops taking requests, answers those in flight, then closes. */
  shutdown(): void {
    if (this.#phase === 'closed') return
    if (this.#phase !== 'transmission') {
      this.#socket.destroy()
      return
    }
    this.#phase = 'disconnecting'
    this.#finishIfIdle()
  }

  /** Where the next socket read lands: the rest of a payload being received, or scratch. */
  #readTarget(): Buffer {
    const p = this.#payload
    this.#readingPayload = p !== undefined && p.filled < p.data.length
    return this.#readingPayload ? p!.data.subarray(p!.filled) : this.#scratch
  }

  #received(n: number): void {
    if (this.#readingPayload) {
      this.#payload!.filled += n
    } else {
      // The queue keeps a view; the next read goes after it.
      this.#queue.push(this.#scratch.subarray(0, n))
      this.#scratch =
        this.#scratch.length - n >= SCRATCH_MIN_READ ? this.#scratch.subarray(n) : Buffer.allocUnsafeSlow(SCRATCH_BYTES)
    }
    this.#pump()
  }

  /** Closes at once; requests in flight complete but are not answered. */
  destroy(): void {
    this.#socket.destroy()
  }

  /** Sends a read reply's header and data; the data goes back to the pool once sent. */
  #sendData(header: Buffer, data: Buffer): void {
    if (this.#socket.destroyed || !this.#socket.writable) {
      this.#pool.release(data)
      return
    }
    this.#send(header)
    this.#socket.write(data, () => this.#pool.release(data))
  }

  #send(...buffers: Buffer[]): void {
    if (this.#socket.destroyed || !this.#socket.writable) return
    // Replies made in the same turn of the event loop (a batch of requests
    // served at once, or I/O completions that arrived together) leave in
    // one write: syscalls per reply dominate small requests.
    if (!this.#corked) {
      this.#corked = true
      this.#socket.cork()
      setImmediate(this.#uncork)
    }
    for (const b of buffers) this.#socket.write(b)
  }

  readonly #uncork = (): void => {
    this.#corked = false
    this.#socket.uncork()
  }

  #fatal(message: string): void {
    this.#log(`closing connection: ${message}`)
    this.#phase = 'closed'
    this.#queue.clear()
    this.#socket.destroy()
  }

  #busy(): boolean {
    return (
      this.#inFlight >= this.#limits.maxInFlight ||
      this.#inFlightBytes >= this.#limits.maxInFlightBytes ||
      this.#socket.writableNeedDrain
    )
  }

  /** Parses and dispatches whatever whole messages are queued. */
  #pump(): void {
    for (;;) {
      if (this.#phase === 'flags') {
        if (this.#queue.length < CLIENT_FLAGS_LENGTH) break
        if (!this.#negotiation.clientFlags(this.#queue.take(CLIENT_FLAGS_LENGTH).readUInt32BE(0))) {
          this.#fatal('client sent unknown handshake flags')
          return
        }
        this.#phase = 'options'
      } else if (this.#phase === 'options') {
        if (!this.#takeOption()) break
      } else if (this.#phase === 'transmission') {
        if (this.#busy()) {
          this.#pause()
          return
        }
        if (!this.#takeRequest()) break
      } else {
        return
      }
    }
    this.#resume()
  }

  #pause(): void {
    if (!this.#paused) {
      this.#paused = true
      this.#socket.pause()
    }
  }

  #resume(): void {
    if (this.#paused && this.#phase !== 'closed') {
      this.#paused = false
      this.#socket.resume()
    }
  }

  /** Handles one option if it has fully arrived; false when more is needed. */
  #takeOption(): boolean {
    if (!this.#option) {
      if (this.#queue.length < OPTION_HEADER_LENGTH) return false
      const h = this.#queue.take(OPTION_HEADER_LENGTH)
      if (h.readBigUInt64BE(0) !== IHAVEOPT) {
        this.#fatal('bad option magic')
        return false
      }
      const length = h.readUInt32BE(12)
      if (length > this.#limits.maxOptionLength) {
        this.#fatal(`option data of ${length} bytes is over the ${this.#limits.maxOptionLength}-byte limit`)
        return false
      }
      this.#option = { code: h.readUInt32BE(8), length }
    }
    if (this.#queue.length < this.#option.length) return false
    const { code, length } = this.#option
    this.#option = undefined
    const outcome = this.#negotiation.option(code, this.#queue.take(length))
    this.#send(...outcome.replies)
    if (outcome.next === 'close') {
      this.#phase = 'closed'
      this.#socket.end()
      return false
    }
    if (outcome.next === 'transmission') this.#phase = 'transmission'
    return true
  }

  /** Dispatches one request if it has fully arrived; false when more is needed. */
  #takeRequest(): boolean {
    if (!this.#request) {
      if (this.#queue.length < REQUEST_HEADER_LENGTH) return false
      try {
        this.#request = parseRequest(this.#queue.take(REQUEST_HEADER_LENGTH))
      } catch (e) {
        this.#fatal((e as Error).message)
        return false
      }
      if (this.#request.type === Command.WRITE && this.#request.length > this.#negotiation.export.maximumPayload) {
        // The payload cannot be skipped safely without buffering it.
        this.#fatal(
          `write of ${this.#request.length} bytes is over the ${this.#negotiation.export.maximumPayload}-byte maximum`,
        )
        return false
      }
    }
    const request = this.#request
    let payload: Buffer | undefined
    if (request.type === Command.WRITE) {
      payload = this.#takePayload(request.length)
      if (!payload) return false
    }
    this.#request = undefined
    if (request.type === Command.DISC) {
      this.#phase = 'disconnecting'
      this.#finishIfIdle()
      return false
    }
    this.#dispatch(request, payload)
    return true
  }

  /**
   * A write's payload once all of it has arrived; until then undefined, and
   * the socket reads the rest straight into place.
   */
  #takePayload(length: number): Buffer | undefined {
    if (!this.#payload) {
      // All here already (small writes): a view of what was read.
      if (this.#queue.length >= length) return this.#queue.take(length, this.#pool.acquire.bind(this.#pool))
      const queued = this.#queue.length
      this.#payload = { data: this.#pool.acquire(length), filled: queued }
      this.#queue.takeInto(this.#payload.data, 0, queued)
    }
    if (this.#payload.filled < length) return undefined
    const { data } = this.#payload
    this.#payload = undefined
    return data
  }

  #dispatch(request: NbdRequest, payload: Buffer | undefined): void {
    if (request.type === Command.READ && this.#readAtOnce(request)) return
    const bytes = request.type === Command.READ || request.type === Command.WRITE ? request.length : 0
    this.#inFlight++
    this.#inFlightBytes += bytes
    this.#handle(request, payload)
      .catch(e => this.#replyError(request, e))
      .finally(() => {
        if (payload) this.#pool.release(payload)
        this.#inFlight--
        this.#inFlightBytes -= bytes
        if (this.#phase === 'disconnecting') this.#finishIfIdle()
        else if (this.#paused) this.#pump()
      })
  }

  /**
   * Answers a read at once when its bytes are cached and no write overlaps
   * it (most small reads): no promise and no in-flight entry, which cost
   * random 4K reads about 5% of their rate. False otherwise, and the usual
   * path serves the read or reports what is wrong with it.
   */
  #readAtOnce(request: NbdRequest): boolean {
    const size = this.#engine.size
    // Larger reads are never served at once: no buffer to take and give back.
    if (
      (request.flags & ~CommandFlag.DF) !== 0 ||
      request.length > INLINE_READ_MAX ||
      request.offset > size ||
      request.length > size - request.offset
    ) {
      return false
    }
    const data = this.#pool.acquire(request.length)
    if (!this.#engine.tryReadInto(data, request.offset)) {
      this.#pool.release(data)
      return false
    }
    this.#replyData(request, data)
    return true
  }

  #finishIfIdle(): void {
    if (this.#inFlight === 0 && this.#phase === 'disconnecting') {
      this.#phase = 'closed'
      this.#socket.end()
    }
  }

  #checkRange(request: NbdRequest, errno: NbdErrnoValue = NbdErrno.EINVAL): void {
    const size = this.#engine.size
    if (request.offset > size || request.length > size - request.offset) {
      throw new RequestError(errno, `range ${request.offset}+${request.length} is beyond the ${size}-byte export`)
    }
  }

  async #handle(request: NbdRequest, payload: Buffer | undefined): Promise<void> {
    const allowed = FLAGS_ALLOWED[request.type]
    if (allowed === undefined) throw new RequestError(NbdErrno.EINVAL, `unknown command ${request.type}`)
    if ((request.flags & ~allowed) !== 0) {
      throw new RequestError(NbdErrno.EINVAL, `flags 0x${request.flags.toString(16)} are not valid for command ${request.type}`)
    }
    const fua = (request.flags & CommandFlag.FUA) !== 0
    switch (request.type) {
      case Command.READ: {
        this.#checkRange(request)
        if (request.length > this.#negotiation.export.maximumPayload) {
          throw new RequestError(NbdErrno.EINVAL, `read of ${request.length} bytes is over the maximum payload`)
        }
        const data = this.#pool.acquire(request.length)
        try {
          await this.#engine.readInto(data, request.offset)
        } catch (e) {
          this.#pool.release(data)
          throw e
        }
        this.#replyData(request, data)
        return
      }
      case Command.WRITE:
        this.#checkRange(request, NbdErrno.ENOSPC)
        await this.#engine.write(request.offset, payload!, { fua })
        break
      case Command.FLUSH:
        await this.#engine.flush()
        break
      case Command.TRIM:
      case Command.WRITE_ZEROES:
        this.#checkRange(request, NbdErrno.ENOSPC)
        await this.#engine.zero(request.offset, request.length, { fua })
        break
      case Command.CACHE:
        this.#checkRange(request)
        await this.#engine.cache(request.offset, request.length)
        break
      case Command.BLOCK_STATUS:
        this.#blockStatus(request)
        return
    }
    this.#replyOk(request)
  }

  #replyData(request: NbdRequest, data: Buffer): void {
    this.#sendData(
      this.#negotiation.structuredReplies
        ? offsetDataHeader(request.cookie, request.offset, data.length)
        : simpleReply(request.cookie, 0),
      data,
    )
  }

  #replyOk(request: NbdRequest): void {
    this.#send(this.#negotiation.structuredReplies ? structuredDone(request.cookie) : simpleReply(request.cookie, 0))
  }

  #replyError(request: NbdRequest, e: unknown): void {
    const errno = errnoFor(e)
    const message = e instanceof Error ? e.message : String(e)
    if (!(e instanceof RequestError)) this.#log(`request ${request.type} at ${request.offset}+${request.length} failed: ${message}`)
    this.#send(
      this.#negotiation.structuredReplies
        ? structuredError(request.cookie, errno, message)
        : simpleReply(request.cookie, errno),
    )
  }

  #blockStatus(request: NbdRequest): void {
    const contexts = this.#negotiation.metaContexts
    if (!this.#negotiation.structuredReplies || contexts.size === 0) {
      throw new RequestError(NbdErrno.EINVAL, 'no metadata context was selected with NBD_OPT_SET_META_CONTEXT')
    }
    this.#checkRange(request)
    if (request.length === 0) throw new RequestError(NbdErrno.EINVAL, 'block status of an empty range')
    const max = (request.flags & CommandFlag.REQ_ONE) !== 0 ? 1 : this.#limits.maxExtents
    const chunks: Buffer[] = []
    let left = contexts.size
    for (const [id, name] of contexts) {
      chunks.push(blockStatusChunk(request.cookie, id, this.#describe(name, request, max), --left === 0))
    }
    this.#send(...chunks)
  }

  #describe(context: string, request: NbdRequest, max: number): StatusDescriptor[] {
    if (context === BASE_ALLOCATION) {
      // Every sector is backed by RO or RW: the whole range is data.
      return [{ length: request.length, flags: 0 }]
    }
    return this.#engine
      .extents(request.offset, request.length, max)
      .map(e => ({ length: e.length, flags: e.written ? WrittenState.WRITTEN : 0 }))
  }
}
