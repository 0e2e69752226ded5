// A stopped device opened in this process, for the lifecycle commands given
// --ro RO --rw RW --map MAP (or --map-on-rw) in place of NAME.
import fs from 'node:fs'
import { openDevicePair } from '../devices/device-pair.js'
import { RowrError } from '../errors.js'
import { BlockDevice } from '../devices/block-device.js'
import { Engine } from '../engine/engine.js'
import { SectorStates } from '../engine/sector-states.js'
import { DeviceClaims } from '../daemon/claims.js'
import { MapFile } from '../persist/map-file.js'
import { mapOnRw, mapOnRwBase, openMapFile, type MapPlacement } from '../persist/map-store.js'
import { rwIdentity } from '../persist/rw-binding.js'

export interface OfflineTarget {
  readonly ro: string
  readonly rw: string
  /** The map file; undefined with mapOnRw. */
  readonly map?: string
  readonly mapOnRw: boolean
  readonly force: boolean
}

export interface OfflineDevice {
  readonly engine: Engine
  /** RO, RW and map, held as a running device holds them. */
  readonly claims: DeviceClaims
  readonly warnings: readonly string[]
  /** Flushes, marks the map clean and closes everything. */
  close(): Promise<void>
}

/**
 * Opens the stopped device. Two writers on one RW or map would corrupt it:
 * they are claimed as a running device claims them, so a running device's
 * (or another command's) are refused.
 */
export const openOffline = async (t: OfflineTarget): Promise<OfflineDevice> => {
  if (t.map !== undefined && !fs.existsSync(t.map)) {
    throw new RowrError('ENOENT', `map ${t.map} does not exist: give the map this device was created with`)
  }
  // The map knows its sector size; the devices' own may be smaller.
  const sectorSize = await mapSectorSize(t)
  const pair = openDevicePair(t.ro, t.rw, sectorSize ? { sectorSize } : {})
  let placement: MapPlacement | undefined
  let claims: DeviceClaims | undefined
  try {
    claims = DeviceClaims.claim(
      [
        { role: 'ro', path: t.ro, identity: pair.ro.identity },
        { role: 'rw', path: t.rw, identity: pair.rw.identity },
      ],
      { offline: true },
    )
    placement = t.mapOnRw ? mapOnRw(pair.rw, pair.mediaSize, pair.sectorSize) : openMapFile(t.map!, pair.mediaSize, pair.sectorSize)
    if (!t.mapOnRw) claims.add([{ role: 'map', path: t.map! }])
    const map = new SectorStates(pair.mediaSize / pair.sectorSize)
    const identity = rwIdentity(pair.rw, pair.mediaSize, { mapInTail: t.mapOnRw })
    const opened = await MapFile.open({ ...placement, ro: pair.ro, rw: pair.rw, identity, size: pair.mediaSize, sectorSize: pair.sectorSize, map, force: t.force, existing: true })
    const engine = new Engine({ ro: pair.ro, rw: pair.rw, size: pair.mediaSize, sectorSize: pair.sectorSize, map, journal: opened.file })
    const store = placement
    const held = claims
    return {
      engine,
      claims: held,
      warnings: [...pair.warnings, ...opened.warnings],
      close: async () => {
        try {
          await engine.flush()
          await opened.file.closeClean()
        } finally {
          store.close()
          pair.ro.close()
          pair.rw.close()
          held.release()
        }
      },
    }
  } catch (e) {
    placement?.abandon()
    pair.ro.close()
    pair.rw.close()
    claims?.release()
    throw e
  }
}

const mapSectorSize = async (t: OfflineTarget): Promise<number | null> => {
  if (t.mapOnRw) {
    const ro = BlockDevice.open(t.ro, { writable: false })
    const rw = BlockDevice.open(t.rw, { writable: false })
    try {
      return await MapFile.sectorSizeOf(rw, mapOnRwBase(ro.size))
    } finally {
      ro.close()
      rw.close()
    }
  }
  let file: BlockDevice
  try {
    file = BlockDevice.open(t.map!, { writable: false })
  } catch {
    return null
  }
  try {
    return await MapFile.sectorSizeOf(file, 0)
  } finally {
    file.close()
  }
}
