// A stopped device opened in this process, for the lifecycle commands given
// --ro RO --rw RW --map MAP (or --map-on-rw) in place of NAME.
import { openDevicePair } from '../devices/device-pair.js'
import { BlockDevice } from '../devices/block-device.js'
import { RowrDevice } from '../engine/rowr-device.js'
import { SectorMap } from '../engine/sector-map.js'
import { RowrError } from '../errors.js'
import { listNames, readState } from '../daemon/run-state.js'
import { MapFile } from '../persist/map-file.js'
import { mapOnRw, mapOnRwBase, openMapFile, type MapPlacement } from '../persist/map-store.js'

export interface OfflineTarget {
  readonly ro: string
  readonly rw: string
  /** The map file; undefined with mapOnRw. */
  readonly map?: string
  readonly mapOnRw: boolean
  readonly force: boolean
}

export interface OfflineDevice {
  readonly engine: RowrDevice
  readonly mapFile: MapFile
  readonly warnings: readonly string[]
  /** Flushes, marks the map clean and closes everything. */
  close(): Promise<void>
}

/** Two writers on one RW would corrupt it: a running device keeps its devices to itself. */
const checkNotRunning = (t: OfflineTarget): void => {
  for (const name of listNames()) {
    const s = readState(name)
    if (s && (s.rw === t.rw || (t.map !== undefined && s.map === t.map))) {
      throw new RowrError('EINUSE', `${t.rw} belongs to running device ${name}; give NAME (${name}) instead of --ro/--rw, or destroy it first`)
    }
  }
}

export const openOffline = async (t: OfflineTarget): Promise<OfflineDevice> => {
  checkNotRunning(t)
  // The map knows its sector size; the devices' own may be smaller.
  const sectorSize = await mapSectorSize(t)
  const pair = openDevicePair(t.ro, t.rw, sectorSize ? { sectorSize } : {})
  let placement: MapPlacement | undefined
  try {
    placement = t.mapOnRw ? mapOnRw(pair.rw, pair.mediaSize, pair.sectorSize) : openMapFile(t.map!, pair.mediaSize, pair.sectorSize)
    const map = new SectorMap(pair.mediaSize / pair.sectorSize)
    const opened = await MapFile.open({ ...placement, ro: pair.ro, rw: pair.rw, size: pair.mediaSize, sectorSize: pair.sectorSize, map, force: t.force })
    const engine = new RowrDevice({ ro: pair.ro, rw: pair.rw, size: pair.mediaSize, sectorSize: pair.sectorSize, map, journal: opened.file })
    const store = placement
    return {
      engine,
      mapFile: opened.file,
      warnings: [...pair.warnings, ...opened.warnings],
      close: async () => {
        try {
          await engine.flush()
          await opened.file.closeClean()
        } finally {
          store.close()
          pair.ro.close()
          pair.rw.close()
        }
      },
    }
  } catch (e) {
    placement?.close()
    pair.ro.close()
    pair.rw.close()
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
