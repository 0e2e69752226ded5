// The engine: a read-only device (RO) made writable by a read-write device
// (RW) of at least the same size. A sector reads from RO until it has been
// written; from then on it reads from RW. It alone reads and writes RO and
// RW and keeps the map of written sectors with its journal: front ends (NBD,
// GEOM Gate) and the lifecycle jobs (diff, revert, commit, export) call it
// and nothing below it.
//
// Requests may be any byte range inside the device: an unaligned write or
// zero-write reads the partial sectors at its edges first (read-modify-write)
// so that every sector on RW is whole. Front ends that promise alignment
// (GEOM, NBD clients honouring the advertised block size) never take that
// path.
//
// TRIM and WRITE_ZEROES are the same operation here: the range is marked
// written and made zero on RW (a punched hole where RW allows it). A trimmed
// range therefore reads back as zeros, never as RO's old data, and RO is
// untouched.
//
// Hydration (hydration.ts) copies RO's sectors to RW through copyFromRo:
// a copy enters the in-flight list like a read, so a client write to its
// range waits for it, and one that came first is seen by it; the map then
// marks copied only what is still on RO. A copied sector reads the same from
// either device and is not a change (sector-states.ts). Once every sector is
// on RW, releaseRo lets RO go.
//
// Revert and commit change what the whole device shows, so they hold it
// alone (exclusive) and empty the map through the journal before RW's data
// goes: a crash part-way leaves a device that reads as RO, or one a second
// commit finishes, never one that reads holes.
import assert from 'node:assert/strict'
import type { BlockIo } from '../devices/block-device.js'
import { InFlightList, type InFlight } from './in-flight.js'
import { RowrError } from '../errors.js'
import { DeviceIoError, IoErrors, type IoOp } from './io-errors.js'
import type { SectorMap } from './sector-map.js'
import { SectorStates } from './sector-states.js'

/**
 * Keeps the map durable (lib/persist/map-file.ts); without one the map lives
 * in memory only.
 */
export interface MapJournal {
  /** Sectors just marked written, after their data reached RW. */
  marked(start: number, count: number): void
  /** Sectors just marked copied from RO, after their data reached RW. */
  copied(start: number, count: number): void
  /** Whether copied sectors can be kept (a map of format 3). */
  readonly recordsCopies: boolean
  /** Makes the map durable as it stands, RW's data first (by calling syncRw). */
  commit(syncRw: () => Promise<void>): Promise<void>
  /** Empties the map durably, in one step (revert). */
  clear(): Promise<void>
  /** Records durably that a commit into RO starts: RO's content changes from here on. */
  startCommit(): Promise<void>
  /** Empties the map durably once a commit has written everything into `ro`, RO opened for writing. */
  finishCommit(ro: BlockIo): Promise<void>
}

interface EngineOptions {
  readonly ro: BlockIo
  readonly rw: BlockIo
  /** The combined device's size in bytes: a multiple of sectorSize. */
  readonly size: number
  readonly sectorSize: number
  /** A map to resume from (filled by a MapFile); a new empty one by default. */
  readonly map?: SectorStates
  readonly journal?: MapJournal
}

export interface EngineStats {
  /** Read requests, and the bytes they returned from each device. */
  reads: number
  readBytesFromRo: number
  readBytesFromRw: number
  /** Reads that had to be split into more than one run. */
  splitReads: number
  writes: number
  writeBytes: number
  /** Writes or zero-writes that needed a read-modify-write of an edge sector. */
  partialSectorWrites: number
  zeroes: number
  zeroBytes: number
  flushes: number
  caches: number
  /** Requests that waited for an overlapping request. */
  overlapWaits: number
  /** RW writes run on the event loop, and those that stalled it (see inline-writes.ts). */
  inlineWrites: number
  writeStalls: number
  /** Sectors written by clients, and their bytes. */
  writtenSectors: number
  writtenBytes: number
  /** Bytes copied from RO to RW and not written since (hydration, copy-on-read). */
  copiedBytes: number
  /** Copies made when a read found RO data, with copy-on-read on. */
  copiesOnRead: number
  /** Memory used by the sector map, bytes. */
  mapBytes: number
}

