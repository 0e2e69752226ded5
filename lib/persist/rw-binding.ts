// How a map knows its RW: the map's device ID (its UUID), carried by RW
// outside the data area, so that a resume can tell the RW the map describes
// from any other, after a clean stop or a crash alike (sampled data cannot:
// writes acknowledged after the last sync change it, and an empty sample
// matches any empty RW). RW carries it as an extended attribute of a file,
// or as a stamp in the 4096 bytes past the device's end, where --map-on-rw
// keeps the map's own header. A RW where neither fits cannot be checked,
// and the user is told so.
import { randomUUID } from 'node:crypto'
import type { BlockDevice, BlockIo } from '../devices/block-device.js'
import { attributeName, fileAttributes, writableSpaces, type AttributeSpace, type FileAttributes } from '../devices/file-attributes.js'
import { RowrError } from '../errors.js'
import { SLOT_BYTES, encodeStamp, slotIdentity, type BindingKind } from './map-format.js'
import { mapOnRwBase } from './map-store.js'

/** The attribute's name within its namespace. */
const ID_ATTRIBUTE = 'geom-rowr.id'

type StampRead =
  | { readonly kind: 'found'; readonly id: string }
  | { readonly kind: 'absent' }
  /** RW's file system keeps no extended attributes (of this namespace). */
  | { readonly kind: 'unsupported' }

const SPACE_OF: Partial<Record<BindingKind, AttributeSpace>> = { 'attribute-system': 'system', 'attribute-user': 'user' }
const KIND_OF: Record<AttributeSpace, BindingKind> = { system: 'attribute-system', user: 'attribute-user' }

/** A new device ID, in the form the map's UUID has. */
export const newDeviceId = (): string => randomUUID()

/** The places one RW can carry a device ID, and what is in them. */
export class RwIdentity {
  readonly #rw: BlockIo
  readonly #deviceSize: number
  readonly #tailAt: number
  readonly #attributes: FileAttributes | null
  readonly #mapInTail: boolean

  /**
   * `attributes`: the extended attributes of a file RW (null for a disk);
   * `mapInTail`: the map lives in RW's tail (--map-on-rw), whose header
   * is then the stamp.
   */
  constructor(rw: BlockIo, deviceSize: number, attributes: FileAttributes | null, { mapInTail = false } = {}) {
    this.#rw = rw
    this.#deviceSize = deviceSize
    this.#tailAt = mapOnRwBase(deviceSize)
    this.#attributes = attributes
    this.#mapInTail = mapInTail
  }

  get path(): string {
    return this.#rw.path
  }

  /** The tail's two slots that fit in RW (a stamp is in the first; a map's header in both). */
  get #tailSlots(): number[] {
    return [0, 1].map(i => this.#tailAt + i * SLOT_BYTES).filter(at => at + SLOT_BYTES <= this.#rw.size)
  }

  /** Where `kind` keeps the ID, for messages. */
  where(kind: BindingKind): string {
    const space = SPACE_OF[kind]
    if (space) return `extended attribute ${attributeName(space, ID_ATTRIBUTE)} of ${this.#rw.path}`
    if (kind === 'tail') return `${this.#rw.path}'s tail (bytes ${this.#tailAt}-${this.#tailAt + SLOT_BYTES - 1})`
    return 'nowhere'
  }

