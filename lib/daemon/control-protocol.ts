// What the CLI and a running daemon say to each other over the control
// socket: one type per request and per answer, shared by both sides. The
// daemon checks a request's shape once, where it reads it (isControlRequest);
// the CLI takes the answers of its own daemon as typed.
import type { EngineStats, WrittenRange } from '../engine/engine.js'
import type { HydrationStatus } from '../engine/hydration.js'
import type { Health, IoErrorCounts } from '../engine/io-errors.js'
import type { GGateStats } from '../ggate/front-end.js'
import type { CommitPlan, CommitSummary, ExportSummary, RevertSummary } from '../lifecycle/jobs.js'
import type { DeviceState } from './run-state.js'

export type ControlRequest =
  | { readonly cmd: 'status' }
  | { readonly cmd: 'destroy'; readonly force: boolean }
  | { readonly cmd: 'diff' }
  | { readonly cmd: 'revert'; readonly force: boolean }
  /** dryRun: every check, and the ranges it would write, without writing. */
  | { readonly cmd: 'commit'; readonly force: boolean; readonly dryRun: boolean }
  /** toDevice: `file` is an existing disk device, overwritten whole (export --to-device). */
  | { readonly cmd: 'export'; readonly file: string; readonly toDevice: boolean }
  /** Clears the statistics and the error counts: the device is ok again. */
  | { readonly cmd: 'reset' }
  /** Stops the running job at its next safe point. */
  | { readonly cmd: 'cancel' }
  | HydrateRequest

/** Starts (or resumes) or pauses hydration, and changes its settings (lib/daemon/device-hydration.ts). */
export interface HydrateRequest {
  readonly cmd: 'hydrate'
  readonly action: 'start' | 'pause'
  /** Bytes per second; 0: no limit. */
  readonly rate?: number
  /** Above 0, at most 1. */
  readonly share?: number
  readonly copyOnRead?: boolean
}

/** A device's hydration as status and the hydrate command show it. */
export interface HydrationReport {
  readonly hydration: HydrationStatus & { readonly copyOnRead: boolean }
  /** False once RO is released. */
  readonly roHeld: boolean
}

type ControlCommand = ControlRequest['cmd']

/** A lifecycle job running in the daemon, as far as it got. */
export interface JobProgress {
  readonly name: string
  readonly done: number
  readonly total: number
  /** What it does past the copying (its final sync), named while it does it. */
  readonly step?: string
}

/** What `status --json NAME` prints: the device's state without its internals, and its counters. */
export interface DeviceStatus extends Omit<DeviceState, 'attachment' | 'phase'> {
  readonly health: Health
  readonly errors: IoErrorCounts
  /** Bytes RW has allocated, where the platform can tell. */
  readonly rwAllocated?: number
  readonly writtenBytes: number
  /** NBD client connections. */
  readonly connections: number
  readonly stats: EngineStats
  /** Only with a GEOM Gate provider. */
  readonly ggate?: GGateStats
  /** Only with a persistent map: its device ID. */
  readonly mapUuid?: string
  readonly job?: JobProgress
  /** Absent from the status of a daemon older than hydration. */
  readonly hydration?: HydrationReport['hydration']
  readonly roHeld?: boolean
}

/** The answer to each command, for the daemon that gives it. */
interface ControlAnswers {
  readonly status: DeviceStatus
  readonly destroy: Record<never, never>
  readonly diff: { readonly ranges: readonly WrittenRange[] }
  readonly revert: RevertSummary
  readonly commit: CommitSummary | CommitPlan
  readonly export: ExportSummary
  readonly reset: { readonly cleared: IoErrorCounts }
  readonly cancel: { readonly cancelled: string | null }
  readonly hydrate: HydrationReport
}

/** The answer to one request, as its sender knows it: a dry-run commit answers with a plan. */
export type ControlAnswer<R extends ControlRequest> = R extends { readonly cmd: 'commit'; readonly dryRun: true }
  ? CommitPlan
  : R extends { readonly cmd: 'commit'; readonly dryRun: false }
    ? CommitSummary
    : ControlAnswers[R['cmd']]

export interface ControlFailure {
  readonly ok: false
  readonly code: string
  readonly message: string
}

export type ControlReply<A> = ({ readonly ok: true } & A) | ControlFailure

/** The answer a successful reply carries, without its `ok`. */
export const answerOf = <A extends object>(reply: { readonly ok: true } & A): A => {
  const answer: { ok?: true } & A = { ...reply }
  delete answer.ok
  return answer
}

/** The daemon's side: one handler per command. */
export type ControlHandlers = {
  readonly [C in ControlCommand]: (request: Extract<ControlRequest, { readonly cmd: C }>) => Promise<ControlAnswers[C]>
}

/** Runs the handler a request names; a handler's throw is the caller's to turn into a failure. */
export const dispatch = async (handlers: ControlHandlers, request: ControlRequest): Promise<ControlReply<object>> => {
  // TypeScript cannot correlate request.cmd with the handler it selects.
  const handler = handlers[request.cmd] as (r: ControlRequest) => Promise<object>
  return { ok: true, ...(await handler(request)) }
}

const isBoolean = (v: object, key: string): boolean => key in v && typeof (v as Record<string, unknown>)[key] === 'boolean'

const isHydrateRequest = (v: object): boolean => {
  const r = v as Partial<Record<keyof HydrateRequest, unknown>>
  return (
    (r.action === 'start' || r.action === 'pause') &&
    (r.rate === undefined || (Number.isSafeInteger(r.rate) && (r.rate as number) >= 0)) &&
    (r.share === undefined || (typeof r.share === 'number' && r.share > 0 && r.share <= 1)) &&
    (r.copyOnRead === undefined || typeof r.copyOnRead === 'boolean')
  )
}

/** Whether a message read from the socket is a request this daemon understands. */
export const isControlRequest = (v: unknown): v is ControlRequest => {
  if (typeof v !== 'object' || v === null || !('cmd' in v)) return false
  switch (v.cmd) {
    case 'status':
    case 'diff':
    case 'cancel':
    case 'reset':
      return true
    case 'commit':
      return isBoolean(v, 'force') && isBoolean(v, 'dryRun')
    case 'destroy':
    case 'revert':
      return isBoolean(v, 'force')
    case 'hydrate':
      return isHydrateRequest(v)
    case 'export':
      return 'file' in v && typeof v.file === 'string' && v.file.startsWith('/') && 'toDevice' in v && typeof v.toDevice === 'boolean'
    default:
      return false
  }
}
