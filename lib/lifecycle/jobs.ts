// The lifecycle jobs over a device, running (in its daemon) or stopped (in
// the command's own process): diff, revert, commit and export. The engine
// does the work on RO, RW and the map; a job opens the files it needs,
// reports progress and stops at a safe point when its signal aborts, leaving
// RO, RW and the map consistent either way.
import fs from 'node:fs'
import { deviceBusy } from '../devices/device-busy.js'
import { BlockDevice, type BlockIo } from '../devices/block-device.js'
import type { Engine, WrittenRange } from '../engine/engine.js'
import { RowrError, errnoCode, isRowrError } from '../errors.js'
import { aboutPath } from '../failure-message.js'
import { openExportTarget, type DeviceClaims } from '../daemon/claims.js'

export interface JobContext {
  readonly engine: Engine
  /** RO's path, for commit to open it for writing. */
  readonly ro: string
  /** The device's claims on RO, RW and map: commit takes RO alone through them. */
  readonly claims?: DeviceClaims
  readonly progress: (done: number, total: number) => void
  /**
   * Names what the job does once the bytes are copied (e.g. "syncing"),
   * which can take long enough to look like a hang at 100%.
   */
  readonly step: (what: string) => void
  readonly signal: AbortSignal
}

/** Bytes copied per step of export. */
const CHUNK = 1 << 20
/** Export skips all-zero pieces of this size, leaving holes. */
const HOLE_GRAIN = 64 << 10

export class JobCancelled extends Error {
  readonly code = 'ECANCELED'
  constructor(what: string, outcome = 'nothing is half-done: it can be run again') {
    super(`${what} was interrupted; ${outcome}`)
  }
}

export interface RevertSummary {
  readonly revertedBytes: number
  /** Whether RW's space was given back (hole punching). */
  readonly released: boolean
}

/** Forgets every write: the device reads as RO again. */
export const revert = async (ctx: JobContext): Promise<RevertSummary> => {
  const { bytes, released } = await ctx.engine.revert()
  return { revertedBytes: bytes, released }
}

export interface CommitSummary {
  readonly committedBytes: number
  readonly released: boolean
}

