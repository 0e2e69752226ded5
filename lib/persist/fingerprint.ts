// Fingerprints that tie a map to its devices: a device's size and a SHA-256
// of sampled sectors. RO never changes, so its samples are spread over the
// whole device. RW changes with every write, so its samples are sectors the
// map says are written, taken only at a clean shutdown, when map and RW agree.
import { createHash } from 'node:crypto'
import type { BlockIo } from '../devices/block-device.js'
import type { SectorMap } from '../engine/sector-map.js'
import { FINGERPRINT_SAMPLES } from './map-format.js'

const hashSectors = async (device: BlockIo, sectorSize: number, sectors: readonly number[]): Promise<Buffer> => {
  const hash = createHash('sha256')
  const scratch = Buffer.alloc(sectorSize)
  hash.update(`${device.size}:${sectorSize}:`)
  for (const sector of sectors) {
    await device.read(scratch, 0, sectorSize, sector * sectorSize)
    hash.update(scratch)
  }
  return hash.digest()
}

/** Evenly spread picks from `count` items, first and last included. */
const spread = (count: number): number[] => {
  if (count <= FINGERPRINT_SAMPLES) return Array.from({ length: count }, (_, i) => i)
  return Array.from({ length: FINGERPRINT_SAMPLES }, (_, i) => Math.floor((i * (count - 1)) / (FINGERPRINT_SAMPLES - 1)))
}

export const roFingerprint = (ro: BlockIo, size: number, sectorSize: number): Promise<Buffer> =>
  hashSectors(ro, sectorSize, spread(size / sectorSize))

/** The first sector of each written run, a spread of them. */
const writtenSamples = (map: SectorMap): number[] => {
  const starts = Array.from(map.writtenRuns(), ([first]) => first)
  return spread(starts.length).map(i => starts[i]!)
}

export const rwFingerprint = (rw: BlockIo, map: SectorMap, sectorSize: number): Promise<Buffer> =>
  hashSectors(rw, sectorSize, writtenSamples(map))
