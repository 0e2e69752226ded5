// A sector map kept on disk, crash-safe (format: map-format.ts and
// docs/map-format.md). The engine tells it which sectors it marked; on FLUSH
// (and FUA) it makes RW's data durable first, then writes the changed pages,
// each to the slot that does not hold its newest good copy, then syncs them.
//
// Why pages need no header write per flush: every page is self-checking and
// the map only gains bits between flushes, and a bit reaches the disk only
// after the data it stands for. So any mix of old and new pages that a crash
// leaves is a state where every set bit's data is on RW: the newest good copy
// of each page is always safe to use. Clearing the map (revert, commit) is the
// one step that removes bits; it is a single header write that moves the
// epoch, which turns every page of the old epoch empty at once. For the same
// reason a header can record a floor: the written sectors its pages held
// then, which no later state of them has fewer of.
//
// The map is bound to its RW by a device ID (rw-binding.ts), checked on
// every resume.
//
// Format 3 keeps a second set of pages: the sectors on RW, written or copied
// from RO by hydration. Written sectors are marked in the first set only
// (a client write dirties one page, as before); copies in the second. Both
// sets only gain bits between header writes, so each has its floor; on
// resume a sector is on RW when either set says so, and written when the
// first does.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import type { BlockIo } from '../devices/block-device.js'
import type { MapJournal } from '../engine/engine.js'
import type { SectorMap } from '../engine/sector-map.js'
import type { SectorStates } from '../engine/sector-states.js'
import { RowrError } from '../errors.js'
import { roFingerprint, rwFingerprint } from './fingerprint.js'
import {
  FORMAT_VERSION,
  HeaderFlag,
  PAGE_PAYLOAD_BYTES,
  PAGE_SECTORS,
  SLOT_BYTES,
  decodeHeader,
  decodePage,
  encodeHeader,
  encodePage,
  headerSlotAt,
  mapBytes,
  mapBytesBeforeHydration,
  pageCount,
  pageSlotAt,
  type DecodedHeader,
  type MapHeader,
} from './map-format.js'
import { describeIds, newDeviceId, takeUnbound, type RwIdentity } from './rw-binding.js'

interface OpenMapOptions {
  /** Where the map lives: a map file, or RW itself (--map-on-rw). */
  readonly store: BlockIo
  /** The map's first byte in `store`. */
  readonly base: number
  /** How messages name the map, e.g. "map /var/db/rowr0.map". */
  readonly describe: string
  readonly ro: BlockIo
  readonly rw: BlockIo
  /** Where RW carries the map's device ID. */
  readonly identity: RwIdentity
  readonly size: number
  readonly sectorSize: number
  /** Filled from the map's pages. */
  readonly map: SectorStates
  /** Accept a RO or RW the map does not know, which the user vouches for (never damage or a newer format). */
  readonly force: boolean
  /**
   * Start over (--discard-map): a new, empty map whatever the store holds,
   * and RW taken as empty; the changes either held are gone.
   */
  readonly discard?: boolean
  /** The store was just made empty (a new map file): no need to look for an old map's pages. */
  readonly fresh?: boolean
  /** Refuse a store that holds no map, rather than make one (the commands on a stopped device). */
  readonly existing?: boolean
  /**
   * RO was given as none: RO's fingerprint is not checked (the header keeps
   * the one it has), and the map must say every sector is on RW.
   */
  readonly roAbsent?: boolean
}

interface OpenedMap {
  readonly file: MapFile
  /** False for a new, empty map. */
  readonly resumed: boolean
  readonly warnings: readonly string[]
}

/** Which slot holds a page's newest good copy (-1: none yet), and its generation. */
interface PageState {
  readonly slot: 0 | 1 | -1
  readonly generation: bigint
}

const NO_PAGE: PageState = { slot: -1, generation: 0n }
/** Pages read per request while loading. */
const LOAD_BATCH = 256

const other = (slot: 0 | 1 | -1): 0 | 1 => (slot === 0 ? 1 : 0)

const readAt = async (store: BlockIo, position: number, length: number): Promise<Buffer> => {
  const b = Buffer.alloc(length)
  await store.read(b, 0, length, position)
  return b
}

