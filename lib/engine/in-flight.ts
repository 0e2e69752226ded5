// The requests the engine is working on, in order of arrival, so that
// overlapping requests take turns (as g_union's in-flight list): a request
// waits for every earlier request whose byte range overlaps its own, unless
// both only read. Waiting in arrival order means a read that arrives after a
// write was acknowledged sees that write, and no sector is ever read while a
// write to it is half done.
import assert from 'node:assert/strict'

export interface InFlight {
  readonly start: number
  readonly end: number
  readonly exclusive: boolean
}

class Entry implements InFlight {
  readonly start: number
  readonly end: number
  readonly exclusive: boolean
  /** Requests that wait for this one, each woken when its last blocker ends. */
  waiters: Entry[] | undefined
  blockers = 0
  wake: (() => void) | undefined
  constructor(start: number, end: number, exclusive: boolean) {
    this.start = start
    this.end = end
    this.exclusive = exclusive
  }
}

export class InFlightList {
  #entries: Entry[] = []
  #idle: (() => void)[] = []
  /** Requests that had to wait for an overlapping one. */
  waits = 0

  get size(): number {
    return this.#entries.length
  }

  /**
   * Enters a request for bytes [start, end). Resolves at once when nothing
   * earlier overlaps it in a conflicting way.
   */
  enter(start: number, end: number, exclusive: boolean): InFlight | Promise<InFlight> {
    const entry = new Entry(start, end, exclusive)
    for (const other of this.#entries) {
      if (other.start < end && start < other.end && (exclusive || other.exclusive)) {
        ;(other.waiters ??= []).push(entry)
        entry.blockers++
      }
    }
    this.#entries.push(entry)
    if (entry.blockers === 0) return entry
    this.waits++
    return new Promise(resolve => {
      entry.wake = () => resolve(entry)
    })
  }

  /** Whether a request for [start, end) would have to wait. On the read fast path: it allocates nothing. */
  conflicts(start: number, end: number, exclusive: boolean): boolean {
    const entries = this.#entries
    for (let i = 0; i < entries.length; i++) {
      const o = entries[i]!
      if (o.start < end && start < o.end && (exclusive || o.exclusive)) return true
    }
    return false
  }

  /** Ends a request and lets go of whatever was waiting for it alone. */
  leave(request: InFlight): void {
    const entry = request as Entry
    const i = this.#entries.indexOf(entry)
    assert(i >= 0, 'leaving a request that is not in flight')
    this.#entries.splice(i, 1)
    for (const waiter of entry.waiters ?? []) {
      if (--waiter.blockers === 0) waiter.wake?.()
    }
    if (this.#entries.length === 0) for (const resolve of this.#idle.splice(0)) resolve()
  }

  /** Resolves once nothing is in flight. */
  idle(): Promise<void> {
    if (this.#entries.length === 0) return Promise.resolve()
    return new Promise(resolve => this.#idle.push(resolve))
  }
}