/** Opens RO for writing, or says plainly why it cannot be. */
const openRoForCommit = (ro: string): BlockDevice => {
  if (/\.uzip$/.test(ro)) {
    throw new RowrError(
      'ENOTWRITABLE',
      `${ro} is a geom_uzip image, which cannot be written; use geom-rowr export to make a new image instead`,
    )
  }
  try {
    return BlockDevice.open(ro, { writable: true })
  } catch (e) {
    if (isRowrError(e) && e.code === 'ENOTWRITABLE') {
      throw new RowrError('ENOTWRITABLE', `commit cannot write RO: ${e.message}; or use geom-rowr export to make a new image instead`, {
        cause: e,
      })
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
  ctx.engine.requireRo('commit')
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
    const ranges = ctx.engine.writtenRanges()
    return { dryRun: true, ro: ctx.ro, bytes: ranges.reduce((sum, r) => sum + r.length, 0), ranges }
  })

/**
 * Folds the written sectors into RO (the one job that writes RO), then
 * empties the map (Engine.commitInto). Interrupted, running it again
 * finishes it.
 */
export const commit = (ctx: JobContext): Promise<CommitSummary> =>
  withRoForCommit(ctx, async roWritable => {
    const { bytes, released } = await ctx.engine.commitInto(roWritable, (done, total) => {
      ctx.progress(done, total)
      if (done < total && ctx.signal.aborted) throw new JobCancelled('commit')
      // Every byte is copied: the engine syncs RO next.
      if (done === total) ctx.step('syncing')
    })
    return { committedBytes: bytes, released }
  })

export interface ExportSummary {
  readonly file: string
  readonly bytes: number
  /** Bytes actually written; the rest of the image is holes (all of it onto a device). */
  readonly dataBytes: number
  /** Written onto an existing disk device (export --to-device). */
  readonly device: boolean
}

const allZero = (b: Buffer): boolean => {
  for (let i = 0; i < b.length; i += 8) if (b.readBigUInt64LE(i) !== 0n) return false
  return true
}

/**
 * Copies the combined device onto `out` and syncs it; with `skipZeros`,
 * all-zero pieces are not written (a new sparse file reads them as zeros).
 * Returns the bytes written.
 */
const copyOut = async (ctx: JobContext, out: BlockIo, skipZeros: boolean, cancelled: () => JobCancelled): Promise<number> => {
  const { engine } = ctx
  const buf = Buffer.allocUnsafe(CHUNK)
  let dataBytes = 0
  for (let pos = 0; pos < engine.size; pos += CHUNK) {
    if (ctx.signal.aborted) throw cancelled()
    const n = Math.min(CHUNK, engine.size - pos)
    const chunk = buf.subarray(0, n)
    await engine.read(chunk, pos)
    if (skipZeros) {
      for (let at = 0; at < n; at += HOLE_GRAIN) {
        const length = Math.min(HOLE_GRAIN, n - at)
        if (allZero(chunk.subarray(at, at + length))) continue
        await out.write(chunk, at, length, pos + at)
        dataBytes += length
      }
    } else {
      await out.write(chunk, 0, n, pos)
      dataBytes += n
    }
    ctx.progress(pos + n, engine.size)
  }
  ctx.step('syncing')
  await out.datasync()
  return dataBytes
}

/** Block and character devices: what BlockDevice opens as a disk. */
const isDisk = (st: fs.Stats | undefined): boolean => st !== undefined && (st.isBlockDevice() || st.isCharacterDevice())

/**
 * Writes the combined device to FILE: a new sparse image (remastering a live
 * system into a new base image), or with `toDevice` onto an existing disk
 * device, every byte of it. The device keeps serving meanwhile; an
 * interrupted export removes its partial file.
 */
export const exportImage = async (ctx: JobContext, file: string, { toDevice }: { toDevice: boolean }): Promise<ExportSummary> => {
  const st = fs.statSync(file, { throwIfNoEntry: false })
  if (toDevice) return exportOntoDisk(ctx, file, st)
  if (isDisk(st)) {
    throw new RowrError(
      'EINUSE',
      `${file} is a disk device, and export writes a new image file, never over an existing one: to write the device onto all of ${file} (overwriting it), give --to-device`,
    )
  }
  const { engine } = ctx
  try {
    const fd = fs.openSync(file, 'wx', 0o644)
    try {
      fs.ftruncateSync(fd, engine.size)
    } finally {
      fs.closeSync(fd)
    }
  } catch (e) {
    if (errnoCode(e) === 'EEXIST')
      throw new RowrError('EINUSE', `${file} already exists, and export never overwrites a file: choose another file name`)
    fs.rmSync(file, { force: true })
    throw e
  }
  let image: BlockDevice | undefined
  try {
    image = BlockDevice.open(file, { writable: true })
    const dataBytes = await copyOut(ctx, image, true, () => new JobCancelled('export'))
    return { file, bytes: engine.size, dataBytes, device: false }
  } catch (e) {
    fs.rmSync(file, { force: true })
    throw aboutPath(e, file)
  } finally {
    image?.close()
  }
}

/**
 * Every byte, zeros too. Skipping zeros would need the disk zeroed first:
 * a discard promises nothing about what reads back, and BLKZEROOUT writes
 * the zeros itself where the disk has no cheap way to zero (a USB stick,
 * the usual target), so it saves nothing there; writing them is one path
 * for every disk, and the disk reads back exactly as the device does.
 */
const exportOntoDisk = async (ctx: JobContext, disk: string, st: fs.Stats | undefined): Promise<ExportSummary> => {
  if (!isDisk(st)) {
    const what = st ? 'is not a disk device' : 'does not exist'
    throw new RowrError(
      'ENOTDEV',
      `${disk} ${what}, and --to-device writes onto an existing disk device: give a disk device, or drop --to-device to write a new image file`,
    )
  }
  const { engine } = ctx
  const target = openExportTarget(disk, ctx.claims)
  try {
    if (target.size < engine.size) {
      throw new RowrError(
        'EMEDIASIZE',
        `${disk} holds ${target.size} bytes, fewer than the device's ${engine.size}: choose a disk device of at least ${engine.size} bytes`,
      )
    }
    const cancelled = () => new JobCancelled('export', `${disk} holds part of the image; run it again to write all of it`)
    await copyOut(ctx, target, false, cancelled)
    return { file: disk, bytes: engine.size, dataBytes: engine.size, device: true }
  } catch (e) {
    throw aboutPath(e, disk)
  } finally {
    target.close()
  }
}
