// geom-rowr list and status.
import { listNames } from '../daemon/run-state.js'
import { describeAutoRw } from '../devices/auto-rw.js'
import { cleanupStale, heldMessage, probe, waitingMessage, type Probe } from '../daemon/stale.js'
import { RowrError, isRowrError } from '../errors.js'
import { noSuchDevice } from './destroy.js'
import { warn } from './foreground.js'
import { human } from '../units.js'
import { clock } from './progress.js'
import { healthLine, type IoErrorCounts } from '../engine/io-errors.js'
import type { HydrationStatus } from '../engine/hydration.js'

export interface StatusArgs {
  readonly name?: string
  readonly json: boolean
}

/** Probes every NAME, cleaning up after dead daemons on the way. */
const probeAll = async (): Promise<{ name: string; probe: Probe }[]> => {
  const out: { name: string; probe: Probe }[] = []
  for (const name of listNames()) {
    const p = await probe(name)
    if (p.kind === 'absent') continue
    if (p.kind !== 'stale') {
      out.push({ name, probe: p })
      continue
    }
    try {
      await cleanupStale(name, p, warn)
    } catch (e) {
      // Opened since the probe: it stays, and the others are still listed.
      if (!(isRowrError(e) && e.code === 'EBUSY')) throw e
      warn(e.message)
    }
  }
  return out
}

export const list = async ({ json }: { json: boolean }): Promise<void> => {
  const probes = await probeAll()
  if (json) {
    // Devices still starting or not answering have no status to give.
    const statuses = probes.flatMap(({ probe: p }) => (p.kind === 'running' ? [p.status] : []))
    process.stdout.write(JSON.stringify(statuses, null, 2) + '\n')
    return
  }
  const rows = [['NAME', 'DEVICE', 'MEDIASIZE', 'RO', 'RW']]
  for (const { name, probe: p } of probes) {
    if (p.kind === 'starting') rows.push([name, '(starting)', '-', '-', '-'])
    else if (p.kind === 'waiting') {
      const s = p.state
      rows.push([name, `${s.attachment.device} (waiting for its daemon)`, String(s.mediasize), s.ro, s.rw])
      warn(waitingMessage(p))
    } else if (p.kind === 'held') {
      const s = p.state
      rows.push([name, `${s.attachment.device} (open, its daemon is gone)`, String(s.mediasize), s.ro, s.rw])
      warn(heldMessage(p))
    } else if (p.kind === 'running' || p.kind === 'unresponsive') {
      const s = p.state
      const device = p.kind === 'unresponsive' ? '(not answering)' : (s.device ?? s.nbd)
      rows.push([name, device, String(s.mediasize), s.ro, s.rw])
    }
  }
  if (rows.length === 1) return
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map(r => r[i]!.length)))
  for (const r of rows) process.stdout.write(r.map((c, i) => (i < r.length - 1 ? c.padEnd(widths[i]!) : c)).join('  ') + '\n')
}

type Status = Record<string, unknown> & {
  name: string
  stats: Record<string, number>
}

export interface HydrationShown extends HydrationStatus {
  readonly copyOnRead: boolean
}

/** The status line of a device's hydration: state, share done, bytes, rate, ETA, settings. */
export const hydrationLine = (h: HydrationShown, mediasize: number): string => {
  const done = mediasize - h.remainingBytes
  const percent = mediasize > 0 ? ((100 * done) / mediasize).toFixed(1) : '100.0'
  const rate = h.state === 'running' && h.rateBytesPerSecond > 0 ? `, ${human(h.rateBytesPerSecond)}/s, ETA ${clock(h.remainingBytes / h.rateBytesPerSecond)}` : ''
  const settings = [
    h.rateLimit > 0 ? `rate limit ${human(h.rateLimit)}/s` : 'no rate limit',
    `at least ${Math.round(h.share * 100)}% under client load`,
    `copy-on-read ${h.copyOnRead ? 'on' : 'off'}`,
  ]
  const error = h.error ? ` (${h.error})` : ''
  return `${h.state}${error}, ${percent}% on RW (${human(h.copiedBytes)} copied, ${human(h.remainingBytes)} still on RO)${rate}; ${settings.join(', ')}`
}

const jobLine = (j: { name: string; done: number; total: number }): string =>
  `${j.name}, ${human(j.done)} of ${human(j.total)}`