interface Extent {
  readonly length: number
  /** True when the range is served from RW. */
  readonly written: boolean
}

/** A range of written sectors, in bytes. */
export interface WrittenRange {
  readonly offset: number
  readonly length: number
}

/**
 * Called by a long job (commit) before each chunk it copies and once when
 * all are copied, with the bytes done and the total. It may throw to stop
 * the job before the next chunk: every chunk boundary is a safe point.
 */
type JobStep = (done: number, total: number) => void

/** What revert or commit took off the map: its bytes, and whether RW's space was given back. */
interface Emptied {
  readonly bytes: number
  readonly released: boolean
}

/**
 * Reads larger than this go to the thread pool even when cached: there the
 * copy out of the page cache runs beside the event loop, which meanwhile
 * sends earlier replies, and for large reads that overlap is worth more than
 * the hand-off to the pool costs; for small ones the hand-off dominates.
 * The threshold was measured (bench/results/design-figures.md).
 */
const INLINE_READ_MAX = 8 * 1024

/** Scratch reads for CACHE requests go in pieces this large. */
const CACHE_CHUNK = 1 << 20
/** Bytes copied per step of commit. */
const COMMIT_CHUNK = 1 << 20

/** RO once released: nothing may read it. */
const RELEASED: BlockIo = {
  path: '(released)',
  size: Number.MAX_SAFE_INTEGER,
  read: () => Promise.reject(new Error('RO was released')),
  readNow: () => false,
  write: () => Promise.reject(new Error('RO was released')),
  datasync: () => Promise.reject(new Error('RO was released')),
  zero: () => Promise.reject(new Error('RO was released')),
  release: () => Promise.resolve(false),
  counters: () => ({ inlineWrites: 0, writeStalls: 0 }),
}

export class Engine {
  readonly size: number
  readonly sectorSize: number
  #ro: BlockIo
  readonly #rw: BlockIo
  readonly #states: SectorStates
  /** The sectors on RW (#states.onRw): what reads ask. */
  readonly #map: SectorMap
  /** Copy what a read finds on RO to RW (--copy-on-read). */
  copyOnRead = false
  readonly #inFlight = new InFlightList()
  /** I/O errors of RO and RW, until reset(): the device's health. */
  readonly errors = new IoErrors()
  readonly #stats = this.#zeroStats()
  /** Counters kept outside the engine, as they stood at the last reset(). */
  #since = { overlapWaits: 0, inlineWrites: 0, writeStalls: 0 }

