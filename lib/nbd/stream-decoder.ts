// The client's side of an NBD connection as a byte stream, decoded without a
// socket (the shape of pg-protocol's parser): bytes are pushed in as they
// arrive and whole messages are pulled out, one at a time, when the caller
// is ready for them.
//
// Where bytes land is a hint, never a premise. `payloadSpace` names the
// buffer the next bytes should be read into (the unfilled rest of a write
// payload, so that large payloads arrive with no copy); bytes pushed from
// anywhere else are copied to where they belong. Pausing, resuming, a read
// target chosen before the stream moved on, or any split of the stream
// therefore give exactly the messages the whole stream gives at once.
//
// Memory is bounded by what the caller lets in: option data and write
// payloads have caps checked before anything is allocated, and an over-long
// write's payload is skipped as it arrives, never buffered.
import { ByteQueue } from './byte-queue.js'
import { CLIENT_FLAGS_LENGTH, Command, IHAVEOPT, OPTION_HEADER_LENGTH, REQUEST_HEADER_LENGTH } from './constants.js'
import { parseRequest, type NbdRequest } from './request.js'

export type DecodedMessage =
  | { readonly kind: 'client-flags'; readonly flags: number }
  | { readonly kind: 'option'; readonly code: number; readonly data: Buffer }
  /** A request; a WRITE's payload comes with it, whole. */
  | { readonly kind: 'request'; readonly request: NbdRequest; readonly payload: Buffer | undefined }
  /** A WRITE longer than the maximum payload: its payload is being skipped. */
  | { readonly kind: 'oversized-write'; readonly request: NbdRequest }
  /** The stream cannot be framed any further; nothing follows. */
  | { readonly kind: 'malformed'; readonly message: string }

interface DecoderLimits {
  /** Largest option data accepted during haggling. */
  readonly maxOptionLength: number
  /** Largest write payload received; longer ones are skipped. */
  readonly maxPayload: number
}

type Phase = 'client-flags' | 'options' | 'transmission' | 'broken'

/** A write payload being received: its request, its buffer and how much of it has arrived. */
interface PendingPayload {
  readonly request: NbdRequest
  readonly data: Buffer
  filled: number
}

export class NbdStreamDecoder {
  readonly #limits: DecoderLimits
  readonly #allocate: (n: number) => Buffer
  readonly #queue = new ByteQueue()
  #phase: Phase = 'client-flags'
  #option: { readonly code: number; readonly length: number } | undefined
  /** Invariant: while a payload is pending, the queue is empty. */
  #payload: PendingPayload | undefined
  /** Bytes of an over-long write's payload still to discard. */
  #skipping = 0

  /** `allocate` gives write payloads their buffers (a pool's). */
  constructor(limits: DecoderLimits, allocate: (n: number) => Buffer) {
    this.#limits = limits
    this.#allocate = allocate
  }

  /** Bytes received and not yet handed out in a message. */
  get buffered(): number {
    return this.#queue.length + (this.#payload?.filled ?? 0)
  }

  /**
   * Where the next bytes should land to be taken without a copy: the unfilled
   * rest of the write payload being received; undefined when any buffer will
   * do.
   */
  get payloadSpace(): Buffer | undefined {
    const p = this.#payload
    return p && p.filled < p.data.length ? p.data.subarray(p.filled) : undefined
  }

  /**
   * Takes bytes that arrived. A chunk read into `payloadSpace` is taken in
   * place; any other chunk is kept as a view or copied, so the caller must
   * not write to it again.
   */
  push(chunk: Buffer): void {
    let rest = chunk
    if (this.#skipping > 0) {
      const n = Math.min(this.#skipping, rest.length)
      this.#skipping -= n
      rest = rest.subarray(n)
    }
    const p = this.#payload
    if (p && rest.length > 0) {
      const space = p.data.length - p.filled
      if (rest.buffer === p.data.buffer && rest.byteOffset === p.data.byteOffset + p.filled && rest.length <= space) {
        p.filled += rest.length
        return
      }
      const n = Math.min(space, rest.length)
      rest.copy(p.data, p.filled, 0, n)
      p.filled += n
      rest = rest.subarray(n)
    }
    if (this.#phase !== 'broken') this.#queue.push(rest)
  }

  /** After the option that ends haggling: what follows are requests. */
  startTransmission(): void {
    if (this.#phase !== 'options') throw new Error(`transmission cannot start in phase ${this.#phase}`)
    this.#phase = 'transmission'
  }

  /** The next whole message, or undefined until more bytes arrive. */
  next(): DecodedMessage | undefined {
    switch (this.#phase) {
      case 'client-flags':
        if (this.#queue.length < CLIENT_FLAGS_LENGTH) return undefined
        this.#phase = 'options'
        return { kind: 'client-flags', flags: this.#queue.take(CLIENT_FLAGS_LENGTH).readUInt32BE(0) }
      case 'options':
        return this.#nextOption()
      case 'transmission':
        return this.#nextRequest()
      case 'broken':
        return undefined
    }
  }

  /**
   * Gives up the stream (the connection is closing): returns the buffer of a
   * payload being received, for its owner to take back.
   */
  abandon(): Buffer | undefined {
    const data = this.#payload?.data
    this.#payload = undefined
    this.#phase = 'broken'
    this.#queue.clear()
    return data
  }

  #broken(message: string): DecodedMessage {
    this.#phase = 'broken'
    this.#queue.clear()
    return { kind: 'malformed', message }
  }

  #nextOption(): DecodedMessage | undefined {
    if (!this.#option) {
      if (this.#queue.length < OPTION_HEADER_LENGTH) return undefined
      const h = this.#queue.take(OPTION_HEADER_LENGTH)
      if (h.readBigUInt64BE(0) !== IHAVEOPT) return this.#broken('bad option magic')
      const length = h.readUInt32BE(12)
      if (length > this.#limits.maxOptionLength) {
        return this.#broken(`option data of ${length} bytes is over the ${this.#limits.maxOptionLength}-byte limit`)
      }
      this.#option = { code: h.readUInt32BE(8), length }
    }
    const { code, length } = this.#option
    if (this.#queue.length < length) return undefined
    this.#option = undefined
    return { kind: 'option', code, data: this.#queue.take(length) }
  }

  #nextRequest(): DecodedMessage | undefined {
    const p = this.#payload
    if (p) {
      if (p.filled < p.data.length) return undefined
      this.#payload = undefined
      return { kind: 'request', request: p.request, payload: p.data }
    }
    if (this.#queue.length < REQUEST_HEADER_LENGTH) return undefined
    let request: NbdRequest
    try {
      request = parseRequest(this.#queue.take(REQUEST_HEADER_LENGTH))
    } catch (e) {
      return this.#broken((e as Error).message)
    }
    if (request.type !== Command.WRITE) return { kind: 'request', request, payload: undefined }
    const { length } = request
    if (length > this.#limits.maxPayload) {
      const queued = Math.min(length, this.#queue.length)
      this.#queue.skip(queued)
      this.#skipping = length - queued
      return { kind: 'oversized-write', request }
    }
    // All here already (small writes): a view of what was read.
    if (this.#queue.length >= length) return { kind: 'request', request, payload: this.#queue.take(length, this.#allocate) }
    const queued = this.#queue.length
    const data = this.#allocate(length)
    this.#queue.takeInto(data, 0, queued)
    this.#payload = { request, data, filled: queued }
    return undefined
  }
}
