// One client connection's socket work: bytes in to the stream decoder,
// messages out of it to negotiation or the engine, replies back, with
// corking and backpressure. Framing lives in the decoder, request checks in
// request-validation.ts; this file only moves bytes and requests.
//
// Socket reads land where the decoder says (Node's `onread`): the rest of a
// write payload being received goes straight into its pooled buffer, with no
// copy and no per-read allocation; everything else lands in the free part of
// a scratch buffer and is kept as a view of it.
//
// Memory per connection is bounded: no message is taken while the requests
// in flight or their payload bytes are at their limits, or while replies
// (option replies included) wait for the client to read them; reading stops
// until then, so at most one more read's worth arrives.
import { Socket } from 'node:net'
import type { Engine } from '../engine/engine.js'
import { DeviceIoError } from '../engine/io-errors.js'
import type { BufferPool } from './buffer-pool.js'
import { BASE_ALLOCATION, Command, CommandFlag, WrittenState } from './constants.js'
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
import type { NbdRequest } from './request.js'
import { nbdErrnoFor, RequestRefused, validateRequest, type Negotiated } from './request-validation.js'
import { NbdStreamDecoder, type DecodedMessage } from './stream-decoder.js'

/** What one connection may hold at once. */
const LIMITS = {
  /** Largest option data accepted during haggling. */
  maxOptionLength: 64 * 1024,
  /** Requests handled at once before reading pauses. */
  maxInFlight: 128,
  /** Payload bytes (reads and writes) held at once before reading pauses. */
  maxInFlightBytes: 128 * 1024 * 1024,
  /** Most descriptors in one block status reply. */
  maxExtents: 1024,
} as const

export type Log = (message: string) => void

/** Socket reads outside write payloads land in buffers this large... */
const SCRATCH_BYTES = 64 * 1024
/** ...and a new one is started when less than this is left. */
const SCRATCH_MIN_READ = 16 * 1024

/**
 * How long a closing connection waits for the client to read its last
 * replies and hang up before it is cut off: a client that neither reads nor
 * closes must not hold its socket forever.
 */
const CLOSE_LINGER_MS = 10_000

/**
 * open: messages are taken; closing: none are, the requests in flight are
 * answered, then the server hangs up; closed: the socket is gone.
 */
