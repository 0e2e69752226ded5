// A stopped device opened in this process, for the lifecycle commands given
// --ro RO --rw RW --map MAP (or --map-on-rw) in place of NAME.
import fs from 'node:fs'
import { assemble } from '../daemon/assembly.js'
import type { DeviceClaims } from '../daemon/claims.js'
import { Teardown } from '../daemon/teardown.js'
import { BlockDevice } from '../devices/block-device.js'
import type { Engine } from '../engine/engine.js'
import { RowrError } from '../errors.js'
import { MapFile } from '../persist/map-file.js'
import { mapOnRwBase } from '../persist/map-store.js'

export interface OfflineTarget {
  readonly ro: string
  readonly rw: string
  /** The map file; undefined with mapOnRw. */
  readonly map?: string
  readonly mapOnRw: boolean
  readonly force: boolean
}

interface OfflineDevice {
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
export const openOffline = async (t: OfflineTarget, log: (message: string) => void): Promise<OfflineDevice> => {
  if (t.map !== undefined && !fs.existsSync(t.map)) {
    throw new RowrError('ENOENT', `map ${t.map} does not exist: give the map this device was created with`)
  }
  // The map knows its sector size; the devices' own may be smaller.
  const sectorSize = await mapSectorSize(t)
  const teardown = new Teardown(log)
  try {
    const assembly = await assemble(
      {
        ro: t.ro,
        rw: t.rw,
        ...(sectorSize ? { sectorSize } : {}),
        claimant: { offline: true },
        map: t.mapOnRw ? 'rw' : { file: t.map! },
        force: t.force,
        discardMap: false,
        existingMap: true,
      },
      teardown,
    )
    assembly.started()
    return {
      engine: assembly.engine,
      claims: assembly.claims,
      warnings: assembly.warnings,
      close: () => teardown.run({ force: false }),
    }
  } catch (e) {
    await teardown.run({ force: true }).catch(() => undefined)
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
