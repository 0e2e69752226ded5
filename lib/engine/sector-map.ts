// Which sectors have been written (and so live on RW): one bit per sector in
// a two-level bitmap.
//
// Memory: the top level is one slot per leaf; a leaf covers 65536 sectors
// (32 MiB at 512-byte sectors). A 1 TiB device of 512-byte sectors has 32768
// slots (256 KiB) and nothing else until written. A leaf starts as a short
// sorted list of written runs, so scattered writes cost a few bytes each
// rather than a whole bitmap; past RUNS_MAX runs it becomes 8 KiB of bits.
// A leaf that fills up is replaced by one shared FULL marker, so long
// sequential writes cost no leaf memory at all. The worst case (writes
// scattered so densely that every leaf needs its bitmap) is the flat bitmap:
// size / sectorSize / 8 bytes.
import assert from 'node:assert/strict'

const WORD_BITS = 32
const LEAF_WORDS = 2048
export const LEAF_SECTORS = LEAF_WORDS * WORD_BITS

class Leaf {
  readonly bits = new Uint32Array(LEAF_WORDS)
  count = 0
}

/** Written runs of a sparsely written leaf: sorted, disjoint, never touching. */
class RunLeaf {
  /** Run i covers sectors [starts[i], ends[i]) of the leaf. */
  readonly starts: number[] = []
  readonly ends: number[] = []
  count = 0
}

/** Beyond this many runs a leaf's run list would outgrow its bitmap. */
const RUNS_MAX = 256

/** Marks a leaf whose every sector is written. */
const FULL = 'full'
type Slot = Leaf | RunLeaf | typeof FULL | undefined

const popcount = (v: number): number => {
  v = v - ((v >>> 1) & 0x55555555)
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333)
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24
}

/** Index of the lowest set bit of a non-zero 32-bit value. */
const lowestBit = (v: number): number => 31 - Math.clz32(v & -v)

/** Bits [from, to) of a word set, 0 <= from < to <= 32. */
const wordMask = (from: number, to: number): number => (to - from === WORD_BITS ? 0xffffffff : (((1 << (to - from)) - 1) << from) >>> 0)

export class SectorMap {
  readonly sectors: number
  #slots: Slot[]
  #written = 0

  constructor(sectors: number) {
    assert(Number.isSafeInteger(sectors) && sectors >= 0, `bad sector count ${sectors}`)
    this.sectors = sectors
    this.#slots = new Array<Slot>(Math.ceil(sectors / LEAF_SECTORS)).fill(undefined)
  }

  /** Sectors written so far. */
  get writtenSectors(): number {
    return this.#written
  }