type State = 'open' | 'closing' | 'closed'

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
  readonly #engine: Engine
  readonly #negotiation: Negotiation
  readonly #log: Log
  readonly #pool: BufferPool
  readonly #decoder: NbdStreamDecoder
  #state: State = 'open'
  /** Set once transmission starts: what every request is validated against. */
  #agreed: Negotiated | undefined
  #inFlight = 0
  #inFlightBytes = 0
  #paused = false
  #corked = false
  #hungUp = false
  #linger: NodeJS.Timeout | undefined
  #scratch = Buffer.allocUnsafeSlow(SCRATCH_BYTES)
  /** The buffer the socket's next read lands in. */
  #readTarget: Buffer = this.#scratch
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>

  /** `accepted` comes from a net.Server listening with `pauseOnConnect`. */
  constructor(accepted: Socket, engine: Engine, exp: ExportDescription, log: Log, pool: BufferPool) {
    this.#pool = pool
    this.#engine = engine
    this.#negotiation = new Negotiation(exp)
    this.#log = log
    this.#decoder = new NbdStreamDecoder({ maxOptionLength: LIMITS.maxOptionLength, maxPayload: exp.maximumPayload }, n => pool.acquire(n))
    const socket = new Socket({
      handle: (accepted as AcceptedSocket)._handle,
      onread: { buffer: () => this.#nextReadTarget(), callback: (n: number) => this.#received(n) },
    } as ConstructorParameters<typeof Socket>[0])
    this.#socket = socket
    this.closed = new Promise(resolve => socket.once('close', () => resolve()))
    socket.on('close', () => {
      this.#state = 'closed'
      clearTimeout(this.#linger)
      const partial = this.#decoder.abandon()
      if (partial) this.#pool.release(partial)
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
    if (this.#agreed === undefined) this.#socket.destroy()
    else this.#close()
  }

  /** Closes at once; requests in flight complete but are not answered. */
  destroy(): void {
    this.#socket.destroy()
  }

  /**
   * Chooses where the next socket read lands (Node asks before each read):
   * the rest of a write payload, or scratch. The decoder copies bytes that
   * land elsewhere than it would now choose, so a choice made before the
   * stream moved on (while paused) costs a copy, never correctness.
   */
  #nextReadTarget(): Buffer {
    this.#readTarget = (this.#state === 'open' && this.#decoder.payloadSpace) || this.#scratch
    return this.#readTarget
  }

  #received(n: number): void {
    const chunk = this.#readTarget.subarray(0, n)
    if (this.#readTarget === this.#scratch) {
      // The decoder may keep a view; the next read goes after it.
      this.#scratch = this.#scratch.length - n >= SCRATCH_MIN_READ ? this.#scratch.subarray(n) : Buffer.allocUnsafeSlow(SCRATCH_BYTES)
    }
    // Once closing, what the client still sends is read only to see its EOF.
    if (this.#state !== 'open') return
    this.#decoder.push(chunk)
    this.#pump()
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
    this.#state = 'closed'
    this.#socket.destroy()
  }

  /**
   * Whether to stop taking messages: too much in flight, or replies waiting
   * for the client to read them (option replies as much as request replies,
   * so that a client that never reads costs bounded memory).
   */
  #busy(): boolean {
    return this.#socket.writableNeedDrain || this.#inFlight >= LIMITS.maxInFlight || this.#inFlightBytes >= LIMITS.maxInFlightBytes
  }

  /** Takes whatever whole messages have arrived, until there are none or the connection is busy. */
  #pump(): void {
    while (this.#state === 'open') {
      if (this.#busy()) {
        this.#pause()
        return
      }
      const message = this.#decoder.next()
      if (message === undefined) break
      this.#take(message)
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
    if (this.#paused && this.#state !== 'closed') {
      this.#paused = false
      this.#socket.resume()
    }
  }

  #take(message: DecodedMessage): void {
    switch (message.kind) {
      case 'client-flags':
        if (!this.#negotiation.clientFlags(message.flags)) this.#fatal('client sent unknown handshake flags')
        return
      case 'option':
        this.#takeOption(message.code, message.data)
        return
      case 'request':
        if (message.request.type === Command.DISC) this.#close()
        else this.#dispatch(message.request, message.payload)
        return
      case 'oversized-write':
        this.#replyError(message.request, validateRequest(message.request, this.#agreed!))
        return
      case 'malformed':
        this.#fatal(message.message)
        return
    }
  }

  #takeOption(code: number, data: Buffer): void {
    const outcome = this.#negotiation.option(code, data)
    this.#send(...outcome.replies)
    if (outcome.next === 'close') {
      this.#close()
    } else if (outcome.next === 'transmission') {
      const n = this.#negotiation
      this.#agreed = {
        size: n.export.size,
        maximumPayload: n.export.maximumPayload,
        structuredReplies: n.structuredReplies,
        metaContexts: n.metaContexts.size,
      }
      this.#decoder.startTransmission()
    }
  }

  /**
   * Takes no more messages; once the requests in flight are answered, hangs
   * up. Reading goes on whatever the pause state, so the client's EOF is
   * seen and the socket closes.
   */
  #close(): void {
    if (this.#state !== 'open') return
    this.#state = 'closing'
    const partial = this.#decoder.abandon()
    if (partial) this.#pool.release(partial)
    this.#resume()
    this.#hangUpIfIdle()
  }

  #hangUpIfIdle(): void {
    if (this.#state !== 'closing' || this.#inFlight > 0 || this.#hungUp) return
    this.#hungUp = true
    this.#socket.end()
    this.#linger = setTimeout(() => this.#socket.destroy(), CLOSE_LINGER_MS).unref()
  }

  #dispatch(request: NbdRequest, payload: Buffer | undefined): void {
    const refused = validateRequest(request, this.#agreed!)
    if (refused) {
      if (payload) this.#pool.release(payload)
      this.#replyError(request, refused)
      return
    }
    if (request.type === Command.READ) {
      this.#read(request)
      return
    }
    this.#track(request, payload, request.type === Command.WRITE ? request.length : 0, this.#serve(request, payload))
  }

  /**
   * A read the engine answers at once (most small reads: cached, no write
   * overlapping) is replied to at once, with no promise and no in-flight
   * entry: this is the hottest path there is. Any other waits for the engine.
   */
  #read(request: NbdRequest): void {
    const data = this.#pool.acquire(request.length)
    const read = this.#engine.read(data, request.offset)
    if (read === true) {
      this.#replyData(request, data)
      return
    }
    const replied = read.then(
      () => this.#replyData(request, data),
      (e: unknown) => {
        this.#pool.release(data)
        throw e
      },
    )
    this.#track(request, undefined, request.length, replied)
  }

  /** Counts a request in flight until `work` settles, and answers its failure. */
  #track(request: NbdRequest, payload: Buffer | undefined, bytes: number, work: Promise<void>): void {
    this.#inFlight++
    this.#inFlightBytes += bytes
    work
      .catch(e => this.#replyError(request, e))
      .finally(() => {
        if (payload) this.#pool.release(payload)
        this.#inFlight--
        this.#inFlightBytes -= bytes
        if (this.#state === 'closing') this.#hangUpIfIdle()
        else if (this.#paused) this.#pump()
      })
  }

  /** Serves a valid request other than READ. */
  async #serve(request: NbdRequest, payload: Buffer | undefined): Promise<void> {
    const fua = (request.flags & CommandFlag.FUA) !== 0
    switch (request.type) {
      case Command.WRITE:
        await this.#engine.write(request.offset, payload!, { fua })
        break
      case Command.FLUSH:
        await this.#engine.flush()
        break
      case Command.TRIM:
        await this.#engine.zero(request.offset, request.length, { fua })
        break
      case Command.WRITE_ZEROES:
        await this.#engine.zero(request.offset, request.length, {
          fua,
          allocate: (request.flags & CommandFlag.NO_HOLE) !== 0,
        })
        break
      case Command.CACHE:
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
      this.#negotiation.structuredReplies ? offsetDataHeader(request.cookie, request.offset, data.length) : simpleReply(request.cookie, 0),
      data,
    )
  }

  #replyOk(request: NbdRequest): void {
    this.#send(this.#negotiation.structuredReplies ? structuredDone(request.cookie) : simpleReply(request.cookie, 0))
  }

  #replyError(request: NbdRequest, e: unknown): void {
    const errno = nbdErrnoFor(e)
    const message = e instanceof Error ? e.message : String(e)
    // A device's I/O error is counted and logged, at a bounded rate, by the
    // engine's owner (lib/daemon/error-log.ts): a full RW fails every write.
    if (!(e instanceof RequestRefused) && !(e instanceof DeviceIoError)) {
      this.#log(`request ${request.type} at ${request.offset}+${request.length} failed: ${message}`)
    }
    this.#send(this.#negotiation.structuredReplies ? structuredError(request.cookie, errno, message) : simpleReply(request.cookie, errno))
  }

  #blockStatus(request: NbdRequest): void {
    const contexts = this.#negotiation.metaContexts
    const max = (request.flags & CommandFlag.REQ_ONE) !== 0 ? 1 : LIMITS.maxExtents
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
