// geom-rowr hydrate: start, resume or pause a running device's hydration
// (the background copy of RO to RW, after which RO is released), change its
// rate, share and copy-on-read, and with --wait follow it to the end.
import { callControl } from '../daemon/control.js'
import type { DeviceStatus, HydrateRequest, HydrationReport } from '../daemon/control-protocol.js'
import { statePaths } from '../daemon/run-state.js'
import { RowrError } from '../errors.js'
import { hydrationLine } from './list.js'
import { progressBar } from './progress.js'
import { runningStatus } from './running-device.js'

interface HydrateArgs {
  readonly name: string
  readonly action: HydrateRequest['action']
  readonly rate?: number
  readonly share?: number
  readonly copyOnRead?: boolean
  readonly wait: boolean
}

const POLL_MS = 500

/** A device's hydration, from the status of its daemon. */
const hydrationOf = (status: DeviceStatus): HydrationReport => {
  const { hydration, roHeld } = status
  if (!hydration || roHeld === undefined) {
    throw new RowrError(
      'EDAEMON',
      `the daemon of ${status.name} (pid ${status.pid}) predates hydration: destroy and create the device again`,
    )
  }
  return { hydration, roHeld }
}

export const hydrate = async (a: HydrateArgs): Promise<void> => {
  const before = await runningStatus(a.name)
  hydrationOf(before)
  const control = statePaths(a.name).control
  const request: HydrateRequest = {
    cmd: 'hydrate',
    action: a.action,
    ...(a.rate !== undefined ? { rate: a.rate } : {}),
    ...(a.share !== undefined ? { share: a.share } : {}),
    ...(a.copyOnRead !== undefined ? { copyOnRead: a.copyOnRead } : {}),
  }
  const reply = await callControl(control, request, null)
  if (!reply.ok) throw new RowrError(reply.code === 'EHYDRATE' ? 'EHYDRATE' : 'EDAEMON', reply.message)
  const { mediasize } = before
  let report: HydrationReport = reply
  let h = report.hydration
  // Done is followed by RO's release, which --wait waits for too.
  const going = (): boolean => h.state === 'running' || (h.state === 'done' && report.roHeld)
  if (a.wait && going()) {
    const bar = progressBar(`hydrating ${a.name}`)
    while (going()) {
      bar.update(mediasize - h.remainingBytes, mediasize)
      await new Promise(resolve => setTimeout(resolve, POLL_MS))
      report = hydrationOf(await runningStatus(a.name))
      h = report.hydration
    }
    bar.update(mediasize - h.remainingBytes, mediasize)
    bar.end()
  }
  process.stdout.write(`${a.name}: hydration ${hydrationLine(h, mediasize)}${report.roHeld ? '' : '; RO released'}\n`)
  if (a.wait && h.state === 'failed')
    throw new RowrError('EDAEMON', `hydration of ${a.name} failed: ${h.error}; geom-rowr hydrate --resume ${a.name} retries`)
}
