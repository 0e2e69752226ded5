// The one way a device is put together, for a running daemon and for the
// commands on a stopped device alike: RO and RW opened as a pair, claimed,
// the map found or made (or RW checked to hold no map's changes), and the
// engine over them. Every step adds its undo to the caller's teardown, so a
// failed start takes back what it made and a stop releases all of it.
import { NO_RO } from '../devices/absent-ro.js'
import { BlockDevice } from '../devices/block-device.js'
import { openDevicePair, openWithoutRo, type DevicePair } from '../devices/device-pair.js'
import { Engine, type MapJournal } from '../engine/engine.js'
import { SectorStates } from '../engine/sector-states.js'
import { RowrError } from '../errors.js'
import { MapFile } from '../persist/map-file.js'
import { mapOnRw, openMapFile } from '../persist/map-store.js'
import { describeIds, rwIdentity, takeUnbound } from '../persist/rw-binding.js'
import { DeviceClaims, type Claimant } from './claims.js'
import type { Teardown } from './teardown.js'

interface AssemblyOptions {
  /** Absolute paths; RO may be NO_RO (none) for a fully hydrated map. */
  readonly ro: string
  readonly rw: string
  readonly sectorSize?: number
  /** RW was made for this device (RW auto): its size is RO's, not a mistake. */
  readonly rwMadeToFit?: boolean
  /** Who holds RO, RW and the map meanwhile. */
  readonly claimant: Claimant
  /** Where the map is kept: a file, RW's tail, or nowhere (memory only). */
  readonly map: { readonly file: string } | 'rw' | null
  readonly force: boolean
  readonly discardMap: boolean
  /** Refuse a map store that holds no map, rather than make one (the commands on a stopped device). */
  readonly existingMap?: boolean
  /**
   * The map's journal as the engine sees it: the map file itself, unless the
   * caller puts something in front of it (the takeover log of a kernel
   * device that outlives its daemon).
   */
  readonly journal?: (mapFile: MapFile, map: SectorStates) => MapJournal
}

interface Assembly {
  readonly engine: Engine
  readonly pair: DevicePair
  readonly claims: DeviceClaims
  /** Undefined without a persistent map. */
  readonly mapFile: MapFile | undefined
  /** How messages name the map, when an existing one was resumed. */
  readonly resumed: string | null
  /** For the user: the pair's, the map's, and what --discard-map discarded. */
  readonly warnings: readonly string[]
  /**
   * Marks the device as started: from then on the teardown keeps a new map
   * (a failed start takes it back).
   */
  started(): void
}

/** The device's geometry without RO: only the map file can say it (a map in RW's tail sits past RO's size). */
const geometryForNoRo = async (map: AssemblyOptions['map']): Promise<{ deviceSize: number; sectorSize: number }> => {
  if (map === null || map === 'rw') {
    throw new RowrError(
      'ENEEDRO',
      `RO none needs the device's map file (--map FILE): only a fully hydrated map lets a device run without RO${map === 'rw' ? ", and one in RW's tail cannot be found without RO's size" : ''}`,
    )
  }
  const store = BlockDevice.open(map.file, { writable: false })
  try {
    const geometry = await MapFile.geometryOf(store, 0)
    if (!geometry) throw new RowrError('ENOTMAP', `map ${map.file} holds no map: RO none needs the map of a fully hydrated device`)
    return geometry
  } finally {
    store.close()
  }
}

export const assemble = async (o: AssemblyOptions, teardown: Teardown): Promise<Assembly> => {
  let started = false
  const roAbsent = o.ro === NO_RO
  const pair = roAbsent
    ? openWithoutRo(o.rw, await geometryForNoRo(o.map))
    : openDevicePair(o.ro, o.rw, { sectorSize: o.sectorSize, rwMadeToFit: o.rwMadeToFit })
  teardown.add('devices', () => {
    pair.ro.close()
    pair.rw.close()
  })
  const claims = DeviceClaims.claim(
    [
      ...(pair.ro instanceof BlockDevice ? [{ role: 'ro' as const, path: o.ro, identity: pair.ro.identity }] : []),
      { role: 'rw', path: o.rw, identity: pair.rw.identity },
    ],
    o.claimant,
  )
  teardown.add('claims', () => claims.release())
  const warnings = [...pair.warnings]
  const map = new SectorStates(pair.mediaSize / pair.sectorSize)
  const identity = rwIdentity(pair.rw, pair.mediaSize, { mapInTail: o.map === 'rw' })
  let mapFile: MapFile | undefined
  let resumed: string | null = null
  if (o.map !== null) {
    const placement =
      o.map === 'rw'
        ? mapOnRw(pair.rw, pair.mediaSize, pair.sectorSize)
        : openMapFile(o.map.file, pair.mediaSize, pair.sectorSize, { discard: o.discardMap })
    let made: MapFile | undefined
    teardown.add('map', async () => {
      if (started) return placement.close()
      await made?.abandon()
      placement.abandon()
    })
    if (o.map !== 'rw') claims.add([{ role: 'map', path: o.map.file }])
    const opened = await MapFile.open({
      ...placement,
      ro: pair.ro,
      rw: pair.rw,
      identity,
      size: pair.mediaSize,
      sectorSize: pair.sectorSize,
      map,
      force: o.force,
      discard: o.discardMap,
      existing: o.existingMap,
      roAbsent,
    })
    if (!opened.resumed) made = opened.file
    warnings.push(...opened.warnings)
    if (opened.resumed) resumed = placement.describe
    mapFile = opened.file
  } else {
    // Without a map RW is taken as empty: not a RW that holds a map's changes.
    const discarded = await takeUnbound(identity, o.discardMap)
    if (discarded.length) {
      warnings.push(
        `--discard-map: the changes ${pair.rw.path} held for device ID ${describeIds(identity, discarded)} are discarded; it is taken as empty`,
      )
    }
  }
  const journal = mapFile && (o.journal?.(mapFile, map) ?? mapFile)
  const engine = new Engine({ ro: pair.ro, rw: pair.rw, size: pair.mediaSize, sectorSize: pair.sectorSize, map, journal })
  teardown.add('pending writes', async () => {
    await engine.drain()
    await engine.flush()
    await mapFile?.closeClean()
  })
  return {
    engine,
    pair,
    claims,
    mapFile,
    resumed,
    warnings,
    started: () => {
      started = true
    },
  }
}