/** Both header slots, decoded; null for a slot the store is too small to hold. */
const readHeaders = async (store: BlockIo, base: number): Promise<(DecodedHeader | null)[]> => {
  const slots = Math.min(2, Math.max(0, Math.floor((store.size - base) / SLOT_BYTES)))
  const bytes = await readAt(store, base, slots * SLOT_BYTES)
  return [0, 1].map(s => (s < slots ? decodeHeader(bytes.subarray(s * SLOT_BYTES, (s + 1) * SLOT_BYTES)) : null))
}

/** The slots of `count` pages, LOAD_BATCH pages per read: the first page's index, and both slots of each. */
async function* pageBatches(store: BlockIo, base: number, count: number): AsyncGenerator<{ first: number; n: number; bytes: Buffer }> {
  for (let first = 0; first < count; first += LOAD_BATCH) {
    const n = Math.min(LOAD_BATCH, count - first)
    yield { first, n, bytes: await readAt(store, base + pageSlotAt(first, 0), 2 * n * SLOT_BYTES) }
  }
}

/** Whether any page slot holds anything (zeros are never written). */
const anyPageWritten = async (store: BlockIo, base: number, count: number): Promise<boolean> => {
  for await (const { bytes } of pageBatches(store, base, count)) if (!bytes.every(b => b === 0)) return true
  return false
}

/** The good header with the highest generation, and its slot. */
const newestHeader = (decoded: (DecodedHeader | null)[]): { header: MapHeader; slot: 0 | 1 } | undefined =>
  decoded
    .flatMap((d, slot) => (d?.ok ? [{ header: d.header, slot: slot as 0 | 1 }] : []))
    .sort((a, b) => (a.header.generation > b.header.generation ? -1 : 1))[0]

/** The only ways on from a damaged map that lose nothing by being followed. */
const WAYS_ON =
  'restore the map and RW from copies made together (a map describes the RW it was saved with), ' +
  'or start over with --discard-map, which discards every change RW holds (the device then reads as RO)'

const damaged = (o: { describe: string }, what: string): RowrError =>
  new RowrError('EMAPCORRUPT', `${o.describe} ${what}, so the map cannot be trusted: ${WAYS_ON}`)

const unboundWarning = (o: OpenMapOptions): string =>
  `the binding of ${o.describe} to RW ${o.rw.path} cannot be checked: ${o.identity.unboundReason()}; ` +
  'a resume then cannot tell this RW from another'

const isRoot = (): boolean => process.getuid?.() === 0

/** The format a map of format 1 or 2 is rewritten in: 3 where its store has room for the pages of sectors on RW. */
const upgradedFormat = (o: OpenMapOptions): number => (o.store.size - o.base >= mapBytes(o.size, o.sectorSize) ? FORMAT_VERSION : 2)

/**
 * Whether RW is the map's own: the device ID it carries (format 2), or
 * format 1's fingerprint of sampled data, valid after a clean shutdown
 * (`fingerprintAlso`: only when nothing else is wrong). `stamp`: RW is to
 * carry this map's ID from now on (a format 1 map, or --force).
 */
const checkBinding = async (
  o: OpenMapOptions,
  header: MapHeader,
  fingerprintAlso: boolean,
): Promise<{ problems: string[]; warnings: string[]; stamp: boolean }> => {
  const rw = `RW ${o.rw.path}`
  if (header.version === 1) {
    const clean = (header.flags & HeaderFlag.CLEAN) !== 0
    const foreign = (await o.identity.find()).filter(f => f.id !== header.uuid)
    const problems = foreign.length ? [`${rw} is the RW of another map, device ID ${describeIds(o.identity, foreign)}`] : []
    if (
      problems.length === 0 &&
      fingerprintAlso &&
      clean &&
      !(await rwFingerprint(o.rw, o.map.written, o.sectorSize)).equals(header.rwHash)
    ) {
      problems.push(`${rw} does not hold the data the map describes`)
    }
    const warning =
      `${o.describe} is in map format 1, which checks RW only by sampled data and only after a clean shutdown` +
      `${clean ? '' : ' (this one was not shut down cleanly: RW was not checked)'}; it is now format ${upgradedFormat(o)}, ` +
      `bound to its RW by device ID ${header.uuid}, and geom-rowr versions that read only format 1 can no longer open it`
    return { problems, warnings: [warning], stamp: true }
  }
  if (header.binding === 'none') return { problems: [], warnings: [unboundWarning(o)], stamp: false }
  const found = await o.identity.read(header.binding)
  if (found.kind === 'found' && found.id === header.uuid) return { problems: [], warnings: [], stamp: false }
  const where = o.identity.where(header.binding)
  const why =
    found.kind === 'found'
      ? `it carries device ID ${found.id} in ${where}: it is the RW of another map`
      : found.kind === 'unsupported'
        ? `its file system keeps no extended attributes, and this map's RW carries its ID in ${where}`
        : header.binding === 'attribute-system' && !isRoot()
          ? `this map's RW carries its ID in ${where}, which only root can read: run this as root`
          : header.binding === 'tail'
            ? `it carries no device ID in ${where}: it is another device, or a copy of the device's data without RW's tail`
            : `it carries no device ID in ${where}: it is another file, or a copy made without its extended attributes (cp without --preserve=xattr)`
  return { problems: [`${rw} is not the RW this map was made with (device ID ${header.uuid}): ${why}`], warnings: [], stamp: true }
}

