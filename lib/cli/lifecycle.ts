// geom-rowr diff, revert, commit and export: on running device NAME (the
// job runs in its daemon) or on a stopped one given as --ro/--rw/--map (the
// job runs here). Long jobs draw progress on a terminal and stop cleanly on
// Ctrl-C; --json prints the summary for scripts.
import path from 'node:path'
import readline from 'node:readline/promises'
import { callControl } from '../daemon/control.js'
import { answerOf, type ControlAnswer, type ControlRequest } from '../daemon/control-protocol.js'
import { statePaths } from '../daemon/run-state.js'
import { resolveDevicePath, resolveRwPath } from '../devices/device-path.js'
import { RowrError } from '../errors.js'
import {
  JobCancelled,
  commit as commitJob,
  exportImage,
  planCommit,
  revert as revertJob,
  type CommitPlan,
  type JobContext,
} from '../lifecycle/jobs.js'
import { openOffline, type OfflineTarget } from '../lifecycle/offline.js'
import { warn } from './foreground.js'
import { runningStatus } from './running-device.js'
import { progressBar } from './progress.js'

export interface TargetArgs {
  readonly name?: string
  readonly ro?: string
  readonly rw?: string
  readonly map?: string
  readonly 'map-on-rw': boolean
  readonly force: boolean
  readonly json: boolean
}

/** Ctrl-C's exit status. */
const EXIT_INTERRUPTED = 130
const POLL_MS = 250

const offlineTarget = (a: TargetArgs): OfflineTarget => ({
  ro: resolveDevicePath(a.ro!),
  rw: resolveRwPath(a.rw!),
  ...(a.map !== undefined ? { map: path.resolve(a.map) } : {}),
  mapOnRw: a['map-on-rw'],
  force: a.force,
})

/** Which device a command is about, as it is printed. */
const label = (a: TargetArgs): string => a.name ?? resolveRwPath(a.rw!)

/**
 * Runs a job in NAME's daemon, or here on the stopped devices. Ctrl-C asks
 * the job to stop at its next safe point; the command then exits 130.
 */
const runJob = async <R extends ControlRequest>(
  a: TargetArgs,
  title: string,
  request: R,
  job: (ctx: JobContext) => Promise<ControlAnswer<R>>,
): Promise<ControlAnswer<R> | undefined> => {
  const bar = progressBar(`${label(a)}: ${title}`)
  let interrupted = false
  let stop = (): void => undefined
  const onSigint = (): void => {
    interrupted = true
    stop()
  }
  process.on('SIGINT', onSigint)
  try {
    if (a.name !== undefined) {
      const name = a.name
      await runningStatus(name)
      const control = statePaths(name).control
      stop = () => void callControl(control, { cmd: 'cancel' }).catch(() => undefined)
      const poll = process.stderr.isTTY
        ? setInterval(() => {
            callControl(control, { cmd: 'status' })
              .then(r => {
                if (!r.ok || !r.job) return
                bar.update(r.job.done, r.job.total)
                if (r.job.step) bar.step(r.job.step)
              })
              .catch(() => undefined)
          }, POLL_MS)
        : undefined
      try {
        const reply = await callControl(control, request, null)
        if (!reply.ok) {
          if (reply.code === 'ECANCELED' && interrupted) return interruptedBy(reply.message)
          throw new RowrError(reply.code === 'EBUSY' ? 'EBUSY' : 'EDAEMON', reply.message)
        }
        return answerOf(reply)
      } finally {
        clearInterval(poll)
      }
    }
    const target = offlineTarget(a)
    const device = await openOffline(target, warn)
    for (const w of device.warnings) warn(`warning: ${w}`)
    const abort = new AbortController()
    stop = () => abort.abort()
    // Ctrl-C while the devices were being opened: the job stops at its first safe point.
    if (interrupted) stop()
    try {
      return await job({
        engine: device.engine,
        ro: target.ro,
        claims: device.claims,
        signal: abort.signal,
        progress: bar.update,
        step: bar.step,
      })
    } catch (e) {
      if (interrupted && e instanceof JobCancelled) return interruptedBy(e.message)
      throw e
    } finally {
      await device.close()
    }
  } finally {
    bar.end()
    process.off('SIGINT', onSigint)
  }
}

const interruptedBy = (message: string): undefined => {
  warn(message)
  process.exitCode = EXIT_INTERRUPTED
  return undefined
}

