// Hydration: copies every sector still on RO to RW in the background, in
// large sequential pieces, so that RO can be let go once all are there (as
// dm-clone's hydration, Ceph RBD's flatten). Each piece goes through
// Engine.copyFromRo, which orders it against client writes and lets the map
// decide; trimmed and zero-written sectors are written, so never copied.
//
// Foreground first, never starved: when clients made requests while a piece
// was copied, the next piece waits long enough that the copy keeps the
// share of the time it is given (`share`, like dm-clone's
// hydration_threshold); an idle device is copied at full speed. A rate
// limit (bytes per second) holds it back further. Progress is made durable
// every SAVE_BYTES or SAVE_MS and at every stop, by the map's own rule (RW synced
// before the map says a sector is there), so it survives a crash.
import assert from 'node:assert/strict'
import type { Engine } from './engine.js'

type HydrationState = 'off' | 'running' | 'paused' | 'done' | 'failed'

export interface HydrationStatus {
  readonly state: HydrationState
  /** Bytes on RW that were copied from RO and not written since. */
  readonly copiedBytes: number
  /** Bytes still served from RO. */
  readonly remainingBytes: number
  /** Copied per second over the last seconds; 0 when not running. */
  readonly rateBytesPerSecond: number
  /** The limit set with --rate, bytes per second; 0: none. */
  readonly rateLimit: number
  /** The smallest share of the time the copy keeps under client load, 0 to 1. */
  readonly share: number
  /** Why it failed (state "failed"). */
  readonly error?: string
}

interface HydrationOptions {
  /** Bytes per second; 0: no limit. */
  readonly rate?: number
  /** The share of the time the copy keeps while clients are busy: above 0, at most 1. */
  readonly share?: number
  /** Told when hydration ends (done or failed); `done` once every sector is on RW and that is durable. */
  readonly onEnd?: (state: 'done' | 'failed', error?: Error) => void
  /** Bytes per piece (a multiple of the sector size); tests take smaller ones to make more races. */
  readonly pieceBytes?: number
}

/** Bytes copied per piece. */
const PIECE_BYTES = 1 << 20
/** Progress is made durable after this many bytes copied, or this long. */
const SAVE_BYTES = 64 << 20
const SAVE_MS = 1_000
/** The rate shown is measured over roughly this much of the recent past. */
const RATE_WINDOW_MS = 5_000
export const DEFAULT_SHARE = 0.25

export class Hydration {
  readonly #engine: Engine
  readonly #onEnd: HydrationOptions['onEnd']
  readonly #pieceBytes: number
  #state: HydrationState
  #rate: number
  #share: number
  #error: Error | undefined
  /** Where the next piece is looked for. */
  #cursor = 0
  /** The running loop, until it ends. */
  #loop: Promise<void> | undefined
  /** Ends a wait between pieces early (pause, a new rate). */
  #wake: (() => void) | undefined
  /** (time, bytes copied so far) samples, oldest first. */
  readonly #samples: [number, number][] = []
  #copied = 0

  constructor(engine: Engine, { rate = 0, share = DEFAULT_SHARE, onEnd, pieceBytes = PIECE_BYTES }: HydrationOptions = {}) {
    assert(share > 0 && share <= 1 && rate >= 0 && pieceBytes % engine.sectorSize === 0, 'bad hydration options')
    this.#engine = engine
    this.#rate = rate
    this.#share = share
    this.#onEnd = onEnd
    this.#pieceBytes = pieceBytes
    this.#state = engine.roBytes === 0 ? 'done' : 'off'
  }

  /** 'done' until started again, even after a revert put sectors back on RO (status shows them as remaining). */
  get state(): HydrationState {
    return this.#state
  }