/** A page's bits from the live map. */
export const pageBits = (map: SectorMap, index: number): Buffer => {
  const bits = Buffer.alloc(PAGE_PAYLOAD_BYTES)
  const first = index * PAGE_SECTORS
  for (const [s, n] of map.writtenRuns(first, Math.min(first + PAGE_SECTORS, map.sectors))) setBits(bits, s - first, n)
  return bits
}

const setBits = (bits: Buffer, from: number, count: number): void => {
  const end = from + count
  let i = from
  for (; i < end && i % 8 !== 0; i++) bits[i >>> 3]! |= 1 << (i & 7)
  const wholeBytes = Math.floor((end - i) / 8)
  bits.fill(0xff, i >>> 3, (i >>> 3) + wholeBytes)
  i += wholeBytes * 8
  for (; i < end; i++) bits[i >>> 3]! |= 1 << (i & 7)
}

/** Marks a page's set bits in the live map, by `mark`. */
const loadBits = (sectors: number, index: number, bits: Buffer, mark: (start: number, count: number) => void): void => {
  const first = index * PAGE_SECTORS
  const limit = Math.min(PAGE_SECTORS, sectors - first)
  let runStart = -1
  for (let i = 0; i < limit; ) {
    const byte = bits[i >>> 3]!
    if ((i & 7) === 0 && (byte === 0 || byte === 0xff) && i + 8 <= limit) {
      if (byte === 0xff && runStart < 0) runStart = i
      if (byte === 0 && runStart >= 0) {
        mark(first + runStart, i - runStart)
        runStart = -1
      }
      i += 8
      continue
    }
    const set = (byte >>> (i & 7)) & 1
    if (set && runStart < 0) runStart = i
    if (!set && runStart >= 0) {
      mark(first + runStart, i - runStart)
      runStart = -1
    }
    i++
  }
  if (runStart >= 0) mark(first + runStart, limit - runStart)
}

export class MapFile implements MapJournal {
  readonly describe: string
  readonly #store: BlockIo
  readonly #base: number
  readonly #map: SectorStates
  readonly #identity: RwIdentity
  /** Pages per set; page key k < #perSet is written page k, k >= #perSet on-RW page k - #perSet. */
  readonly #perSet: number
  #header: MapHeader
  /** A header slot that holds the newest good copy. */
  #headerSlot: 0 | 1
  /** By page key. */
  readonly #pages = new Map<number, PageState>()
  readonly #dirty = new Set<number>()
  #running: Promise<void> = Promise.resolve()
  #next: Promise<void> | undefined

  private constructor(o: OpenMapOptions, header: MapHeader, headerSlot: 0 | 1) {
    this.describe = o.describe
    this.#store = o.store
    this.#base = o.base
    this.#map = o.map
    this.#identity = o.identity
    this.#perSet = pageCount(o.size, o.sectorSize)
    this.#header = header
    this.#headerSlot = headerSlot
  }

  /** The device ID, which RW carries. */
  get uuid(): string {
    return this.#header.uuid
  }

  /**
   * Whether the map keeps copied sectors (format 3): a format 2 map whose
   * store had no room for the second set of pages (RW too small for it,
   * with --map-on-rw) stays format 2 and cannot hydrate.
   */
  get recordsCopies(): boolean {
    return this.#header.version >= 3
  }

