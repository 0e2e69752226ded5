// geom-rowr list and status.
import { listNames } from '../daemon/run-state.js'
import { describeAutoRw } from '../devices/auto-rw.js'
import { cleanupStale, heldMessage, probe, waitingMessage, type Probe } from '../daemon/stale.js'
import { isRowrError } from '../errors.js'
import { runningStatus } from './running-device.js'
import { warn } from './foreground.js'
import { human } from '../units.js'
import { clock } from './progress.js'
import { healthLine, type IoErrorCounts } from '../engine/io-errors.js'
import type { DeviceStatus, HydrationReport, JobProgress } from '../daemon/control-protocol.js'

interface StatusArgs {
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
    process.stdout.write(`${JSON.stringify(statuses, null, 2)}\n`)
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
  for (const r of rows) process.stdout.write(`${r.map((c, i) => (i < r.length - 1 ? c.padEnd(widths[i]!) : c)).join('  ')}\n`)
}

const jobLine = (j: JobProgress): string => `${j.name}, ${human(j.done)} of ${human(j.total)}${j.step ? `, ${j.step}` : ''}`

/** The status line of a device's hydration: state, share done, bytes, rate, ETA, settings. */
export const hydrationLine = (h: HydrationReport['hydration'], mediasize: number): string => {
  const done = mediasize - h.remainingBytes
  const percent = mediasize > 0 ? ((100 * done) / mediasize).toFixed(1) : '100.0'
  const rate =
    h.state === 'running' && h.rateBytesPerSecond > 0
      ? `, ${human(h.rateBytesPerSecond)}/s, ETA ${clock(h.remainingBytes / h.rateBytesPerSecond)}`
      : ''
  const settings = [
    h.rateLimit > 0 ? `rate limit ${human(h.rateLimit)}/s` : 'no rate limit',
    `at least ${Math.round(h.share * 100)}% under client load`,
    `copy-on-read ${h.copyOnRead ? 'on' : 'off'}`,
  ]
  const error = h.error ? ` (${h.error})` : ''
  return `${h.state}${error}, ${percent}% on RW (${human(h.copiedBytes)} copied, ${human(h.remainingBytes)} still on RO)${rate}; ${settings.join(', ')}`
}

/** A daemon started by an older geom-rowr does not count errors. */
const stateLine = (s: DeviceStatus): string => {
  const errors: IoErrorCounts | undefined = s.errors
  if (errors === undefined) return `unknown: the daemon of ${s.name} (pid ${s.pid}) predates error counting`
  const state = healthLine(errors)
  return errors.last === null ? state : `${state}; geom-rowr reset ${s.name} clears it`
}

const mapLine = (s: DeviceStatus): string => {
  if (s.map === null) return 'in memory only (lost on destroy)'
  return s.map === 'rw' ? `in RW's tail (${s.mapUuid})` : `${s.map} (${s.mapUuid})`
}

const describe = (s: DeviceStatus): string => {
  const st = s.stats
  const { mediasize, writtenBytes: written } = s
  const lines: [string, string][] = [
    ['state', stateLine(s)],
    ['device', s.device ?? '(none: NBD only)'],
    ['nbd', s.nbd],
    ['ro', `${s.ro} (${s.roHeld === false ? 'released: hydrated' : 'opened read-only'})`],
    ['rw', s.rwAuto ? `${describeAutoRw(s.rw, mediasize, s.map !== null)}, made by geom-rowr` : s.rw],
    ...(s.rwAllocated === undefined
      ? []
      : [['rw allocated', `${s.rwAllocated} (${human(s.rwAllocated)}) on RW itself`] as [string, string]]),
    ['map', mapLine(s)],
    ['mediasize', `${mediasize} (${human(mediasize)})`],
    ['sectorsize', String(s.sectorsize)],
    ['written', `${written} (${human(written)}, ${((100 * written) / mediasize).toFixed(2)}%) in ${st.writtenSectors} sectors`],
    ...(s.hydration ? [['hydration', hydrationLine(s.hydration, mediasize)] as [string, string]] : []),
    ['reads', `${st.reads}: ${st.readBytesFromRo} bytes from RO, ${st.readBytesFromRw} bytes from RW`],
    ['writes', `${st.writes}: ${st.writeBytes} bytes, ${st.partialSectorWrites} with partial sectors`],
    ['inline writes', `${st.inlineWrites} RW writes on the event loop, ${st.writeStalls} of them stalled it`],
    ['zero-writes', `${st.zeroes}: ${st.zeroBytes} bytes (TRIM and WRITE_ZEROES)`],
    ['flushes', String(st.flushes)],
    ['overlap waits', String(st.overlapWaits)],
    ['map memory', human(st.mapBytes)],
    ['connections', String(s.connections)],
    ['pid', String(s.pid)],
    ...(s.job ? [['job', jobLine(s.job)] as [string, string]] : []),
  ]
  return `${s.name}\n${lines.map(([k, v]) => `  ${`${k}:`.padEnd(15)}${v}`).join('\n')}\n`
}

export const status = async ({ name, json }: StatusArgs): Promise<void> => {
  let statuses: DeviceStatus[]
  if (name !== undefined) {
    statuses = [await runningStatus(name)]
  } else {
    statuses = []
    for (const { probe: p } of await probeAll()) {
      if (p.kind === 'running') statuses.push(p.status)
    }
  }
  if (json) {
    process.stdout.write(`${JSON.stringify(name !== undefined ? statuses[0] : statuses, null, 2)}\n`)
  } else {
    process.stdout.write(statuses.map(describe).join('\n'))
  }
}
