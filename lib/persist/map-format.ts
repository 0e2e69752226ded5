// The on-disk format of a persistent sector map (docs/map-format.md): two
// header slots, then two slots per bitmap page. Every slot is 4096 bytes and
// ends in a SHA-256 of the rest, so a torn or damaged slot is recognised.
// Format 3 adds a second set of pages after the first: sectors on RW
// (written by a client or copied from RO by hydration); the first set stays
// the sectors written by a client.
// Pages are written to the slot that does not hold their newest good copy,
// headers to both slots in turn, so the newest good copy survives any
// interrupted write. Also here: the stamp that binds RW to its map where
// RW's tail carries it.
import { createHash } from 'node:crypto'

export const SLOT_BYTES = 4096
/**
 * 3: pages of sectors on RW (copied from RO, or written) after the pages of
 * written sectors, and a floor of sectors on RW. 2: the map bound to its RW
 * by a device ID, and a floor of written sectors. 1 (no binding; RW's
 * sampled fingerprint after a clean shutdown) and 2 are still read, and
 * upgraded on resume. A new format gets a case in decodeHeader and keeps
 * every older one readable.
 */
export const FORMAT_VERSION = 3
const HEADER_MAGIC = 'GEOMROWR'
const PAGE_MAGIC = 'GRWRPAGE'
const STAMP_MAGIC = 'GRWRSTMP'
const STAMP_VERSION = 1
const CHECKSUM_BYTES = 32
const CHECKSUM_AT = SLOT_BYTES - CHECKSUM_BYTES
const PAGE_HEADER_BYTES = 32
/** Bitmap bytes per page. */
export const PAGE_PAYLOAD_BYTES = CHECKSUM_AT - PAGE_HEADER_BYTES
/** Sectors one page describes, one bit each. */
export const PAGE_SECTORS = PAGE_PAYLOAD_BYTES * 8
/** Bytes of RO or RW sampled into a fingerprint: this many sectors. */
export const FINGERPRINT_SAMPLES = 64

export const HeaderFlag = {
  /** Shut down cleanly: the map matches RW exactly (format 1: and rwHash is valid). */
  CLEAN: 1 << 0,
  /** A commit into RO started and has not finished: RO's hash is not to be checked. */
  COMMITTING: 1 << 1,
} as const

/**
 * Where RW carries the map's device ID: nowhere (it cannot be checked), an
 * extended attribute of a file RW (root's namespace or the user's), or the
 * 4096 bytes past the device's end on RW (a stamp; with --map-on-rw, the
 * map's own header).
 */
export type BindingKind = 'none' | 'attribute-system' | 'attribute-user' | 'tail'
/** On disk, a binding is its index here. */
const BINDINGS: readonly BindingKind[] = ['none', 'attribute-system', 'attribute-user', 'tail']

export interface MapHeader {
  /** The format the header was read in, or is to be written in. */
  readonly version: number
  /** The device ID: random, made with the map, and carried by RW as its binding says. */
  readonly uuid: string
  /** Counts header writes; the higher of two good slots is current. */
  readonly generation: bigint
  /** Pages of another epoch are empty: revert and commit clear the map by bumping it. */
  readonly epoch: bigint
  readonly sectorSize: number
  readonly deviceSize: number
  readonly flags: number
  readonly roSize: number
  readonly roHash: Buffer
  readonly rwSize: number
  /** Format 1's RW fingerprint, meaningful only with CLEAN; zeros in format 2. */
  readonly rwHash: Buffer
  /** 'none' in format 1. */
  readonly binding: BindingKind
  /**
   * Sectors the map held written, all durable, when this header was
   * written: pages only gain bits until the next header write, so loading
   * fewer means pages were lost. 0 in format 1.
   */
  readonly writtenFloor: number
  /**
   * Sectors the map held on RW (written or copied), all durable, when this
   * header was written: the same rule for the pages of sectors on RW. The
   * written floor in formats 1 and 2.
   */
  readonly onRwFloor: number
}

interface MapPage {
  readonly index: number
  readonly epoch: bigint
  /** Counts this page's writes; the higher of two good slots is current. */
  readonly generation: bigint
  readonly bits: Buffer
}

/** The byte offset of header slot 0 or 1, and of page `index`'s slot 0 or 1. */
export const headerSlotAt = (slot: 0 | 1): number => slot * SLOT_BYTES
export const pageSlotAt = (index: number, slot: 0 | 1): number => (2 + 2 * index + slot) * SLOT_BYTES

export const pageCount = (deviceSize: number, sectorSize: number): number => Math.ceil(deviceSize / sectorSize / PAGE_SECTORS)

/** The bytes a map for this device occupies at most (it is sparse until written). */
export const mapBytes = (deviceSize: number, sectorSize: number): number => pageSlotAt(2 * pageCount(deviceSize, sectorSize), 0)

/** The bytes of a format 1 or 2 map, which has one set of pages. */
export const mapBytesBeforeHydration = (deviceSize: number, sectorSize: number): number => pageSlotAt(pageCount(deviceSize, sectorSize), 0)

const checksum = (slot: Buffer): Buffer => createHash('sha256').update(slot.subarray(0, CHECKSUM_AT)).digest()

const seal = (slot: Buffer): Buffer => {
  checksum(slot).copy(slot, CHECKSUM_AT)
  return slot
}

const sealed = (slot: Buffer): boolean => checksum(slot).equals(slot.subarray(CHECKSUM_AT))

const uuidBytes = (uuid: string): Buffer => Buffer.from(uuid.replace(/-/g, ''), 'hex')