const print = (a: TargetArgs, summary: object, text: string): void => {
  process.stdout.write(a.json ? `${JSON.stringify(summary, null, 2)}\n` : `${text}\n`)
}

export const diff = async (a: TargetArgs): Promise<void> => {
  const result = await runJob(a, 'diff', { cmd: 'diff' }, async ctx => ({ ranges: ctx.engine.writtenRanges() }))
  if (!result) return
  const writtenBytes = result.ranges.reduce((sum, r) => sum + r.length, 0)
  if (a.json) {
    print(a, { writtenBytes, ranges: result.ranges }, '')
    return
  }
  process.stdout.write(result.ranges.map(r => `${r.offset} ${r.length}\n`).join(''))
  warn(`${label(a)}: ${result.ranges.length} written range(s), ${writtenBytes} bytes`)
}

export const revert = async (a: TargetArgs): Promise<void> => {
  const s = await runJob(a, 'revert', { cmd: 'revert', force: a.force }, revertJob)
  if (!s) return
  print(a, s, `${label(a)}: reverted: ${s.revertedBytes} bytes of writes forgotten${s.released ? '; their space on RW was released' : ''}`)
}

export interface CommitArgs extends TargetArgs {
  readonly yes: boolean
  readonly 'dry-run': boolean
}

/** Asks on the terminal; true for y or yes. */
const confirm = async (question: string): Promise<boolean> => {
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr })
  try {
    return /^y(es)?$/i.test((await rl.question(question)).trim())
  } finally {
    rl.close()
  }
}

const printPlan = (a: TargetArgs, plan: CommitPlan): void => {
  if (a.json) {
    print(a, plan, '')
    return
  }
  process.stdout.write(plan.ranges.map(r => `${r.offset} ${r.length}\n`).join(''))
  warn(
    `${label(a)}: commit --dry-run: would write ${plan.bytes} bytes in ${plan.ranges.length} range(s) into ${plan.ro}; nothing was written`,
  )
}

/**
 * commit overwrites RO, which cannot be undone: on a terminal it shows what
 * it would write and asks first (unless -y); without one it needs -y.
 * --dry-run makes every check and prints the ranges, writing nothing.
 */
export const commit = async (a: CommitArgs): Promise<void> => {
  const plan = (): Promise<CommitPlan | undefined> =>
    runJob(a, 'commit --dry-run', { cmd: 'commit', force: a.force, dryRun: true }, planCommit)
  if (a['dry-run']) {
    const p = await plan()
    if (p) printPlan(a, p)
    return
  }
  if (!a.yes) {
    if (!process.stdin.isTTY || !process.stderr.isTTY) {
      throw new RowrError(
        'ENOTCONFIRMED',
        `${label(a)}: commit overwrites RO with the device's writes, which cannot be undone, so it asks first, and there is no terminal to ask on: ` +
          'give -y (--yes) to commit without asking, or --dry-run to see what it would write',
      )
    }
    const p = await plan()
    if (!p) return
    if (
      p.bytes > 0 &&
      !(await confirm(
        `geom-rowr: ${label(a)}: overwrite ${p.ro} with ${p.bytes} bytes in ${p.ranges.length} range(s)? This cannot be undone. [y/N] `,
      ))
    ) {
      throw new RowrError('ENOTCONFIRMED', `${label(a)}: not committed; nothing was written`)
    }
  }
  const s = await runJob(a, 'commit', { cmd: 'commit', force: a.force, dryRun: false }, commitJob)
  if (!s) return
  print(
    a,
    s,
    `${label(a)}: committed ${s.committedBytes} bytes into RO; the map is empty${s.released ? " and RW's space was released" : ''}`,
  )
}

export interface ExportArgs extends TargetArgs {
  readonly file: string
  readonly 'to-device': boolean
}

export const exportCommand = async (a: ExportArgs): Promise<void> => {
  const file = path.resolve(a.file)
  const toDevice = a['to-device']
  const s = await runJob(a, 'export', { cmd: 'export', file, toDevice }, ctx => exportImage(ctx, file, { toDevice }))
  if (!s) return
  const text = s.device
    ? `${label(a)}: exported ${s.bytes} bytes onto ${s.file}, every byte written`
    : `${label(a)}: exported ${s.bytes} bytes to ${s.file} (${s.dataBytes} bytes of data; the rest is sparse)`
  print(a, s, text)
}