  /** Whether a commit into RO was interrupted (re-run it). */
  get committing(): boolean {
    return (this.#header.flags & HeaderFlag.COMMITTING) !== 0
  }

  /**
   * The sector size a map at `base` was made with, or null when there is no
   * good header: commands on a stopped device open it with that size.
   */
  static async sectorSizeOf(store: BlockIo, base: number): Promise<number | null> {
    return (await MapFile.geometryOf(store, base))?.sectorSize ?? null
  }

  /** The device size and sector size a map at `base` describes, or null when there is no good header. */
  static async geometryOf(store: BlockIo, base: number): Promise<{ deviceSize: number; sectorSize: number } | null> {
    const header = newestHeader(await readHeaders(store, base))?.header
    return header ? { deviceSize: header.deviceSize, sectorSize: header.sectorSize } : null
  }

  static async open(o: OpenMapOptions): Promise<OpenedMap> {
    const needed = mapBytes(o.size, o.sectorSize)
    const room = o.store.size - o.base
    if (o.discard) {
      if (room < needed)
        throw new RowrError(
          'EMAPCORRUPT',
          `${o.describe} is ${room} bytes, but a map of this device takes ${needed}: give a map that large`,
        )
      return MapFile.#startOver(o)
    }
    const decoded = await readHeaders(o.store, o.base)
    if (decoded.every(d => d === null || (!d.ok && d.problem === 'empty'))) {
      // No header: a new map, unless pages say that one was here and its header is gone.
      if (room < needed) {
        // Not known to be a map at all: nothing here may suggest overwriting it.
        throw new RowrError(
          'ENOTMAP',
          `${o.describe} is ${room} bytes without a map header, but a map of this device takes ${needed}: it is not this device's map, or one cut short ` +
            `(then restore the map and RW from copies made together); give a new or empty file, or the map this device was created with`,
        )
      }
      if (!o.fresh && (await anyPageWritten(o.store, o.base, 2 * pageCount(o.size, o.sectorSize)))) {
        throw damaged(o, 'has map pages but no header: its header was destroyed')
      }
      if (o.existing || o.roAbsent)
        throw new RowrError('ENOTMAP', `${o.describe} holds no map (it is empty): give the map this device was created with`)
      await takeUnbound(o.identity, false)
      return MapFile.#create(o, 0n)
    }
    const newer = decoded.find(d => d && !d.ok && d.problem === 'newer-format')
    if (newer && !newer.ok) {
      throw new RowrError(
        'EMAPFORMAT',
        `${o.describe} was written by a newer geom-rowr (map format ${newer.version}); this one reads format ${FORMAT_VERSION}: use a newer geom-rowr`,
      )
    }
    const newest = newestHeader(decoded)
    if (!newest) {
      if (decoded.every(d => d && !d.ok && (d.problem === 'not-a-map' || d.problem === 'empty'))) {
        // With --map-on-rw, a RW bound to a map kept elsewhere has its stamp here.
        await takeUnbound(o.identity, false)
        throw new RowrError(
          'ENOTMAP',
          `${o.describe} is not a geom-rowr map: it holds other data; give a new or empty file, or the map this device was created with`,
        )
      }
      throw damaged(o, 'has a damaged header (no good copy is left)')
    }
    const { header, slot } = newest
    if (header.sectorSize !== o.sectorSize || header.deviceSize !== o.size) {
      throw new RowrError(
        'EMAPGEOMETRY',
        `${o.describe} describes a ${header.deviceSize}-byte device of ${header.sectorSize}-byte sectors, not this ` +
          `${o.size}-byte device of ${o.sectorSize}-byte sectors: it belongs to other devices`,
      )
    }
    const neededByFormat = header.version >= 3 ? needed : mapBytesBeforeHydration(o.size, o.sectorSize)
    if (room < neededByFormat) throw damaged(o, `is truncated: it has ${room} of the ${neededByFormat} bytes of this map`)
    const file = new MapFile(o, header, slot)
    const problems: string[] = []
    const roHash = o.roAbsent ? header.roHash : await roFingerprint(o.ro, o.size, o.sectorSize)
    if (!o.roAbsent && !file.committing && (header.roSize !== o.ro.size || !roHash.equals(header.roHash))) {
      problems.push(`RO ${o.ro.path} is not the device the map was made with (its size or sampled sectors differ)`)
    }
    if (header.rwSize !== o.rw.size) {
      problems.push(`RW ${o.rw.path} is ${o.rw.size} bytes, the map's RW was ${header.rwSize}`)
    }
    const recovered = await file.#loadPages()
    const loaded = o.map.writtenSectors
    const loadedOnRw = o.map.onRw.writtenSectors
    if (loaded < header.writtenFloor || loadedOnRw < header.onRwFloor) {
      o.map.clear()
      const [what, n, floor] =
        loaded < header.writtenFloor ? ['written', loaded, header.writtenFloor] : ['on-RW', loadedOnRw, header.onRwFloor]
      throw damaged(o, `has lost pages: they hold ${n} ${what} sectors, but held at least ${floor} when the map was last opened or closed`)
    }
    if (o.roAbsent && !o.map.hydrated) {
      const onRo = o.map.roSectors * o.sectorSize
      o.map.clear()
      throw new RowrError(
        'ENEEDRO',
        `${o.describe} is not fully hydrated: ${onRo} bytes of the device are still on RO, so RO cannot be none: ` +
          'give the RO it was made with (and hydrate it: geom-rowr hydrate NAME --wait)',
      )
    }
    const warnings: string[] = []
    const binding = await checkBinding(o, header, problems.length === 0)
    problems.push(...binding.problems)
    warnings.push(...binding.warnings)
    if (problems.length > 0) {
      if (!o.force) {
        o.map.clear()
        throw new RowrError(
          'EFINGERPRINT',
          `${o.describe} belongs to other devices: ${problems.join('; ')}. If you know these are its devices ` +
            `(RO re-imaged with identical content, say, or RW restored from a copy), use --force`,
        )
      }
      warnings.push(`--force: ${problems.join('; ')}`)
    }
    if (recovered > 0) warnings.push(`${o.describe}: ${recovered} page(s) had an interrupted write; their previous copy is used`)
    if (file.committing) warnings.push(`${o.describe}: a commit into RO was interrupted; run geom-rowr commit again to finish it`)
    let kind = header.binding
    if (binding.stamp) {
      // RW takes this map's ID alone: --force vouched for it, or a format 1 map is bound now.
      await o.identity.clear()
      kind = await o.identity.stamp(header.uuid)
      if (kind === 'none') warnings.push(unboundWarning(o))
    }
    // A format 1 or 2 map gains the pages of sectors on RW where its store
    // has room for them: zeroed first, as the store may hold anything there.
    const upgrade = header.version < 3 && upgradedFormat(o) === FORMAT_VERSION
    if (upgrade) {
      await o.store.zero(o.base + pageSlotAt(file.#perSet, 0), needed - pageSlotAt(file.#perSet, 0))
      await o.store.datasync()
    }
    // From here on RW may change: the map is no longer known to match it.
    await file.#writeHeader({
      ...header,
      version: header.version < 3 ? upgradedFormat(o) : header.version,
      flags: header.flags & ~HeaderFlag.CLEAN,
      roSize: o.roAbsent ? header.roSize : o.ro.size,
      roHash: file.committing ? header.roHash : roHash,
      rwSize: o.rw.size,
      binding: kind,
      writtenFloor: loaded,
      onRwFloor: loadedOnRw,
    })
    return { file, resumed: true, warnings }
  }

  /**
   * A new map, bound to RW, its header's generation counting from
   * `generation`: past any old header in the store, so that a crash between
   * the new header's two writes leaves the new one current.
   */
  static async #create(o: OpenMapOptions, generation: bigint): Promise<OpenedMap> {
    const uuid = newDeviceId()
    // RW carries the ID before the map names it: a crash in between leaves
    // no header, and the next create binds RW again.
    const binding = await o.identity.stamp(uuid)
    const header: MapHeader = {
      version: FORMAT_VERSION,
      uuid,
      generation,
      // Random, so that pages a former map left in the same file or RW tail
      // (whose headers were overwritten) never count as this map's.
      epoch: randomBytes(8).readBigUInt64LE(0),
      sectorSize: o.sectorSize,
      deviceSize: o.size,
      flags: 0,
      roSize: o.ro.size,
      roHash: await roFingerprint(o.ro, o.size, o.sectorSize),
      rwSize: o.rw.size,
      rwHash: Buffer.alloc(32),
      binding,
      writtenFloor: 0,
      onRwFloor: 0,
    }
    const file = new MapFile(o, header, 0)
    await file.#writeHeader(header)
    return { file, resumed: false, warnings: binding === 'none' ? [unboundWarning(o)] : [] }
  }