  /** Leaves that hold a bitmap or a run list (for memory accounting). */
  get allocatedLeaves(): number {
    let n = 0
    for (const s of this.#slots) if (s instanceof Leaf || s instanceof RunLeaf) n++
    return n
  }

  /** Approximate bytes of memory the map uses. */
  get memoryBytes(): number {
    let bytes = this.#slots.length * 8
    for (const s of this.#slots) {
      if (s instanceof Leaf) bytes += LEAF_WORDS * 4 + 64
      else if (s instanceof RunLeaf) bytes += 96 + s.starts.length * 16
    }
    return bytes
  }

  isWritten(sector: number): boolean {
    const slot = this.#slots[Math.floor(sector / LEAF_SECTORS)]
    if (slot === undefined) return false
    if (slot === FULL) return true
    const bit = sector % LEAF_SECTORS
    if (slot instanceof RunLeaf) {
      const i = runAtOrBefore(slot, bit)
      return i >= 0 && bit < slot.ends[i]!
    }
    return ((slot.bits[bit >>> 5]! >>> (bit & 31)) & 1) === 1
  }

  /**
   * How many sectors from `start` (at most up to `end`) share the state of
   * `start`. Reads use it to split a request into RO and RW runs.
   */
  runLength(start: number, end: number): number {
    const written = this.isWritten(start)
    let s = start
    while (s < end) {
      const leafIndex = Math.floor(s / LEAF_SECTORS)
      const leafStart = leafIndex * LEAF_SECTORS
      const leafEnd = Math.min(leafStart + LEAF_SECTORS, end)
      const slot = this.#slots[leafIndex]
      if (slot === undefined || slot === FULL) {
        if ((slot === FULL) !== written) break
        s = leafEnd
        continue
      }
      const stop =
        slot instanceof RunLeaf
          ? scanRuns(slot, s - leafStart, leafEnd - leafStart, written)
          : scanLeaf(slot.bits, s - leafStart, leafEnd - leafStart, written)
      s = leafStart + stop
      if (s < leafEnd) break
    }
    return Math.min(s, end) - start
  }

  /** The written runs of [start, end), in order, as [first sector, count]. */
  *writtenRuns(start = 0, end = this.sectors): Generator<[number, number]> {
    for (let s = start; s < end; ) {
      const n = this.runLength(s, end)
      if (this.isWritten(s)) yield [s, n]
      s += n
    }
  }

  /** Forgets every write. */
  clear(): void {
    this.#slots.fill(undefined)
    this.#written = 0
  }

  /** Marks [start, start+count) written; returns how many were new. */
  setRange(start: number, count: number): number {
    const end = start + count
    // The message is built only on failure: this runs for every write.
    if (start < 0 || count < 0 || end > this.sectors) assert.fail(`sectors ${start}+${count} outside a map of ${this.sectors}`)
    let added = 0
    let s = start
    while (s < end) {
      const leafIndex = Math.floor(s / LEAF_SECTORS)
      const leafStart = leafIndex * LEAF_SECTORS
      const leafEnd = Math.min(leafStart + LEAF_SECTORS, end)
      let slot = this.#slots[leafIndex]
      if (slot !== FULL) {
        if (slot === undefined) {
          if (s === leafStart && leafEnd - leafStart === LEAF_SECTORS) {
            this.#slots[leafIndex] = FULL
            added += LEAF_SECTORS
            s = leafEnd
            continue
          }
          slot = new RunLeaf()
          this.#slots[leafIndex] = slot
        }
        let n: number
        if (slot instanceof RunLeaf) {
          n = addRun(slot, s - leafStart, leafEnd - leafStart)
          slot.count += n
          if (slot.starts.length > RUNS_MAX) {
            slot = toBitmap(slot)
            this.#slots[leafIndex] = slot
          }
        } else {
          n = fillLeaf(slot.bits, s - leafStart, leafEnd - leafStart)
          slot.count += n
        }
        added += n
        if (slot.count === LEAF_SECTORS) this.#slots[leafIndex] = FULL
      }
      s = leafEnd
    }
    this.#written += added
    return added
  }
}

/** Sets bits [from, to) of a leaf; returns how many changed. */
const fillLeaf = (bits: Uint32Array, from: number, to: number): number => {
  let added = 0
  while (from < to) {
    const w = from >>> 5
    const lo = from & 31
    const hi = Math.min(WORD_BITS, lo + (to - from))
    const mask = wordMask(lo, hi)
    const before = bits[w]!
    const after = (before | mask) >>> 0
    added += popcount(after) - popcount(before)
    bits[w] = after
    from += hi - lo
  }
  return added
}

/** First bit index in [from, to) whose state differs from `written`, or `to`. */
const scanLeaf = (bits: Uint32Array, from: number, to: number, written: boolean): number => {
  while (from < to) {
    const w = from >>> 5
    const lo = from & 31
    const word = written ? ~bits[w]! : bits[w]!
    const differing = (word & wordMask(lo, WORD_BITS)) >>> 0
    if (differing !== 0) return Math.min(to, (w << 5) + lowestBit(differing))
    from = (w + 1) << 5
  }
  return to
}

/** Index of the last run starting at or before `bit`, or -1. */
const runAtOrBefore = (leaf: RunLeaf, bit: number): number => {
  let lo = 0
  let hi = leaf.starts.length - 1
  let found = -1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    if (leaf.starts[mid]! <= bit) {
      found = mid
      lo = mid + 1
    } else {
      hi = mid - 1
    }
  }
  return found
}

/** Adds sectors [from, to) to a run list, merging what it meets; returns how many were new. */
const addRun = (leaf: RunLeaf, from: number, to: number): number => {
  // The runs that overlap or touch [from, to) are merged into one.
  let first = runAtOrBefore(leaf, from)
  if (first < 0 || leaf.ends[first]! < from) first++
  let last = first
  let covered = 0
  let start = from
  let end = to
  while (last < leaf.starts.length && leaf.starts[last]! <= to) {
    start = Math.min(start, leaf.starts[last]!)
    end = Math.max(end, leaf.ends[last]!)
    covered += leaf.ends[last]! - leaf.starts[last]!
    last++
  }
  leaf.starts.splice(first, last - first, start)
  leaf.ends.splice(first, last - first, end)
  return end - start - covered
}

/** First bit in [from, to) whose state differs from `written`, or `to`. */
const scanRuns = (leaf: RunLeaf, from: number, to: number, written: boolean): number => {
  const i = runAtOrBefore(leaf, from)
  const inside = i >= 0 && from < leaf.ends[i]!
  if (written) return inside ? Math.min(to, leaf.ends[i]!) : from
  if (inside) return from
  const next = leaf.starts[i + 1]
  return next === undefined ? to : Math.min(to, next)
}

const toBitmap = (runs: RunLeaf): Leaf => {
  const leaf = new Leaf()
  leaf.count = runs.count
  for (let i = 0; i < runs.starts.length; i++) fillLeaf(leaf.bits, runs.starts[i]!, runs.ends[i]!)
  return leaf
}