  /** Starts or resumes the copy (after a failure: retries it; after a revert that put sectors back on RO: copies them again). */
  start(): void {
    if (this.#state === 'running' || (this.#state === 'done' && this.#engine.roBytes === 0)) return
    this.#state = 'running'
    this.#error = undefined
    this.#loop ??= this.#run().finally(() => {
      this.#loop = undefined
    })
  }

  /** Stops after the piece being copied, with the progress made durable. */
  async pause(): Promise<void> {
    if (this.#state === 'running') this.#state = 'paused'
    this.#wake?.()
    await this.#loop
  }

  /** Ends the copy for good (the device stops): as pause, and start() is not expected again. */
  stop(): Promise<void> {
    return this.pause()
  }

  setRate(bytesPerSecond: number): void {
    this.#rate = bytesPerSecond
    this.#wake?.()
  }

  setShare(share: number): void {
    assert(share > 0 && share <= 1, `bad share ${share}`)
    this.#share = share
    this.#wake?.()
  }

  status(): HydrationStatus {
    const stats = this.#engine.stats()
    return {
      state: this.#state,
      copiedBytes: stats.copiedBytes,
      remainingBytes: this.#engine.roBytes,
      rateBytesPerSecond: this.#state === 'running' ? Math.round(this.#measuredRate()) : 0,
      rateLimit: this.#rate,
      share: this.#share,
      ...(this.#error ? { error: this.#error.message } : {}),
    }
  }

  #measuredRate(): number {
    const first = this.#samples[0]
    const last = this.#samples.at(-1)
    if (!first || !last || last[0] - first[0] < 500) return 0
    return ((last[1] - first[1]) * 1000) / (last[0] - first[0])
  }

  #sample(): void {
    const t = performance.now()
    this.#samples.push([t, this.#copied])
    while (this.#samples.length > 2 && t - this.#samples[0]![0] > RATE_WINDOW_MS) this.#samples.shift()
  }

  async #run(): Promise<void> {
    const buf = Buffer.allocUnsafe(this.#pieceBytes)
    let unsaved = 0
    let saved = performance.now()
    let rateStart = performance.now()
    let rateBytes = 0
    let rateSet = this.#rate
    this.#samples.length = 0
    this.#sample()
    try {
      while (this.#state === 'running') {
        let piece = this.#engine.nextOnRo(this.#cursor, this.#pieceBytes)
        // Behind the cursor only a revert or commit puts sectors back on RO: look once more from the start.
        if (!piece && this.#cursor > 0) piece = this.#engine.nextOnRo((this.#cursor = 0), this.#pieceBytes)
        if (!piece) {
          await this.#engine.saveProgress()
          this.#state = 'done'
          this.#onEnd?.('done')
          return
        }
        const requests = this.#engine.clientRequests
        const started = performance.now()
        const n = await this.#engine.copyFromRo(piece.offset, piece.length, buf)
        const took = performance.now() - started
        this.#cursor = piece.offset + piece.length
        this.#copied += n
        unsaved += n
        this.#sample()
        if (unsaved >= SAVE_BYTES || (unsaved > 0 && performance.now() - saved >= SAVE_MS)) {
          await this.#engine.saveProgress()
          unsaved = 0
          saved = performance.now()
        }
        if (rateSet !== this.#rate) {
          rateSet = this.#rate
          rateStart = performance.now()
          rateBytes = 0
        }
        rateBytes += n
        let wait = 0
        if (this.#engine.clientRequests !== requests) wait = (took * (1 - this.#share)) / this.#share
        if (this.#rate > 0) wait = Math.max(wait, (rateBytes * 1000) / this.#rate - (performance.now() - rateStart))
        if (wait > 0) await this.#sleep(wait)
      }
      await this.#engine.saveProgress()
    } catch (e) {
      this.#error = e instanceof Error ? e : new Error(String(e))
      this.#state = 'failed'
      // What was copied before the failure is kept: a failed save only loses progress.
      await this.#engine.saveProgress().catch(() => undefined)
      this.#onEnd?.('failed', this.#error)
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise<void>(resolve => {
      const timer = setTimeout(done, ms)
      function done(): void {
        clearTimeout(timer)
        resolve()
      }
      this.#wake = done
    }).finally(() => {
      this.#wake = undefined
    })
  }
}