  #zeroStats() {
    return {
      reads: 0,
      readBytesFromRo: 0,
      readBytesFromRw: 0,
      splitReads: 0,
      writes: 0,
      writeBytes: 0,
      partialSectorWrites: 0,
      zeroes: 0,
      zeroBytes: 0,
      flushes: 0,
      caches: 0,
      copiesOnRead: 0,
    }
  }

  readonly #journal: MapJournal | undefined
  /** The last call to make the map durable: revert and commit wait for it before they empty the map. */
  #durable: Promise<void> = Promise.resolve()

  /** The devices and their geometry were checked when they were opened (device-pair.ts); here they are facts. */
  constructor({ ro, rw, size, sectorSize, map, journal }: EngineOptions) {
    assert(Number.isSafeInteger(size) && size >= 0 && size % sectorSize === 0, `size ${size} is not a multiple of ${sectorSize}`)
    assert(ro.size >= size && rw.size >= size, `a device is smaller than the ${size}-byte engine`)
    this.#ro = ro
    this.#rw = rw
    this.size = size
    this.sectorSize = sectorSize
    this.#states = map ?? new SectorStates(size / sectorSize)
    this.#map = this.#states.onRw
    assert(this.#map.sectors === size / sectorSize, 'the map is for a device of another size')
    this.#journal = journal
  }

  /** Whether a request lies inside the device. */
  #inside(offset: number, length: number): boolean {
    return Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.size
  }

  /**
   * Front ends validate every request; one outside the device here is a bug.
   * The message is built only on failure: this runs for every request.
   */
  #check(offset: number, length: number): void {
    if (!this.#inside(offset, length)) assert.fail(`request ${offset}+${length} is outside the ${this.size}-byte device`)
  }

  #alignDown(n: number): number {
    return n - (n % this.sectorSize)
  }

  #alignUp(n: number): number {
    return this.#alignDown(n + this.sectorSize - 1)
  }

  /**
   * Fills `buf` with the device's bytes from `offset`: true when that is
   * done already, or a promise that settles when it is. A read is answered
   * at once when it is small, no write overlapping it is in flight and every
   * byte is in the page cache of the device that holds it (readNow); nothing
   * on that path can block, so a cold device never stalls the caller, and it
   * allocates nothing. Never throws: a failure rejects the promise.
   */
  read(buf: Buffer, offset: number): true | Promise<void> {
    if (buf.length <= INLINE_READ_MAX && this.#inside(offset, buf.length) && this.#readNow(buf, offset)) return true
    return this.#readLater(buf, offset)
  }

  /** The fast path of read(): false, having counted nothing, when any run cannot be read now. */
  #readNow(buf: Buffer, offset: number): boolean {
    const end = offset + buf.length
    if (this.#inFlight.conflicts(offset, end, false)) return false
    let fromRo = 0
    let fromRw = 0
    let runs = 0
    for (let pos = offset; pos < end; runs++) {
      const written = this.#map.isWritten(Math.floor(pos / this.sectorSize))
      const runEnd = this.#runEnd(pos, end)
      if (!(written ? this.#rw : this.#ro).readNow(buf, pos - offset, runEnd - pos, pos)) return false
      if (written) fromRw += runEnd - pos
      else fromRo += runEnd - pos
      pos = runEnd
    }
    this.#stats.reads++
    this.#stats.readBytesFromRo += fromRo
    this.#stats.readBytesFromRw += fromRw
    if (runs > 1) this.#stats.splitReads++
    if (fromRo !== 0 && this.copyOnRead) this.#copyOnReadLater(offset, end)
    return true
  }

  async #readLater(buf: Buffer, offset: number): Promise<void> {
    this.#check(offset, buf.length)
    const request = await this.#enter(offset, offset + buf.length, false)
    try {
      this.#stats.reads++
      const fromRo = this.#stats.readBytesFromRo
      const read = this.#readRuns(buf, 0, buf.length, offset)
      if (this.copyOnRead && this.#stats.readBytesFromRo !== fromRo) this.#copyOnReadLater(offset, offset + buf.length)
      await read
    } catch (e) {
      throw this.#readFailed(offset, e)
    } finally {
      this.#inFlight.leave(request)
    }
  }

  async write(offset: number, data: Buffer, { fua = false } = {}): Promise<void> {
    this.#check(offset, data.length)
    if (data.length === 0) return
    const start = this.#alignDown(offset)
    const end = this.#alignUp(offset + data.length)
    const request = await this.#enter(start, end, true)
    try {
      await this.#writeSpan(offset, data)
      this.#mark(start, end)
      if (fua) await this.#makeDurable()
      this.#stats.writes++
      this.#stats.writeBytes += data.length
    } finally {
      this.#inFlight.leave(request)
    }
  }

  /**
   * Makes the range read back as zeros (TRIM and WRITE_ZEROES): a punched
   * hole where RW allows, unless `allocate` asks for zeros that keep their
   * space (NBD's NO_HOLE).
   */
  async zero(offset: number, length: number, { fua = false, allocate = false } = {}): Promise<void> {
    this.#check(offset, length)
    if (length === 0) return
    const end = offset + length
    const start = this.#alignDown(offset)
    const alignedEnd = this.#alignUp(end)
    const innerStart = this.#alignUp(offset)
    const innerEnd = this.#alignDown(end)
    const request = await this.#enter(start, alignedEnd, true)
    try {
      if (innerStart >= innerEnd) {
        // No whole sector inside: at most two partial ones.
        await this.#writeZeroBytes(offset, length)
      } else {
        if (offset < innerStart) await this.#writeZeroBytes(offset, innerStart - offset)
        if (innerEnd < end) await this.#writeZeroBytes(innerEnd, end - innerEnd)
        try {
          await this.#rw.zero(innerStart, innerEnd - innerStart, { allocate })
        } catch (e) {
          throw this.#failed('rw', 'write', innerStart, e)
        }
      }
      this.#mark(start, alignedEnd)
      if (fua) await this.#makeDurable()
      this.#stats.zeroes++
      this.#stats.zeroBytes += length
    } finally {
      this.#inFlight.leave(request)
    }
  }

  /**
   * Resolves once no request is in flight: before the devices are closed,
   * so that no read or write is left running on a closed file descriptor
   * (whose number the process might already have reused).
   */
  drain(): Promise<void> {
    return this.#inFlight.idle()
  }

  /** Makes every write completed so far durable, and the map with it. */
  async flush(): Promise<void> {
    this.#stats.flushes++
    await this.#makeDurable()
  }

  /**
   * Runs `job` with the whole device to itself: every request in flight
   * finishes first, and new ones wait until it is done.
   */
  async #exclusive<T>(job: () => Promise<T>): Promise<T> {
    const request = await this.#enter(0, this.size, true)
    try {
      return await job()
    } finally {
      this.#inFlight.leave(request)
    }
  }

  /** The ranges clients wrote, in order: what diff shows and commit copies. */
  writtenRanges(): WrittenRange[] {
    const { sectorSize } = this
    return Array.from(this.#states.written.writtenRuns(), ([first, count]) => ({ offset: first * sectorSize, length: count * sectorSize }))
  }

  /** Refuses a job that reads or writes RO once RO is released. */
  requireRo(job: string): void {
    if (this.roHeld) return
    throw new RowrError(
      'ERORELEASED',
      `${job} needs RO, which was released when the device was fully hydrated: RW alone holds the device now`,
    )
  }

  /** Forgets every write (and every copy): the device reads as RO again. */
  revert(): Promise<Emptied> {
    this.requireRo('revert')
    return this.#exclusive(async () => {
      const bytes = this.#states.writtenSectors * this.sectorSize
      return { bytes, released: await this.#empty(() => this.#journal?.clear()) }
    })
  }

  /**
   * Folds the written sectors into RO, through `ro`: RO opened for writing
   * by the caller, who made every check that takes. Then empties the map.
   * The device shows the same data throughout: requests wait while it runs.
   * Stopped by `step`, the map still describes RW, which still holds
   * everything; running commit again finishes it.
   */
  commitInto(ro: BlockIo, step: JobStep): Promise<Emptied> {
    assert(ro.size >= this.size, `${ro.path} is smaller than the ${this.size}-byte engine`)
    this.requireRo('commit')
    return this.#exclusive(async () => {
      await this.flush()
      await this.#journal?.startCommit()
      const ranges = this.writtenRanges()
      const total = ranges.reduce((sum, r) => sum + r.length, 0)
      const buf = Buffer.allocUnsafe(COMMIT_CHUNK)
      let done = 0
      for (const r of ranges) {
        for (let pos = r.offset; pos < r.offset + r.length; pos += COMMIT_CHUNK) {
          step(done, total)
          const n = Math.min(COMMIT_CHUNK, r.offset + r.length - pos)
          await this.#rw.read(buf, 0, n, pos)
          await ro.write(buf, 0, n, pos)
          done += n
        }
      }
      if (total > 0) step(done, total)
      await ro.datasync()
      return { bytes: total, released: await this.#empty(() => this.#journal?.finishCommit(ro)) }
    })
  }

  /**
   * Empties the map, on disk by `clearJournal` first and then in memory,
   * then gives RW's space back; returns whether it could. A round of the
   * journal still running or queued (a FLUSH) holds the map as it was: it
   * ends first, or it would write old bits into the emptied map.
   */
  async #empty(clearJournal: () => Promise<void> | undefined): Promise<boolean> {
    await this.#durable.catch(() => undefined)
    await clearJournal()
    this.#states.clear()
    return this.#rw.release(0, this.size)
  }

  /** Marks the sectors of the byte range [start, end), both sector-aligned. */
  #mark(start: number, end: number): void {
    const first = start / this.sectorSize
    const count = (end - start) / this.sectorSize
    if (this.#states.markWritten(first, count) > 0) this.#journal?.marked(first, count)
  }

  #makeDurable(): Promise<void> {
    this.#durable = this.#journal ? this.#journal.commit(this.#syncRw) : this.#syncRw()
    return this.#durable
  }

  readonly #syncRw = async (): Promise<void> => {
    try {
      await this.#rw.datasync()
    } catch (e) {
      throw this.#failed('rw', 'flush', 0, e)
    }
  }

  /** Counts a failure of RO or RW and names it; the caller throws what this returns. */
  #failed(device: 'ro' | 'rw', op: IoOp, offset: number, e: unknown): DeviceIoError {
    const error = new DeviceIoError(device, device === 'ro' ? this.#ro.path : this.#rw.path, op, offset, e)
    this.errors.record(error)
    return error
  }

  /**
   * A read from `offset` failed. A read of several runs names its device
   * itself (#readRuns); a read of one run is named here, off the hot path:
   * the caller still holds the range, so the map says which device it was.
   */
  #readFailed(offset: number, e: unknown): unknown {
    if (e instanceof DeviceIoError || e instanceof assert.AssertionError) return e
    return this.#failed(this.#map.isWritten(Math.floor(offset / this.sectorSize)) ? 'rw' : 'ro', 'read', offset, e)
  }

  /** False once RO is released (releaseRo): every sector is on RW. */
  get roHeld(): boolean {
    return this.#ro !== RELEASED
  }

  /** Whether copies from RO can be recorded: not in a map kept in a format without room for them. */
  get canCopy(): boolean {
    return this.#journal?.recordsCopies ?? true
  }

  /** Bytes still served from RO. */
  get roBytes(): number {
    return this.#states.roSectors * this.sectorSize
  }

  /** Client requests so far (reads, writes, zero-writes, flushes): how hydration sees the foreground. */
  get clientRequests(): number {
    const s = this.#stats
    return s.reads + s.writes + s.zeroes + s.flushes
  }

  /**
   * The first range of at most `max` bytes from `offset` (sector-aligned)
   * that is still served from RO, or null when none is left after `offset`.
   * A hint: the copy itself asks the map again.
   */
  nextOnRo(offset: number, max: number): WrittenRange | null {
    for (let sector = offset / this.sectorSize; sector < this.#map.sectors; ) {
      const n = this.#map.runLength(sector, this.#map.sectors)
      if (!this.#map.isWritten(sector)) {
        return { offset: sector * this.sectorSize, length: Math.min(n * this.sectorSize, max) }
      }
      sector += n
    }
    return null
  }

  /**
   * Copies the sectors of [offset, offset+length) that are still on RO to
   * RW (holes of a sparse RO as zeros on RW) and marks them copied; returns
   * their bytes. `buf` holds at least `length` bytes. Entered like a read:
   * a write that came first is done, and marked written, before the map is
   * asked; one that comes later waits until the copy is marked.
   */
  async copyFromRo(offset: number, length: number, buf: Buffer): Promise<number> {
    assert(offset % this.sectorSize === 0 && length % this.sectorSize === 0 && buf.length >= length)
    this.#check(offset, length)
    const request = await this.#enter(offset, offset + length, false)
    try {
      const runs: number[] = []
      this.#forEachRun(offset, length, (onRw, pos, n) => {
        if (!onRw) runs.push(pos, n)
        return true
      })
      let copied = 0
      for (let i = 0; i < runs.length; i += 2) {
        await this.#copyRun(runs[i]!, runs[i + 1]!, buf.subarray(runs[i]! - offset))
        copied += runs[i + 1]!
      }
      for (let i = 0; i < runs.length; i += 2) {
        const first = runs[i]! / this.sectorSize
        const count = runs[i + 1]! / this.sectorSize
        if (this.#states.markCopied(first, count) > 0) this.#journal?.copied(first, count)
      }
      return copied
    } finally {
      this.#inFlight.leave(request)
    }
  }

  /** Copies one run of RO to RW, extent by extent: RO's data read and written, RO's holes made zero on RW. */
  async #copyRun(offset: number, length: number, buf: Buffer): Promise<void> {
    const end = offset + length
    for (let pos = offset; pos < end; ) {
      const extent = this.#ro.extentAt?.(pos) ?? { data: true, end }
      // A file's extents need not fall on sector boundaries: only whole sectors of hole become zeros.
      const holeEnd = extent.data ? pos : Math.min(end, this.#alignDown(extent.end))
      if (holeEnd > pos) {
        try {
          await this.#rw.zero(pos, holeEnd - pos)
        } catch (e) {
          throw this.#failed('rw', 'write', pos, e)
        }
        pos = holeEnd
        continue
      }
      const n = Math.min(end, Math.max(this.#alignUp(extent.end), pos + this.sectorSize)) - pos
      const at = pos - offset
      try {
        await this.#ro.read(buf, at, n, pos)
      } catch (e) {
        throw this.#failed('ro', 'read', pos, e)
      }
      try {
        await this.#rw.write(buf, at, n, pos)
      } catch (e) {
        throw this.#failed('rw', 'write', pos, e)
      }
      pos += n
    }
  }

  /** Copy-on-read: copies the sectors of a read that came from RO, in the background (a failure counts in the health). */
  #copyOnReadLater(offset: number, end: number): void {
    const start = this.#alignDown(offset)
    const length = this.#alignUp(end) - start
    this.#stats.copiesOnRead++
    this.copyFromRo(start, length, Buffer.allocUnsafe(length)).catch(() => undefined)
  }

  /** Makes the copies done so far durable, with the map (hydration's progress). */
  saveProgress(): Promise<void> {
    return this.#makeDurable()
  }

  /**
   * Lets RO go once every sector is on RW: waits for every request (a read
   * of RO may still be running), then never touches RO again; the caller
   * closes it. False, and RO kept, when a sector is back on RO by then (a
   * revert that came first).
   */
  releaseRo(): Promise<boolean> {
    return this.#exclusive(async () => {
      if (!this.#states.hydrated) return false
      this.#ro = RELEASED
      return true
    })
  }

  /** Pulls the range into the page cache of whichever device serves it. */
  async cache(offset: number, length: number): Promise<void> {
    this.#check(offset, length)
    this.#stats.caches++
    const scratch = Buffer.allocUnsafe(Math.min(length, CACHE_CHUNK))
    for (let pos = offset; pos < offset + length; pos += scratch.length) {
      const n = Math.min(scratch.length, offset + length - pos)
      const request = await this.#enter(pos, pos + n, false)
      try {
        await this.#readRuns(scratch, 0, n, pos)
      } catch (e) {
        throw this.#readFailed(pos, e)
      } finally {
        this.#inFlight.leave(request)
      }
    }
  }

  /**
   * The ranges from `offset` that come from RO or RW, at most `max` of them;
   * they cover [offset, offset+length) unless `max` cut the list short.
   */
  extents(offset: number, length: number, max: number): Extent[] {
    this.#check(offset, length)
    const out: Extent[] = []
    this.#forEachRun(offset, length, (written, _pos, n) => {
      out.push({ length: n, written })
      return out.length < max
    })
    return out
  }

  stats(): EngineStats {
    const outside = this.#outsideCounts()
    return {
      ...this.#stats,
      overlapWaits: outside.overlapWaits - this.#since.overlapWaits,
      inlineWrites: outside.inlineWrites - this.#since.inlineWrites,
      writeStalls: outside.writeStalls - this.#since.writeStalls,
      writtenSectors: this.#states.writtenSectors,
      writtenBytes: this.#states.writtenSectors * this.sectorSize,
      copiedBytes: this.#states.copiedSectors * this.sectorSize,
      mapBytes: this.#states.memoryBytes,
    }
  }

  #outsideCounts() {
    const { inlineWrites, writeStalls } = this.#rw.counters()
    return { overlapWaits: this.#inFlight.waits, inlineWrites, writeStalls }
  }

  /**
   * Clears the statistics and the error counts (geom-rowr reset), as
   * gunion's reset clears its statistics. What is written stays: that is
   * the map, not a statistic.
   */
  reset(): void {
    Object.assign(this.#stats, this.#zeroStats())
    this.#since = this.#outsideCounts()
    this.errors.reset()
  }

  #enter(start: number, end: number, exclusive: boolean): InFlight | Promise<InFlight> {
    return this.#inFlight.enter(start, end, exclusive)
  }

  /**
   * Calls `visit` for each run of [offset, offset+length) that lives on one
   * device, in order, until it returns false; true if every run was visited.
   */
  #forEachRun(offset: number, length: number, visit: (written: boolean, pos: number, n: number) => boolean): boolean {
    const end = offset + length
    for (let pos = offset; pos < end; ) {
      const runEnd = this.#runEnd(pos, end)
      if (!visit(this.#map.isWritten(Math.floor(pos / this.sectorSize)), pos, runEnd - pos)) return false
      pos = runEnd
    }
    return true
  }

  /** Where the run that holds byte `pos` ends (its sectors all on one device), at most at `end`. */
  #runEnd(pos: number, end: number): number {
    const sector = Math.floor(pos / this.sectorSize)
    return Math.min(end, (sector + this.#map.runLength(sector, Math.ceil(end / this.sectorSize))) * this.sectorSize)
  }

  /** Reads a range run by run, each run from the device that holds it. */
  #readRuns(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    // One run, the common case, goes out as it is: its caller names a
    // failure (#readFailed). Several runs are each named here, as
    // Promise.all would not say which one failed.
    let first: Promise<void> | undefined
    let firstPos = 0
    const reads: Promise<void>[] = []
    this.#forEachRun(offset, length, (written, pos, n) => {
      if (written) this.#stats.readBytesFromRw += n
      else this.#stats.readBytesFromRo += n
      const read = (written ? this.#rw : this.#ro).read(buf, bufOffset + pos - offset, n, pos)
      if (first === undefined) {
        first = read
        firstPos = pos
      } else {
        if (reads.length === 0) reads.push(this.#named(first, firstPos))
        reads.push(this.#named(read, pos))
      }
      return true
    })
    if (reads.length === 0) return first!
    this.#stats.splitReads++
    return Promise.all(reads).then(() => undefined)
  }

  #named(read: Promise<void>, pos: number): Promise<void> {
    return read.catch((e: unknown) => {
      throw this.#readFailed(pos, e)
    })
  }

  /**
   * Writes bytes to RW in whole sectors: the parts of the edge sectors that
   * `data` does not cover are read first, from wherever they live now.
   * The caller holds the range exclusively.
   */
  async #writeSpan(offset: number, data: Buffer): Promise<void> {
    const end = offset + data.length
    if (offset % this.sectorSize === 0 && end % this.sectorSize === 0) {
      try {
        await this.#rw.write(data, 0, data.length, offset)
      } catch (e) {
        throw this.#failed('rw', 'write', offset, e)
      }
      return
    }
    this.#stats.partialSectorWrites++
    const start = this.#alignDown(offset)
    const alignedEnd = this.#alignUp(end)
    const whole = Buffer.allocUnsafe(alignedEnd - start)
    if (alignedEnd - start === this.sectorSize) {
      await this.#readEdge(whole, 0, start)
    } else {
      if (start < offset) await this.#readEdge(whole, 0, start)
      if (end < alignedEnd) {
        const last = alignedEnd - this.sectorSize
        await this.#readEdge(whole, last - start, last)
      }
    }
    data.copy(whole, offset - start)
    try {
      await this.#rw.write(whole, 0, whole.length, start)
    } catch (e) {
      throw this.#failed('rw', 'write', start, e)
    }
  }

  /** Reads the edge sector at `offset` for a read-modify-write. */
  async #readEdge(whole: Buffer, at: number, offset: number): Promise<void> {
    try {
      await this.#readRuns(whole, at, this.sectorSize, offset)
    } catch (e) {
      throw this.#readFailed(offset, e)
    }
  }

  #writeZeroBytes(offset: number, length: number): Promise<void> {
    return this.#writeSpan(offset, Buffer.alloc(length))
  }
}
