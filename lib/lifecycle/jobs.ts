// The lifecycle jobs over a device, running (in its daemon) or stopped (in
// the command's own process): diff, revert, commit and export. Each long job
// reports progress, stops at a safe point when its signal aborts, and leaves
// RO, RW and the map consistent either way.
import fs from 'node:fs'
import { deviceBusy } from '../attach/attachment.js'
import { BlockDevice } from '../devices/block-device.js'
import type { Engine } from '../engine/engine.js'
import { RowrError, errnoCode, isRowrError } from '../errors.js'
import { aboutPath } from '../failure-message.js'
import type { MapFile } from '../persist/map-file.js'
import { roFingerprint } from '../persist/fingerprint.js'
import type { DeviceClaims } from '../daemon/claims.js'

export interface WrittenRange {
  readonly offset: number
  readonly length: number
}

export interface JobContext {
  readonly engine: Engine
  /** The persistent map, if the device has one. */
  readonly mapFile: MapFile | undefined
  /** RO's path, for commit to open it for writing. */
  readonly ro: string
  /** The device's claims on RO, RW and map: commit takes RO alone through them. */
  readonly claims?: DeviceClaims
  readonly progress: (done: number, total: number) => void
  readonly signal: AbortSignal
}

/** Bytes copied per step of commit and export. */
const CHUNK = 1 << 20
/** Export skips all-zero pieces of this size, leaving holes. */
const HOLE_GRAIN = 64 << 10

export class JobCancelled extends Error {
  readonly code = 'ECANCELED'
  constructor(what: string) {
    super(`${what} was interrupted; nothing is half-done: it can be run again`)
  }
}

/** The written ranges, in byte offsets, in order. */
export const writtenRanges = (engine: Engine): WrittenRange[] => {
  const { map, sectorSize } = engine
  return Array.from(map.writtenRuns(), ([first, count]) => ({ offset: first * sectorSize, length: count * sectorSize }))
}

export interface RevertSummary {
  readonly revertedBytes: number
  /** Whether RW's space was given back (hole punching). */
  readonly released: boolean
}

/** Forgets every write: the device reads as RO again. */
export const revert = (ctx: JobContext): Promise<RevertSummary> =>
  ctx.engine.exclusive(async () => {
    const { engine } = ctx
    const revertedBytes = engine.map.writtenSectors * engine.sectorSize
    // The map is emptied durably before RW's data goes: a crash in between
    // leaves a device that reads as RO, never one that reads holes.
    await ctx.mapFile?.clear()
    engine.map.clear()
    const released = await engine.rw.release(0, engine.size)
    return { revertedBytes, released }
  })

export interface CommitSummary {
  readonly committedBytes: number
  readonly released: boolean
}

/** Opens RO for writing, or says plainly why it cannot be. */
const openRoForCommit = (ro: string): BlockDevice => {
  if (/\.uzip$/.test(ro)) {
    throw new RowrError('ENOTWRITABLE', `${ro} is a geom_uzip image, which cannot be written; use geom-rowr export to make a new image instead`)
  }
  try {
    return BlockDevice.open(ro, { writable: true })
  } catch (e) {
    if (isRowrError(e) && e.code === 'ENOTWRITABLE') {
      throw new RowrError('ENOTWRITABLE', `commit cannot write RO: ${e.message}; or use geom-rowr export to make a new image instead`, { cause: e })
    }
    throw e
  }
}

const checkNotInUse = async (ro: BlockDevice): Promise<void> => {
  if (ro.identity.kind === 'disk' && (await deviceBusy(ro.path))) {
    throw new RowrError('EBUSY', `${ro.path} is in use elsewhere (mounted or held open exclusively); release it before committing into it`)
  }
}

export interface CommitPlan {
  readonly dryRun: true
  /** The RO commit would write. */
  readonly ro: string
  readonly bytes: number
  readonly ranges: WrittenRange[]
}

/**
 * Opens RO for writing with every check commit makes, and takes it alone
 * (no other device may read it meanwhile); `work` runs with it.
 */
