// State left behind by a daemon that died (killed, crashed, machine reset):
// recognised, cleaned up with a message, and the NAME freed again.
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { detach, type Attachment } from '../attach/attachment.js'
import { fuseMounted } from '../attach/loop-over-fuse.js'
import { nbdConfigured, type NbdModuleAttachment } from '../attach/nbd-module.js'
import { autoRwFile, removeAutoRw } from '../devices/auto-rw.js'
import { tryLock } from '../devices/file-lock.js'
import { geomProviders, providerUses } from '../devices/geom-users.js'
import type { GGateAttachment } from '../ggate/provider.js'
import { RowrError, errnoCode, isRowrError } from '../errors.js'
import { callControl } from './control.js'
import { answerOf, type ControlReply, type DeviceStatus } from './control-protocol.js'
import { logPath } from './daemon-log.js'
import { checkName, claim, liveness, readState, release, statePaths, type DeviceState, type Liveness } from './run-state.js'

/** How long a daemon that is alive gets to answer before it counts as gone. */
const PING_MS = 5_000

export type Probe =
  | Exclude<Liveness, { kind: 'running' }>
  | (Extract<Liveness, { kind: 'running' }> & { readonly status: DeviceStatus })
  | { readonly kind: 'unresponsive'; readonly state: DeviceState }
  | Waiting
  | Held

/**
 * A device with a map whose daemon died while its kernel device stays: the
 * kernel's nbd driver keeps it configured, and a GEOM Gate provider lives
 * until it is destroyed. The kernel holds its I/O for a new daemon
 * (geom-rowr create of the same NAME, devices and map) to take over.
 */
export interface Waiting {
  readonly kind: 'waiting'
  readonly state: DeviceState & { readonly attachment: NbdModuleAttachment | GGateAttachment; readonly map: string }
  readonly reason: string
}

/**
 * A GEOM Gate provider without a map whose daemon died while it is open
 * (mounted): nothing can serve it again, and taking it away fails its
 * users' I/O, so only destroy -f does that. Its I/O waits meanwhile
 * (GEOM Gate's timeout is 0).
 */
interface Held {
  readonly kind: 'held'
  readonly state: DeviceState & { readonly attachment: GGateAttachment }
  readonly reason: string
  readonly uses: readonly string[]
}

/** What a dead daemon's kernel device still is, if the kernel keeps it. */
const leftInKernel = async (l: Extract<Liveness, { kind: 'stale' }>): Promise<Waiting | Held | undefined> => {
  const s = l.state
  const attachment = s?.attachment
  if (!s || !attachment) return undefined
  if (attachment.kind === 'nbd') {
    if (s.map === null || !(await nbdConfigured(attachment))) return undefined
    return { kind: 'waiting', state: { ...s, attachment, map: s.map }, reason: l.reason }
  }
  if (attachment.kind !== 'ggate') return undefined
  const provider = geomProviders().get(attachment.name)
  if (provider?.className !== 'GATE') return undefined
  if (s.map !== null) return { kind: 'waiting', state: { ...s, attachment, map: s.map }, reason: l.reason }
  const uses = providerUses(provider)
  return uses.length ? { kind: 'held', state: { ...s, attachment }, reason: l.reason, uses } : undefined
}

/** The command that starts a new daemon for a waiting device. */
const restartCommand = (s: Waiting['state']): string =>
  [
    'geom-rowr create',
    ...(s.map === 'rw' ? ['--map-on-rw'] : ['--map', s.map]),
    `--sector-size ${s.sectorsize}`,
    s.name,
    s.ro,
    s.rwAuto ? 'auto' : s.rw,
  ].join(' ')

export const waitingMessage = (w: Waiting): string =>
  `${w.state.name}: ${w.reason}, and ${w.state.attachment.device} waits for a new one (its I/O is held, nothing is lost); ` +
  `start one with: ${restartCommand(w.state)}; or give up on the device (its users get I/O errors): geom-rowr destroy -f ${w.state.name}`

export const heldMessage = (h: Held): string =>
  `${h.state.name}: ${h.reason}, and ${h.state.attachment.device} is still open (${h.uses.join(', ')}), so it was left in place; ` +
  `without a map no new daemon can serve it, and its I/O waits: end the wait with geom-rowr destroy -f ${h.state.name} (its users get I/O errors)`

/**
 * Liveness, with a running daemon also asked for its status. One whose
 * process exists but does not answer is 'unresponsive': maybe hung, maybe
 * another process that reused its pid; only destroy -f clears it.
 */