  /** --discard-map: says what the store held, then makes a new map over it. */
  static async #startOver(o: OpenMapOptions): Promise<OpenedMap> {
    const old = newestHeader(await readHeaders(o.store, o.base))?.header
    const what = old
      ? `${o.describe} (device ID ${old.uuid}, at least ${old.writtenFloor * old.sectorSize} bytes written when it was last opened or closed)`
      : `${o.describe} (no map could be read there)`
    const others = (await takeUnbound(o.identity, true)).filter(f => f.id !== old?.uuid)
    const opened = await MapFile.#create(o, (old?.generation ?? 0n) + 1n)
    const warning =
      `--discard-map: the changes recorded in ${what}` +
      (others.length ? ` and those ${o.rw.path} held for device ID ${describeIds(o.identity, others)}` : '') +
      ` are discarded; ${o.rw.path} is taken as empty: the device reads as RO until written`
    return { ...opened, warnings: [warning, ...opened.warnings] }
  }

  /** Reads every page's two slots; returns how many pages fell back to their older copy. */
  async #loadPages(): Promise<number> {
    const count = (this.recordsCopies ? 2 : 1) * this.#perSet
    let recovered = 0
    for await (const { first, n, bytes } of pageBatches(this.#store, this.#base, count)) {
      for (let i = 0; i < n; i++) {
        const index = first + i
        const slots = [0, 1].map(s => decodePage(bytes.subarray((2 * i + s) * SLOT_BYTES, (2 * i + s + 1) * SLOT_BYTES), index))
        const good = slots
          .map((d, slot) => (d.ok ? { page: d.page, slot: slot as 0 | 1 } : null))
          .filter(g => g !== null)
          .sort((a, b) => (a.page.generation > b.page.generation ? -1 : 1))
        const torn = slots.filter(d => !d.ok && d.problem === 'damaged').length
        // An all-zero slot was never written: beside a damaged one, it is the
        // page's state before its first write (interrupted): empty.
        if (torn === 2) {
          const at = this.#base + pageSlotAt(index, 0)
          throw damaged(this, `has page ${index} (bytes ${at}-${at + 2 * SLOT_BYTES - 1}) damaged in both copies`)
        }
        if (torn > 0) recovered++
        if (good.length === 0) continue
        const { page, slot } = good[0]!
        this.#pages.set(index, { slot, generation: page.generation })
        if (page.epoch !== this.#header.epoch) continue
        if (index < this.#perSet) loadBits(this.#map.sectors, index, page.bits, (s, n) => this.#map.markWritten(s, n))
        else loadBits(this.#map.sectors, index - this.#perSet, page.bits, (s, n) => this.#map.markCopied(s, n))
      }
    }
    return recovered
  }

  /**
   * Writes the header to both slots in turn, each made durable before the
   * other is touched, the one without the newest good copy first: an
   * interrupted write leaves the other slot whole, and a map that loses
   * one slot later (cut short, damaged) still has the newest header, and
   * its floor, in the other.
   */
  async #writeHeader(header: MapHeader): Promise<void> {
    const next = { ...header, generation: header.generation + 1n }
    const image = encodeHeader(next)
    for (const slot of [other(this.#headerSlot), this.#headerSlot]) {
      await this.#store.write(image, 0, SLOT_BYTES, this.#base + headerSlotAt(slot))
      await this.#store.datasync()
    }
    this.#header = next
  }

  marked(start: number, count: number): void {
    this.#touch(0, start, count)
  }

  copied(start: number, count: number): void {
    assert(this.recordsCopies, 'copies recorded in a map without pages for them')
    this.#touch(this.#perSet, start, count)
  }

  /** Marks dirty the pages, of the set whose first key is `firstKey`, that hold sectors [start, start+count). */
  #touch(firstKey: number, start: number, count: number): void {
    const last = Math.floor((start + count - 1) / PAGE_SECTORS)
    for (let p = Math.floor(start / PAGE_SECTORS); p <= last; p++) this.#dirty.add(firstKey + p)
  }

  /** A page's bits, by its key. */
  #pageBits(key: number): Buffer {
    return key < this.#perSet ? pageBits(this.#map.written, key) : pageBits(this.#map.onRw, key - this.#perSet)
  }

  /**
   * Makes the map durable as it stands, after `syncRw` made RW's data
   * durable. A call that arrives while a round runs joins the next round,
   * which starts when that one ends and covers everything marked until then.
   */
  commit(syncRw: () => Promise<void>): Promise<void> {
    this.#next ??= this.#running
      .catch(() => undefined)
      .then(() => {
        this.#next = undefined
        this.#running = this.#round(syncRw)
        return this.#running
      })
    return this.#next
  }

  async #round(syncRw: () => Promise<void>): Promise<void> {
    // The pages are taken now, before RW's sync: a bit marked later belongs
    // to a write that sync may not cover, so it waits for the next round.
    const indexes = [...this.#dirty]
    this.#dirty.clear()
    const images = indexes.map(index => ({ index, bits: this.#pageBits(index) }))
    try {
      await syncRw()
      if (images.length === 0) return
      const written = await Promise.all(
        images.map(async ({ index, bits }) => {
          const state = this.#pages.get(index) ?? NO_PAGE
          const slot = other(state.slot)
          const generation = state.generation + 1n
          const image = encodePage({ index, epoch: this.#header.epoch, generation, bits })
          await this.#store.write(image, 0, SLOT_BYTES, this.#base + pageSlotAt(index, slot))
          return { index, state: { slot, generation } }
        }),
      )
      await this.#store.datasync()
      // Only now is the new slot the newest good copy: until the sync, the
      // next write of a page must not overwrite the copy that is durable.
      for (const { index, state } of written) this.#pages.set(index, state)
    } catch (e) {
      for (const index of indexes) this.#dirty.add(index)
      throw e
    }
  }

  /**
   * Empties the map on disk in one step (a new epoch): revert, and the end of
   * a commit. The caller clears the live map and holds off writes meanwhile.
   */
  async clear({ roHash }: { roHash?: Buffer } = {}): Promise<void> {
    await this.#running.catch(() => undefined)
    this.#dirty.clear()
    await this.#writeHeader({
      ...this.#header,
      epoch: (this.#header.epoch + 1n) & 0xffff_ffff_ffff_ffffn,
      flags: this.#header.flags & ~HeaderFlag.COMMITTING,
      ...(roHash ? { roHash } : {}),
      writtenFloor: 0,
      onRwFloor: 0,
    })
  }

  /** Records that a commit into RO has started (RO's fingerprint will change). */
  async startCommit(): Promise<void> {
    await this.#writeHeader({ ...this.#header, flags: this.#header.flags | HeaderFlag.COMMITTING })
  }

  /** Empties the map at the end of a commit, with the fingerprint of RO as the commit left it. */
  async finishCommit(ro: BlockIo): Promise<void> {
    await this.clear({ roHash: await roFingerprint(ro, this.#header.deviceSize, this.#header.sectorSize) })
  }

  /**
   * Marks the map as matching RW, after the engine's last flush, with every
   * written sector as its floor. Skipped while pages are not durable (a
   * failed flush): the floor must never count a bit the disk lacks.
   */
  async closeClean(): Promise<void> {
    await this.#running.catch(() => undefined)
    if (this.#dirty.size > 0) return
    await this.#writeHeader({
      ...this.#header,
      flags: this.#header.flags | HeaderFlag.CLEAN,
      writtenFloor: this.#map.writtenSectors,
      onRwFloor: this.#map.onRw.writtenSectors,
    })
  }

  /**
   * Undoes a new map, for a start that failed after opening it: its header
   * goes (the store reads as no map again) and RW no longer carries its ID.
   */
  async abandon(): Promise<void> {
    await this.#running.catch(() => undefined)
    const empty = Buffer.alloc(2 * SLOT_BYTES)
    await this.#store.write(empty, 0, empty.length, this.#base + headerSlotAt(0))
    await this.#store.datasync()
    await this.#identity.clear()
  }
}
