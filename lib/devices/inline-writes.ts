// When a small write may run on the calling (event-loop) thread instead of
// going through the libuv thread pool.
//
// A thread-pool write costs two thread hand-offs and a wake-up of the event
// loop, several times a small pwrite into the page cache itself, so small
// random writes ran much faster inline than through the pool
// (bench/results/design-figures.md). But a write into the
// page cache can block: dirty-page throttling pauses a writer for up to
// 200 ms, reclaim and journal waits for milliseconds, and on the event loop
// that would stall every connection. So each inline write is timed, and one
// that took longer than STALL_NS sends writes to the pool for a while;
// stalls that keep coming back double that while, so that a device under
// sustained pressure costs a stalled event loop rarely, not every second.

/** Writes up to this many bytes may go inline. */
export const INLINE_WRITE_MAX = 64 * 1024

/** An inline write slower than this is a stall. */
const STALL_NS = 2_000_000n

const FIRST_BACKOFF_MS = 1000
const MAX_BACKOFF_MS = 64_000

interface Clock {
  /** Monotonic nanoseconds. */
  nanos(): bigint
}

const processClock: Clock = { nanos: () => process.hrtime.bigint() }

export class InlineWrites {
  readonly #clock: Clock
  /** Inline writes are allowed again from this time (ns); 0 when not paused. */
  #pausedUntil = 0n
  #backoffMs = 0
  #lastStall: bigint | undefined
  /** Counters, for tests and status. */
  inline = 0
  stalls = 0

  constructor(clock: Clock = processClock) {
    this.#clock = clock
  }

  /** Whether a write of `length` bytes may run inline now. */
  allows(length: number): boolean {
    if (length > INLINE_WRITE_MAX) return false
    // The clock is read only while a pause may still run.
    if (this.#pausedUntil === 0n) return true
    if (this.#clock.nanos() < this.#pausedUntil) return false
    this.#pausedUntil = 0n
    return true
  }

  /** Runs `write` inline, timing it; a stall pauses inline writes. */
  run(write: () => void): void {
    const start = this.#clock.nanos()
    try {
      write()
    } finally {
      const end = this.#clock.nanos()
      this.inline++
      if (end - start > STALL_NS) this.#stalled(end)
    }
  }

  #stalled(now: bigint): void {
    this.stalls++
    // A stall soon after the last pause ended means the pressure is still
    // there: wait twice as long. After a quiet spell, start small again.
    const recent = this.#lastStall !== undefined && now - this.#lastStall < BigInt(2 * MAX_BACKOFF_MS) * 1_000_000n
    this.#backoffMs = recent ? Math.min(this.#backoffMs * 2, MAX_BACKOFF_MS) : FIRST_BACKOFF_MS
    this.#lastStall = now
    this.#pausedUntil = now + BigInt(this.#backoffMs) * 1_000_000n
  }
}
