// The device's health: I/O errors RO and RW returned to the engine, counted
// per device and direction, with the last one kept, until the user clears
// them (geom-rowr reset). A device with any error counted is degraded: a
// client got an error it cannot see the cause of (RW full, a bad sector).
import assert from 'node:assert/strict'
import { errnoCode } from '../errors.js'

type IoErrorKind = 'rwWrite' | 'rwRead' | 'roRead'
export type IoOp = 'read' | 'write' | 'flush'

interface LastIoError {
  /** The errno name the device returned, e.g. "ENOSPC"; "EIO" when it gave none. */
  readonly errno: string
  readonly device: 'ro' | 'rw'
  /** What failed: a read, a write (zero-writes included) or a flush of RW (counted as a write). */
  readonly op: IoOp
  /** Byte offset of the failed request on the device; 0 for a flush, which covers all of it. */
  readonly offset: number
  /** ISO time. */
  readonly at: string
}

export interface IoErrorCounts {
  readonly rwWrite: number
  readonly rwRead: number
  readonly roRead: number
  readonly last: LastIoError | null
}

export type Health = 'ok' | 'degraded'

/** An I/O error as the engine saw it, handed to the listener. */
export interface IoErrorEvent extends LastIoError {
  readonly kind: IoErrorKind
  readonly message: string
}

/**
 * An error of RO or RW as the engine passes it on: the device's own error
 * (its errno code kept, so front ends still answer ENOSPC or EIO) with the
 * device, the operation and the offset named.
 */
export class DeviceIoError extends Error {
  readonly code: string
  readonly device: 'ro' | 'rw'
  readonly op: IoOp
  readonly offset: number
  constructor(device: 'ro' | 'rw', path: string, op: IoOp, offset: number, cause: unknown) {
    const code = errnoCode(cause) ?? 'EIO'
    const what = op === 'flush' ? 'flush' : `${op} at byte ${offset}`
    super(`${device.toUpperCase()} ${path}: ${what} failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause })
    this.name = 'DeviceIoError'
    this.code = code
    this.device = device
    this.op = op
    this.offset = offset
  }
}

export class IoErrors {
  #rwWrite = 0
  #rwRead = 0
  #roRead = 0
  #last: LastIoError | null = null
  /** Told of every error as it is counted (the daemon's rate-limited log). */
  onError: ((event: IoErrorEvent) => void) | undefined

  /** Counts the error; only ever called on the error path. */
  record(e: DeviceIoError): void {
    // RO is opened read-only: the engine only ever reads it.
    assert(e.device === 'rw' || e.op === 'read', `${e.device} ${e.op}`)
    const kind: IoErrorKind = e.device === 'ro' ? 'roRead' : e.op === 'read' ? 'rwRead' : 'rwWrite'
    if (kind === 'rwWrite') this.#rwWrite++
    else if (kind === 'rwRead') this.#rwRead++
    else this.#roRead++
    const last = { errno: e.code, device: e.device, op: e.op, offset: e.offset, at: new Date().toISOString() }
    this.#last = last
    this.onError?.({ ...last, kind, message: e.message })
  }

  get health(): Health {
    return this.#last === null ? 'ok' : 'degraded'
  }

  counts(): IoErrorCounts {
    return { rwWrite: this.#rwWrite, rwRead: this.#rwRead, roRead: this.#roRead, last: this.#last }
  }

  reset(): void {
    this.#rwWrite = 0
    this.#rwRead = 0
    this.#roRead = 0
    this.#last = null
  }
}

/** The status line: "ok", or "degraded: rw write ENOSPC at offset N (time)" and how many. */
export const healthLine = (errors: IoErrorCounts): string => {
  const last = errors.last
  if (last === null) return 'ok'
  const total = errors.rwWrite + errors.rwRead + errors.roRead
  const where = last.op === 'flush' ? '' : ` at offset ${last.offset}`
  return `degraded: ${last.device} ${last.op} ${last.errno}${where} (${last.at}); ${total} I/O error(s) since the last reset`
}