export const probe = async (name: string): Promise<Probe> => {
  const l = liveness(name)
  if (l.kind === 'stale') return (await leftInKernel(l)) ?? l
  if (l.kind !== 'running') return l
  let reply: ControlReply<DeviceStatus>
  try {
    reply = await callControl(statePaths(name).control, { cmd: 'status' }, PING_MS)
  } catch (e) {
    if (!isRowrError(e)) throw e
    return { kind: 'unresponsive', state: l.state }
  }
  if (!reply.ok) return { kind: 'unresponsive', state: l.state }
  return { ...l, status: answerOf(reply) }
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

/** How long a cleanup waits for another command's cleanup of the same NAME. */
const CLEANUP_WAIT_MS = 60_000
const CLEANUP_POLL_MS = 50

/** Whether NAME still holds what a probe saw: the same daemon's state, or still none. */
const unchangedSince = (name: string, probed: DeviceState | undefined): boolean => {
  const now = readState(name)
  if (!probed) return now === undefined && liveness(name).kind === 'stale'
  return now !== undefined && now.pid === probed.pid && now.created === probed.created
}

/**
 * Runs `fn` under NAME's cleanup lock (a file in NAME's directory, held while
 * `fn` runs) if NAME still holds what `probed` saw, and says whether it ran.
 * Two commands that found the same dead daemon (list and create, say) must
 * not both clean up: the second, or one whose look is out of date, would
 * take away the NAME, and the automatic RW at its fixed path, of a device
 * created since.
 */
const whileUnchanged = async (name: string, probed: DeviceState | undefined, fn: () => Promise<void>): Promise<boolean> => {
  const lockFile = path.join(statePaths(name).dir, 'cleanup.lock')
  let fd: number
  try {
    fd = fs.openSync(lockFile, 'a', 0o600)
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return false // NAME was cleaned up meanwhile
    throw e
  }
  try {
    const deadline = Date.now() + CLEANUP_WAIT_MS
    while (tryLock(fd, 'exclusive') === 'conflict') {
      if (Date.now() > deadline) {
        throw new RowrError(
          'EBUSY',
          `another geom-rowr command has been cleaning up ${name} for over ${CLEANUP_WAIT_MS / 1000} s; see which with: fuser -v ${lockFile}`,
        )
      }
      await sleep(CLEANUP_POLL_MS)
    }
    if (!unchangedSince(name, probed)) return false
    await fn()
    return true
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * Takes away what a dead daemon left, unless NAME changed since `stale` was
 * seen (another command cleaned it up, and maybe a new device took NAME):
 * then nothing is touched. An open GEOM Gate provider is left unless
 * `force` (DESTROY without force fails EBUSY, said with the fix): it holds
 * its users' I/O. Linux's devices of a dead daemon that does not wait for a
 * new one (a loop device over FUSE, an nbd device without a map) fail their
 * I/O already: taking them away loses nothing.
 */
export const cleanupStale = async (
  name: string,
  stale: Extract<Liveness, { kind: 'stale' }>,
  log: (message: string) => void,
  { force }: { force: boolean } = { force: false },
): Promise<void> => {
  const done: string[] = []
  const cleaned = await whileUnchanged(name, stale.state, async () => {
    const attachment = leftoverAttachment(name, stale.state)
    if (attachment) {
      await detach(attachment, { force: force || attachment.kind !== 'ggate' })
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
  })
  if (!cleaned) return
  const kept = logPath(name)
  if (fs.existsSync(kept)) done.push(`its log is ${kept}`)
  log(`${name}: cleaned up after a daemon that is gone: ${stale.reason}${done.length ? `; ${done.join(', ')}` : ''}`)
}

/** Clears what a dead daemon left under NAME, if anything, saying so. */
export const clearStale = async (name: string, log: (message: string) => void): Promise<void> => {
  const l = await probe(name)
  if (l.kind === 'stale') await cleanupStale(name, l, log)
}

/**
 * Takes NAME for a new device, first clearing what a dead daemon left. A
 * device waiting for a new daemon is taken over when `sameAs` finds nothing
 * different about it (it returns what differs, or null): its old state is
 * returned then, and NAME's directory is this daemon's from there on.
 */
export const claimName = async (
  name: string,
  log: (message: string) => void,
  sameAs: (state: Waiting['state']) => string | null,
): Promise<Waiting['state'] | undefined> => {
  checkName(name)
  if (claim(name)) return undefined
  const l = await probe(name)
  if (l.kind === 'stale') {
    await cleanupStale(name, l, log)
    if (claim(name)) return undefined
  }
  if (l.kind === 'waiting') {
    const differs = sameAs(l.state)
    if (differs === null) return l.state
    throw new RowrError('EINUSE', `${waitingMessage(l)} (this create differs: ${differs})`)
  }
  if (l.kind === 'held') throw new RowrError('EINUSE', heldMessage(l))
  if (l.kind === 'unresponsive') {
    throw new RowrError(
      'EINUSE',
      `${name} is held by daemon pid ${l.state.pid}, which does not answer; ` +
        `choose another name, or kill it and clean up with: geom-rowr destroy -f ${name}`,
    )
  }
  const holder = l.kind === 'running' ? ` (daemon pid ${l.state.pid}, ${l.state.device ?? l.state.nbd})` : ''
  throw new RowrError('EINUSE', `${name} is already in use${holder}; choose another name or destroy it first: geom-rowr destroy ${name}`)
}
