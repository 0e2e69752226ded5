// The daemon's log of I/O errors: a full RW fails every write that comes, so
// the first error of a kind (device, direction and errno) is logged at once
// and the rest at most once a minute, with how many were not logged.
import type { IoErrorEvent } from '../engine/io-errors.js'

const ERROR_LOG_INTERVAL_MS = 60_000

interface Kind {
  lastLogged: number
  /** Errors of this kind since it was last logged, and the latest of them. */
  suppressed: number
  latest: IoErrorEvent | undefined
  timer: NodeJS.Timeout | undefined
}

export class IoErrorLog {
  readonly #log: (message: string) => void
  readonly #name: string
  readonly #intervalMs: number
  readonly #kinds = new Map<string, Kind>()

  constructor(name: string, log: (message: string) => void, { intervalMs = ERROR_LOG_INTERVAL_MS } = {}) {
    this.#name = name
    this.#log = log
    this.#intervalMs = intervalMs
  }

  report(event: IoErrorEvent): void {
    const key = `${event.device} ${event.op} ${event.errno}`
    const now = Date.now()
    const kind = this.#kinds.get(key)
    if (kind === undefined) {
      this.#kinds.set(key, { lastLogged: now, suppressed: 0, latest: undefined, timer: undefined })
      this.#log(
        `${event.message}; ${this.#name} is degraded (geom-rowr status ${this.#name}) until geom-rowr reset ${this.#name}; ` +
          `further ${key} errors are logged at most once a minute`,
      )
      return
    }
    kind.suppressed++
    kind.latest = event
    if (kind.timer !== undefined) return
    const wait = kind.lastLogged + this.#intervalMs - now
    if (wait <= 0) this.#summarise(key, kind)
    else {
      kind.timer = setTimeout(() => this.#summarise(key, kind), wait)
      kind.timer.unref()
    }
  }

  #summarise(key: string, kind: Kind): void {
    kind.timer = undefined
    if (kind.suppressed === 0) return
    const latest = kind.latest!
    this.#log(`${kind.suppressed} more ${key} error(s) since the last report; the latest: ${latest.message}`)
    kind.lastLogged = Date.now()
    kind.suppressed = 0
    kind.latest = undefined
  }

  /** Forgets every kind (geom-rowr reset): the next error is logged at once. */
  reset(): void {
    this.close()
    this.#kinds.clear()
  }

  /** Logs what is still pending, and stops the timers. */
  close(): void {
    for (const [key, kind] of this.#kinds) {
      clearTimeout(kind.timer)
      this.#summarise(key, kind)
    }
  }
}
