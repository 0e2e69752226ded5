// The lifecycle jobs over a device, running (in its daemon) or stopped (in
// the command's own process): diff, revert, commit and export. The engine
// does the work on RO, RW and the map; a job opens the files it needs,
// reports progress and stops at a safe point when its signal aborts, leaving
// RO, RW and the map consistent either way.
import fs from 'node:fs'
import { deviceBusy } from '../attach/attachment.js'
import { BlockDevice } from '../devices/block-device.js'
import type { Engine, WrittenRange } from '../engine/engine.js'
import { RowrError, errnoCode, isRowrError } from '../errors.js'
import { aboutPath } from '../failure-message.js'
import type { DeviceClaims } from '../daemon/claims.js'

export interface JobContext {
  readonly engine: Engine
  /** RO's path, for commit to open it for writing. */
  readonly ro: string
  /** The device's claims on RO, RW and map: commit takes RO alone through them. */
  readonly claims?: DeviceClaims
  readonly progress: (done: number, total: number) => void
  readonly signal: AbortSignal
}

/** Bytes copied per step of export. */
const CHUNK = 1 << 20
/** Export skips all-zero pieces of this size, leaving holes. */
const HOLE_GRAIN = 64 << 10

export class JobCancelled extends Error {
  readonly code = 'ECANCELED'
  constructor(what: string) {
    super(`${what} was interrupted; nothing is half-done: it can be run again`)
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
    })
    return { committedBytes: bytes, released }
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
    if (errnoCode(e) === 'EEXIST') throw new RowrError('EINUSE', `${file} already exists, and export never overwrites a file: choose another file name`)
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
      await engine.read(chunk, pos)
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