export const encodeHeader = (h: MapHeader): Buffer => {
  const b = Buffer.alloc(SLOT_BYTES)
  b.write(HEADER_MAGIC, 0, 'latin1')
  b.writeUInt32LE(h.version, 8)
  b.writeUInt32LE(SLOT_BYTES, 12)
  uuidBytes(h.uuid).copy(b, 16)
  b.writeBigUInt64LE(h.generation, 32)
  b.writeBigUInt64LE(h.epoch, 40)
  b.writeUInt32LE(h.sectorSize, 48)
  b.writeUInt32LE(PAGE_SECTORS, 52)
  b.writeBigUInt64LE(BigInt(h.deviceSize), 56)
  b.writeUInt32LE(h.flags, 64)
  b.writeUInt32LE(BINDINGS.indexOf(h.binding), 68)
  b.writeBigUInt64LE(BigInt(h.roSize), 72)
  h.roHash.copy(b, 80)
  b.writeBigUInt64LE(BigInt(h.rwSize), 112)
  b.writeBigUInt64LE(BigInt(h.writtenFloor), 120)
  b.writeBigUInt64LE(BigInt(h.onRwFloor), 128)
  return seal(b)
}

/** Why a header slot cannot be used. */
type HeaderProblem = 'empty' | 'not-a-map' | 'newer-format' | 'damaged'

export type DecodedHeader =
  | { readonly ok: true; readonly header: MapHeader }
  | { readonly ok: false; readonly problem: HeaderProblem; readonly version?: number }

const uuidOf = (b: Buffer): string => {
  const h = b.toString('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`
}

export const decodeHeader = (b: Buffer): DecodedHeader => {
  if (b.every(byte => byte === 0)) return { ok: false, problem: 'empty' }
  if (b.toString('latin1', 0, 8) !== HEADER_MAGIC) return { ok: false, problem: 'not-a-map' }
  const version = b.readUInt32LE(8)
  // A newer format may lay out the rest differently: judge nothing else.
  if (version > FORMAT_VERSION) return { ok: false, problem: 'newer-format', version }
  if (version < 1 || b.readUInt32LE(12) !== SLOT_BYTES || b.readUInt32LE(52) !== PAGE_SECTORS || !sealed(b)) {
    return { ok: false, problem: 'damaged' }
  }
  const binding = version === 1 ? 'none' : BINDINGS[b.readUInt32LE(68)]
  if (binding === undefined) return { ok: false, problem: 'damaged' }
  return {
    ok: true,
    header: {
      version,
      uuid: uuidOf(b.subarray(16, 32)),
      generation: b.readBigUInt64LE(32),
      epoch: b.readBigUInt64LE(40),
      sectorSize: b.readUInt32LE(48),
      deviceSize: Number(b.readBigUInt64LE(56)),
      flags: b.readUInt32LE(64),
      roSize: Number(b.readBigUInt64LE(72)),
      roHash: Buffer.from(b.subarray(80, 112)),
      rwSize: Number(b.readBigUInt64LE(112)),
      rwHash: version === 1 ? Buffer.from(b.subarray(120, 152)) : Buffer.alloc(32),
      binding,
      writtenFloor: version === 1 ? 0 : Number(b.readBigUInt64LE(120)),
      onRwFloor: version === 1 ? 0 : Number(b.readBigUInt64LE(version === 2 ? 120 : 128)),
    },
  }
}

/** RW's tail stamp: the device ID of a map kept elsewhere, and the device's size. */
export const encodeStamp = (uuid: string, deviceSize: number): Buffer => {
  const b = Buffer.alloc(SLOT_BYTES)
  b.write(STAMP_MAGIC, 0, 'latin1')
  b.writeUInt32LE(STAMP_VERSION, 8)
  b.writeUInt32LE(SLOT_BYTES, 12)
  uuidBytes(uuid).copy(b, 16)
  b.writeBigUInt64LE(BigInt(deviceSize), 32)
  return seal(b)
}

/**
 * The device ID a slot of RW's tail carries: a stamp's, or a map header's
 * (--map-on-rw: the map binds RW by being on it); null for anything else.
 */
export const slotIdentity = (b: Buffer): string | null => {
  if (!sealed(b) || b.readUInt32LE(12) !== SLOT_BYTES) return null
  const magic = b.toString('latin1', 0, 8)
  if ((magic === STAMP_MAGIC && b.readUInt32LE(8) === STAMP_VERSION) || magic === HEADER_MAGIC) return uuidOf(b.subarray(16, 32))
  return null
}

export const encodePage = (p: MapPage): Buffer => {
  const b = Buffer.alloc(SLOT_BYTES)
  b.write(PAGE_MAGIC, 0, 'latin1')
  b.writeUInt32LE(p.index, 8)
  b.writeBigUInt64LE(p.epoch, 16)
  b.writeBigUInt64LE(p.generation, 24)
  p.bits.copy(b, PAGE_HEADER_BYTES, 0, PAGE_PAYLOAD_BYTES)
  return seal(b)
}

type DecodedPage = { readonly ok: true; readonly page: MapPage } | { readonly ok: false; readonly problem: 'empty' | 'damaged' }

export const decodePage = (b: Buffer, index: number): DecodedPage => {
  if (b.every(byte => byte === 0)) return { ok: false, problem: 'empty' }
  if (b.toString('latin1', 0, 8) !== PAGE_MAGIC || b.readUInt32LE(8) !== index || !sealed(b)) {
    return { ok: false, problem: 'damaged' }
  }
  return {
    ok: true,
    page: {
      index,
      epoch: b.readBigUInt64LE(16),
      generation: b.readBigUInt64LE(24),
      bits: Buffer.from(b.subarray(PAGE_HEADER_BYTES, CHECKSUM_AT)),
    },
  }
}
