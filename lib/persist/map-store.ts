// Where a persistent map lives: a file of its own (--map FILE), or the tail
// of RW (--map-on-rw), so that one partition or file holds everything.
import fs from 'node:fs'
import { BlockDevice, type BlockIo } from '../devices/block-device.js'
import { resizeHint } from '../devices/device-pair.js'
import { RowrError, errnoCode } from '../errors.js'
import { SLOT_BYTES, decodeHeader, mapBytes, mapBytesBeforeHydration } from './map-format.js'

interface MapPlacement {
  readonly store: BlockIo
  /** The map's first byte in `store`. */
  readonly base: number
  /** How messages name it. */
  readonly describe: string
  /** Just made empty here: it cannot hold an old map. */
  readonly fresh: boolean
  close(): void
  /** Closes it and removes what opening it made (a new map file), for a start that failed. */
  abandon(): void
}

/** Whether `file`, `size` bytes long, is a whole map of format 1 or 2 for this device, which format 3 makes longer. */
const isMapBeforeHydration = (file: string, size: number, deviceSize: number, sectorSize: number): boolean => {
  if (size !== mapBytesBeforeHydration(deviceSize, sectorSize)) return false
  const headers = Buffer.alloc(2 * SLOT_BYTES)
  const fd = fs.openSync(file, 'r')
  try {
    fs.readSync(fd, headers, 0, headers.length, 0)
  } finally {
    fs.closeSync(fd)
  }
  return [0, 1].some(s => {
    const d = decodeHeader(headers.subarray(s * SLOT_BYTES, (s + 1) * SLOT_BYTES))
    return d.ok && d.header.version < 3
  })
}

/**
 * Opens FILE for a map of this device; a file that does not exist yet, or is
 * empty, becomes a sparse file of the map's full size (it only takes space
 * as pages are written). With `discard` (--discard-map) a shorter file is
 * grown to that size: what it held is being thrown away. A whole map of
 * format 1 or 2 is grown too, sparse: its upgrade adds pages (map-file.ts).
 */
export const openMapFile = (file: string, size: number, sectorSize: number, { discard = false } = {}): MapPlacement => {
  const needed = mapBytes(size, sectorSize)
  let made: 'file' | 'size' | null = 'file'
  try {
    const fd = fs.openSync(file, 'wx', 0o600)
    fs.ftruncateSync(fd, needed)
    fs.closeSync(fd)
  } catch (e) {
    if (errnoCode(e) !== 'EEXIST') throw e
    const stat = fs.statSync(file)
    made = stat.isFile() && stat.size === 0 ? 'size' : null
    const grow = stat.isFile() && stat.size < needed && (discard || isMapBeforeHydration(file, stat.size, size, sectorSize))
    if (made || grow) fs.truncateSync(file, needed)
  }
  const device = BlockDevice.open(file, { writable: true })
  return {
    store: device,
    base: 0,
    describe: `map ${file}`,
    fresh: made !== null,
    close: () => device.close(),
    abandon: () => {
      device.close()
      if (made === 'file') fs.rmSync(file, { force: true })
      else if (made === 'size') fs.truncateSync(file, 0)
    },
  }
}

/** The map's offset in RW: past the device's last byte, on a slot boundary. */
export const mapOnRwBase = (size: number): number => Math.ceil(size / SLOT_BYTES) * SLOT_BYTES

/** How large RW must be to hold the device and its map. */
export const mapOnRwBytes = (size: number, sectorSize: number): number => mapOnRwBase(size) + mapBytes(size, sectorSize)

export const mapOnRw = (rw: BlockIo, size: number, sectorSize: number): MapPlacement => {
  const needed = mapOnRwBytes(size, sectorSize)
  if (rw.size < needed) {
    throw new RowrError(
      'EMEDIASIZE',
      `--map-on-rw needs ${rw.path} to hold the device and its map: ${needed} bytes (${size} + ${needed - size} for the map), ` +
        `but it is ${rw.size} bytes: ${resizeHint(rw.path, needed)}`,
    )
  }
  const base = mapOnRwBase(size)
  // RW belongs to the device pair, which closes it; MapFile.abandon takes a new map's header back.
  return {
    store: rw,
    base,
    describe: `the map in ${rw.path} (from byte ${base})`,
    fresh: false,
    close: () => undefined,
    abandon: () => undefined,
  }
}