/** A daemon started by an older geom-rowr does not count errors. */
const stateLine = (s: Status): string => {
  const errors = s.errors as IoErrorCounts | undefined
  if (errors === undefined) return `unknown: the daemon of ${s.name} (pid ${String(s.pid)}) predates error counting`
  const state = healthLine(errors)
  return errors.last === null ? state : `${state}; geom-rowr reset ${s.name} clears it`
}

const describe = (s: Status): string => {
  const st = s.stats
  const mediasize = Number(s.mediasize)
  const written = Number(s.writtenBytes)
  const lines: [string, string][] = [
    ['state', stateLine(s)],
    ['device', String(s.device ?? '(none: NBD only)')],
    ['nbd', String(s.nbd)],
    ['ro', `${String(s.ro)} (${s.roHeld === false ? 'released: hydrated' : 'opened read-only'})`],
    ['rw', s.rwAuto ? `${describeAutoRw(String(s.rw), mediasize, s.map !== null)}, made by geom-rowr` : String(s.rw)],
    ...(s.rwAllocated === undefined ? [] : [['rw allocated', `${Number(s.rwAllocated)} (${human(Number(s.rwAllocated))}) on RW itself`] as [string, string]]),
    ['map', s.map === null ? 'in memory only (lost on destroy)' : s.map === 'rw' ? `in RW's tail (${String(s.mapUuid)})` : `${String(s.map)} (${String(s.mapUuid)})`],
    ['mediasize', `${mediasize} (${human(mediasize)})`],
    ['sectorsize', String(s.sectorsize)],
    ['written', `${written} (${human(written)}, ${((100 * written) / mediasize).toFixed(2)}%) in ${st.writtenSectors} sectors`],
    ...(s.hydration ? [['hydration', hydrationLine(s.hydration as HydrationShown, mediasize)] as [string, string]] : []),
    ['reads', `${st.reads}: ${st.readBytesFromRo} bytes from RO, ${st.readBytesFromRw} bytes from RW`],
    ['writes', `${st.writes}: ${st.writeBytes} bytes, ${st.partialSectorWrites} with partial sectors`],
    ['inline writes', `${st.inlineWrites} RW writes on the event loop, ${st.writeStalls} of them stalled it`],
    ['zero-writes', `${st.zeroes}: ${st.zeroBytes} bytes (TRIM and WRITE_ZEROES)`],
    ['flushes', String(st.flushes)],
    ['overlap waits', String(st.overlapWaits)],
    ['map memory', human(st.mapBytes!)],
    ['connections', String(s.connections)],
    ['pid', String(s.pid)],
    ...(s.job ? [['job', jobLine(s.job as { name: string; done: number; total: number })] as [string, string]] : []),
  ]
  return `${s.name}\n${lines.map(([k, v]) => `  ${`${k}:`.padEnd(15)}${v}`).join('\n')}\n`
}

/** The status of running device NAME, or an error that says why there is none. */
export const runningStatus = async (name: string): Promise<Record<string, unknown>> => {
  const p = await probe(name)
  if (p.kind === 'stale') await cleanupStale(name, p, warn)
  if (p.kind === 'absent' || p.kind === 'stale') throw noSuchDevice(name)
  if (p.kind === 'starting') throw new RowrError('EBUSY', `${name} is still being created; try again in a moment`)
  if (p.kind === 'waiting') throw new RowrError('EDAEMON', waitingMessage(p))
  if (p.kind === 'held') throw new RowrError('EDAEMON', heldMessage(p))
  if (p.kind === 'unresponsive') {
    throw new RowrError(
      'EDAEMON',
      `the daemon of ${name} (pid ${p.state.pid}) does not answer; geom-rowr destroy -f ${name} kills it and cleans up`,
    )
  }
  return p.status
}

export const status = async ({ name, json }: StatusArgs): Promise<void> => {
  let statuses: Status[]
  if (name !== undefined) {
    statuses = [(await runningStatus(name)) as Status]
  } else {
    statuses = []
    for (const { probe: p } of await probeAll()) {
      if (p.kind === 'running') statuses.push(p.status as Status)
    }
  }
  if (json) {
    process.stdout.write(JSON.stringify(name !== undefined ? statuses[0] : statuses, null, 2) + '\n')
  } else {
    process.stdout.write(statuses.map(describe).join('\n'))
  }
}