const withRoForCommit = async <T>(ctx: JobContext, work: (ro: BlockDevice) => Promise<T>): Promise<T> => {
  const roWritable = openRoForCommit(ctx.ro)
  try {
    await checkNotInUse(roWritable)
    if (roWritable.size < ctx.engine.size) throw new RowrError('EMEDIASIZE', `${ctx.ro} is smaller than the device`)
    const giveBack = ctx.claims?.holdRoForCommit()
    try {
      return await work(roWritable)
    } finally {
      giveBack?.()
    }
  } finally {
    roWritable.close()
  }
}

/** What commit would write, after every check it makes; writes nothing. */
export const planCommit = (ctx: JobContext): Promise<CommitPlan> =>
  withRoForCommit(ctx, async () => {
    const ranges = writtenRanges(ctx.engine)
    return { dryRun: true, ro: ctx.ro, bytes: ranges.reduce((sum, r) => sum + r.length, 0), ranges }
  })

/**
 * Folds the written sectors into RO (the one job that writes RO), then
 * empties the map. The device shows the same data throughout: requests wait
 * while it runs. Interrupted, the map still describes RW, which still holds
 * everything; running commit again finishes it.
 */
export const commit = (ctx: JobContext): Promise<CommitSummary> =>
  withRoForCommit(ctx, roWritable => {
    const { engine } = ctx
    return engine.exclusive(async () => {
      await engine.flush()
      await ctx.mapFile?.startCommit()
      const ranges = writtenRanges(engine)
      const total = ranges.reduce((sum, r) => sum + r.length, 0)
      const buf = Buffer.allocUnsafe(CHUNK)
      let done = 0
      for (const r of ranges) {
        for (let pos = r.offset; pos < r.offset + r.length; pos += CHUNK) {
          if (ctx.signal.aborted) throw new JobCancelled('commit')
          const n = Math.min(CHUNK, r.offset + r.length - pos)
          await engine.rw.read(buf, 0, n, pos)
          await roWritable.write(buf, 0, n, pos)
          done += n
          ctx.progress(done, total)
        }
      }
      await roWritable.datasync()
      await ctx.mapFile?.clear({ roHash: await roFingerprint(roWritable, engine.size, engine.sectorSize) })
      engine.map.clear()
      const released = await engine.rw.release(0, engine.size)
      return { committedBytes: total, released }
    })
  })

export interface ExportSummary {
  readonly file: string
  readonly bytes: number
  /** Bytes actually written; the rest of the image is holes. */
  readonly dataBytes: number
}

const allZero = (b: Buffer): boolean => {
  for (let i = 0; i < b.length; i += 8) if (b.readBigUInt64LE(i) !== 0n) return false
  return true
}

/**
 * Writes the combined device to a new sparse image FILE (remastering a live
 * system into a new base image). The device keeps serving meanwhile; an
 * interrupted export removes its partial file.
 */
export const exportImage = async (ctx: JobContext, file: string): Promise<ExportSummary> => {
  const { engine } = ctx
  try {
    const fd = fs.openSync(file, 'wx', 0o644)
    try {
      fs.ftruncateSync(fd, engine.size)
    } finally {
      fs.closeSync(fd)
    }
  } catch (e) {
    if (errnoCode(e) === 'EEXIST') throw new RowrError('EINUSE', `${file} already exists; remove it or choose another file name`)
    fs.rmSync(file, { force: true })
    throw e
  }
  let image: BlockDevice | undefined
  try {
    image = BlockDevice.open(file, { writable: true })
    const buf = Buffer.allocUnsafe(CHUNK)
    let dataBytes = 0
    for (let pos = 0; pos < engine.size; pos += CHUNK) {
      if (ctx.signal.aborted) throw new JobCancelled('export')
      const n = Math.min(CHUNK, engine.size - pos)
      const chunk = buf.subarray(0, n)
      await engine.readInto(chunk, pos)
      for (let at = 0; at < n; at += HOLE_GRAIN) {
        const length = Math.min(HOLE_GRAIN, n - at)
        if (allZero(chunk.subarray(at, at + length))) continue
        await image.write(chunk, at, length, pos + at)
        dataBytes += length
      }
      ctx.progress(pos + n, engine.size)
    }
    await image.datasync()
    return { file, bytes: engine.size, dataBytes }
  } catch (e) {
    fs.rmSync(file, { force: true })
    throw aboutPath(e, file)
  } finally {
    image?.close()
  }
}