  async read(kind: BindingKind): Promise<StampRead> {
    const space = SPACE_OF[kind]
    if (space) {
      const r = this.#attributes?.get(space, ID_ATTRIBUTE) ?? { kind: 'unsupported' }
      return r.kind === 'found' ? { kind: 'found', id: r.value.toString('latin1') } : r
    }
    if (kind !== 'tail') return { kind: 'absent' }
    for (const at of this.#tailSlots) {
      const id = slotIdentity(await this.#readSlot(at))
      if (id) return { kind: 'found', id }
    }
    return { kind: 'absent' }
  }

  /** Every device ID RW carries, wherever (a RW that moved may carry two). */
  async find(): Promise<FoundId[]> {
    const found: FoundId[] = []
    for (const kind of ['attribute-system', 'attribute-user', 'tail'] as const) {
      const r = await this.read(kind)
      if (r.kind === 'found') found.push({ kind, id: r.id })
    }
    return found
  }

  /**
   * Stamps `id` the best way RW allows, durably: an extended attribute, else
   * the tail; returns how ('none' where nothing fits). With the map in
   * RW's tail, the map's header is the stamp.
   */
  async stamp(id: string): Promise<BindingKind> {
    if (this.#mapInTail) return 'tail'
    for (const space of writableSpaces()) {
      if (this.#attributes?.set(space, ID_ATTRIBUTE, Buffer.from(id, 'latin1'))) return KIND_OF[space]
    }
    const [at] = this.#tailSlots
    if (at === undefined) return 'none'
    await this.#rw.write(encodeStamp(id, this.#deviceSize), 0, SLOT_BYTES, at)
    await this.#rw.datasync()
    return 'tail'
  }

  /**
   * Removes every device ID RW carries; a map's header in RW's tail too,
   * unless that map is the one being opened (mapInTail).
   */
  async clear(): Promise<void> {
    for (const space of ['system', 'user'] as const) this.#attributes?.remove(space, ID_ATTRIBUTE)
    if (this.#mapInTail) return
    let wrote = false
    for (const at of this.#tailSlots) {
      if (slotIdentity(await this.#readSlot(at)) === null) continue
      await this.#rw.write(Buffer.alloc(SLOT_BYTES), 0, SLOT_BYTES, at)
      wrote = true
    }
    if (wrote) await this.#rw.datasync()
  }

  /** Why RW carries no ID: the warning's reason, with the way to give it room. */
  unboundReason(): string {
    const bytes = this.#tailAt + SLOT_BYTES
    const room = `it has no room past the device's end for a stamp (${bytes} bytes would give it one`
    return this.#attributes
      ? `${this.#rw.path} is a file on a file system that keeps no extended attributes, and ${room}: truncate -s ${bytes} ${this.#rw.path})`
      : `${this.#rw.path} is a disk of exactly the device's size: ${room}; use a larger partition)`
  }

  async #readSlot(at: number): Promise<Buffer> {
    const b = Buffer.alloc(SLOT_BYTES)
    await this.#rw.read(b, 0, SLOT_BYTES, at)
    return b
  }
}

/** The identity of an open RW: a file's extended attributes, a disk's tail. */
export const rwIdentity = (rw: BlockDevice, deviceSize: number, { mapInTail = false } = {}): RwIdentity =>
  new RwIdentity(rw, deviceSize, rw.identity.kind === 'file' ? fileAttributes(rw.fd) : null, { mapInTail })

interface FoundId {
  readonly kind: BindingKind
  readonly id: string
}

/** "ID (where)", for messages. */
export const describeIds = (identity: RwIdentity, found: readonly FoundId[]): string =>
  found.map(f => `${f.id} (${identity.where(f.kind)})`).join(', ')

/**
 * A RW about to be taken as empty (for a new map, or a device without one)
 * must carry no map's ID: that map's changes are on it, and would be
 * overwritten. Refused, unless `discard` (--discard-map): then the IDs go.
 * Returns the IDs it carried.
 */
export const takeUnbound = async (identity: RwIdentity, discard: boolean): Promise<FoundId[]> => {
  const found = await identity.find()
  if (found.length === 0) return found
  if (!discard) {
    throw new RowrError(
      'EBOUND',
      `${identity.path} is the RW of another map, device ID ${describeIds(identity, found)}: it holds that map's changes, which this device would overwrite. ` +
        `To resume them, give that map (--map FILE, or --map-on-rw if it is in RW's tail); to start over, discarding them, add --discard-map`,
    )
  }
  await identity.clear()
  return found
}
