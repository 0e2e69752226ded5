// State left behind by a daemon that died (killed, crashed, machine reset):
// recognised, cleaned up with a message, and the NAME freed again.
import fs from 'node:fs'
import path from 'node:path'
import { detach, type Attachment } from '../attach/attachment.js'
import { fuseMounted } from '../attach/loop-over-fuse.js'
import { autoRwFile, removeAutoRw } from '../devices/auto-rw.js'
import { RowrError, isRowrError } from '../errors.js'
import { callControl, type ControlReply } from './control.js'
import { checkName, claim, liveness, release, statePaths, type DeviceState, type Liveness } from './run-state.js'

/** How long a daemon that is alive gets to answer before it counts as gone. */
const PING_MS = 5_000

export type Probe =
  | Exclude<Liveness, { kind: 'running' }>
  | (Extract<Liveness, { kind: 'running' }> & { readonly status: Record<string, unknown> })
  | { readonly kind: 'unresponsive'; readonly state: DeviceState }

/**
 * Liveness, with a running daemon also asked for its status. One whose
 * process exists but does not answer is 'unresponsive': maybe hung, maybe
 * another process that reused its pid; only destroy -f clears it.
 */
export const probe = async (name: string): Promise<Probe> => {
  const l = liveness(name)
  if (l.kind !== 'running') return l
  let reply: ControlReply
  try {
    reply = await callControl(statePaths(name).control, { cmd: 'status' }, PING_MS)
  } catch (e) {
    if (!isRowrError(e)) throw e
    return { kind: 'unresponsive', state: l.state }
  }
  if (!reply.ok) return { kind: 'unresponsive', state: l.state }
  const { ok: _ok, ...status } = reply
  return { ...l, status }
}

/** The kernel device a dead daemon may have left, from its state or its mount. */
const leftoverAttachment = (name: string, state: DeviceState | undefined): Attachment | null => {
  if (state?.attachment) return state.attachment
  const paths = statePaths(name)
  if (!fuseMounted(paths.mount)) return null
  let fusePid = 0
  try {
    fusePid = Number(fs.readFileSync(path.join(paths.dir, 'nbdfuse.pid'), 'utf8').trim()) || 0
  } catch {
    // nbdfuse never got as far as writing it; the mount is still removed.
  }
  return { kind: 'loop', device: '', mount: paths.mount, file: path.join(paths.mount, name), fusePid }
}

export const cleanupStale = async (
  name: string,
  stale: Extract<Liveness, { kind: 'stale' }>,
  log: (message: string) => void,
): Promise<void> => {
  const done: string[] = []
  const attachment = leftoverAttachment(name, stale.state)
  if (attachment) {
    await detach(attachment, { force: true })
    done.push(`detached ${attachment.device || attachment.kind}`)
  }
  if (stale.state?.rwAuto && !stale.state.map) {
    // 'auto' still: the daemon died while making it; only a file has a known name.
    const made = stale.state.rw !== 'auto'
    const rw = made ? stale.state.rw : autoRwFile(name)
    if (made || fs.existsSync(rw)) {
      await removeAutoRw(rw)
      done.push(`removed ${rw}`)
    }
  }
  release(name)
  log(`${name}: cleaned up after a daemon that is gone: ${stale.reason}${done.length ? `; ${done.join(', ')}` : ''}`)
}

/** Clears what a dead daemon left under NAME, if anything, saying so. */
export const clearStale = async (name: string, log: (message: string) => void): Promise<void> => {
  const l = await probe(name)
  if (l.kind === 'stale') await cleanupStale(name, l, log)
}

/** Takes NAME for a new device, first clearing what a dead daemon left. */
export const claimName = async (name: string, log: (message: string) => void): Promise<void> => {
  checkName(name)
  if (claim(name)) return
  const l = await probe(name)
  if (l.kind === 'stale') {
    await cleanupStale(name, l, log)
    if (claim(name)) return
  }
  if (l.kind === 'unresponsive') {
    throw new RowrError(
      'EINUSE',
      `${name} is held by daemon pid ${l.state.pid}, which does not answer; ` +
        `choose another name, or kill it and clean up with: geom-rowr destroy -f ${name}`,
    )
  }
  const holder = l.kind === 'running' ? ` (daemon pid ${l.state.pid}, ${l.state.device ?? l.state.nbd})` : ''
  throw new RowrError(
    'EINUSE',
    `${name} is already in use${holder}; choose another name or destroy it first: geom-rowr destroy ${name}`,
  )
}
