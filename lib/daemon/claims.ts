// Exclusive use of a device's RO, RW and map, held for the device's whole
// life: a RW and a map belong to one device; a RO may be shared read-only
// by several, but nothing writes it meanwhile (only commit, which takes it
// alone); nothing mounted or used by someone else is ever taken as RW.
// Three layers, each catching what the others cannot see:
// - the registry of running geom-rowr devices (registry.ts), which names
//   the holder, on every platform;
// - on Linux, the kernel: an exclusive open (O_EXCL) of a disk RW or map
//   fails with EBUSY while it is mounted or claimed; mounts of a disk RO;
//   and loop devices over any of them, which claim nothing;
// - advisory locks (flock) on files, shared on RO and exclusive on RW and
//   map, which other geom-rowr processes (another run directory, the
//   lifecycle commands on a stopped device) take too.
// Each claim keeps a descriptor of its own open; closing them releases
// every lock, so a refusal leaves nothing held.
import fs from 'node:fs'
import { BlockDevice, type DeviceIdentity } from '../devices/block-device.js'
import { tryLock } from '../devices/file-lock.js'
import { kernelUsers, loopsOver, majorMinor, overlapping, type KernelUsers, type Overlap } from '../devices/kernel-users.js'
import { RowrError, errnoCode } from '../errors.js'
import { platform } from '../../native-bindings/platform.js'
import { claimKey, holdersOf, recordClaims, withRegistryLock, type Holder, type Role } from './registry.js'
import { listNames, readState } from './run-state.js'

interface ClaimTarget {
  readonly role: 'ro' | 'rw' | 'map'
  readonly path: string
  /** The identity of the descriptor already open on `path`, which the claim must match. */
  readonly identity?: DeviceIdentity
}

/** Who claims: a device NAME (create, serve), or a lifecycle command on a stopped device. */
export type Claimant = { readonly name: string } | { readonly offline: true }

/** Who else may hold a lock on a file, where the registry knows nobody. */
const OTHER_PROCESS = 'a geom-rowr device of another run directory, or a geom-rowr command on a stopped device'

const ROLE_NAME: Record<Role, string> = { ro: 'RO', rw: 'RW', map: 'map', commit: 'RO, which it is committing into' }

/** What to do instead, for each use this device wanted. */
const fixFor = (role: ClaimTarget['role'], holder: string): string => {
  switch (role) {
    case 'rw':
      return "it cannot also be this device's RW: a RW is written by its device alone and must hold nothing else: choose another RW (each device needs its own)"
    case 'map':
      return `it cannot also be this device's map: a map belongs to one device: give this device a map file of its own (to work on ${holder}'s changes, give its NAME to diff, revert, commit or export)`
    case 'ro':
      return `it cannot be this device's RO: a RO must not change while a device reads it: choose another RO, or make a stable copy to use as RO with: geom-rowr export ${holder} FILE`
  }
}

const conflicts = (mine: ClaimTarget['role'], theirs: Role): boolean => theirs === 'commit' || mine !== 'ro' || theirs !== 'ro'

const registryRefusal = (t: ClaimTarget, h: Holder, claimant: Claimant): RowrError => {
  const what = `${t.path} belongs to running device ${h.name} as its ${ROLE_NAME[h.role]}`
  if (h.role === 'commit') return new RowrError('EINUSE', `${what}; wait for the commit to finish (geom-rowr status ${h.name} shows it)`)
  if ('offline' in claimant) {
    return new RowrError('EINUSE', `${what}; give NAME (${h.name}) instead of --ro/--rw, or destroy it first`)
  }
  return new RowrError('EINUSE', `${what}; ${fixFor(t.role, h.name)}`)
}

const unmountHint = (users: KernelUsers): string => {
  const points = users.mounts.map(m => m.point)
  return points.length ? `umount ${points.join(' ')}` : ''
}

/** A RW or map that something else uses: the fix never asks to give up what that holds, unless nothing on it is needed. */
const writerRefusal = (t: ClaimTarget, inUse: string, release: string): RowrError => {
  const name = t.role === 'rw' ? 'RW' : 'map'
  return new RowrError(
    'EINUSE',
    `${t.path} ${inUse}; a ${name} is overwritten by its device, so it must hold nothing else: choose another ${name}` +
      (release ? `; only if nothing on it is needed: ${release}, and run this again` : ''),
  )
}

const readerRefusal = (t: ClaimTarget, inUse: string, point: string): RowrError =>
  new RowrError(
    'EINUSE',
    `${t.path} ${inUse}; a RO must not change while a device reads it: unmount it (umount ${point}) or make it read-only (mount -o remount,ro ${point}) first`,
  )

/** On Linux: mounts, holders and loop devices over the device (see kernel-users.ts). */
const checkKernelUsers = (t: ClaimTarget, identity: DeviceIdentity): void => {
  if (t.role === 'ro' && identity.kind === 'disk') {
    const writable = kernelUsers(majorMinor(identity.rdev)).mounts.find(m => m.writable)
    if (writable) throw readerRefusal(t, `is mounted read-write on ${writable.point}`, writable.point)
  }
  for (const loop of loopsOver(identity)) {
    if (t.role === 'ro') {
      const writable = loop.users.mounts.find(m => m.writable)
      if (writable) throw readerRefusal(t, `backs ${loop.device}, mounted read-write on ${writable.point}`, writable.point)
    } else if (loop.users.uses.length) {
      const umount = unmountHint(loop.users)
      throw writerRefusal(
        t,
        `backs ${loop.device}, ${loop.users.uses.join(', ')}`,
        `${umount ? `${umount} && ` : ''}losetup -d ${loop.device}`,
      )
    }
  }
}

/** An exclusive open of a Linux disk: EBUSY while mounted, swapped on, or claimed by a holder. */
const openExclusive = (t: ClaimTarget): number => {
  try {
    return fs.openSync(t.path, fs.constants.O_RDONLY | fs.constants.O_EXCL)
  } catch (e) {
    if (errnoCode(e) !== 'EBUSY') throw e
    const st = fs.statSync(t.path)
    const users = kernelUsers(majorMinor(st.rdev))
    const uses = users.uses.length
      ? `is ${users.uses.join(', ')}`
      : 'is held open exclusively by another program (a swap area, a RAID or LVM member, another geom-rowr device)'
    const umount = unmountHint(users)
    throw writerRefusal(t, uses, umount)
  }
}

interface Held {
  readonly target: ClaimTarget
  readonly key: string
  readonly fd: number
  readonly kind: DeviceIdentity['kind']
}

const identityOf = (fd: number): DeviceIdentity => {
  const st = fs.fstatSync(fd)
  return { kind: st.isFile() ? 'file' : 'disk', dev: st.dev, ino: st.ino, rdev: st.rdev }
}

const sameIdentity = (a: DeviceIdentity, b: DeviceIdentity): boolean =>
  a.kind === b.kind && (a.kind === 'file' ? a.dev === b.dev && a.ino === b.ino : a.rdev === b.rdev)

const replaced = (t: ClaimTarget): RowrError =>
  new RowrError('EINUSE', `${t.path} was replaced by another file while it was being opened; run this again`)

/** Takes one device: the registry (which names the holder), then the kernel's view, then an exclusive open or a lock. */
const claimOne = (t: ClaimTarget, claimant: Claimant): Held => {
  const st = fs.statSync(t.path)
  const identity: DeviceIdentity = { kind: st.isFile() ? 'file' : 'disk', dev: st.dev, ino: st.ino, rdev: st.rdev }
  if (t.identity && !sameIdentity(identity, t.identity)) throw replaced(t)
  const key = claimKey(identity)
  for (const h of holdersOf(key, 'name' in claimant ? claimant.name : undefined)) {
    if (conflicts(t.role, h.role)) throw registryRefusal(t, h, claimant)
  }
  const linux = platform() === 'linux'
  if (linux) checkKernelUsers(t, identity)
  const exclusiveOpen = linux && t.role !== 'ro' && identity.kind === 'disk'
  const fd = exclusiveOpen ? openExclusive(t) : fs.openSync(t.path, fs.constants.O_RDONLY)
  try {
    if (!sameIdentity(identityOf(fd), identity)) throw replaced(t)
    if (identity.kind === 'file' && tryLock(fd, t.role === 'ro' ? 'shared' : 'exclusive') === 'conflict') {
      throw t.role === 'ro'
        ? new RowrError(
            'EINUSE',
            `${t.path} is in use as a RW or map by another process (${OTHER_PROCESS}; see which with: fuser -v ${t.path}); ` +
              'a RO must not change while a device reads it: wait for it to finish, or choose another RO',
          )
        : writerRefusal(t, `is in use by another process (${OTHER_PROCESS}; see which with: fuser -v ${t.path})`, '')
    }
    return { target: t, key, fd, kind: identity.kind }
  } catch (e) {
    fs.closeSync(fd)
    throw e
  }
}

/**
 * The claims of one device (or of one lifecycle command on a stopped
 * device). Each `add` claims its targets, or none: on a refusal the
 * descriptors it opened are closed. A named device's claims are recorded
 * in the registry until released.
 */
export class DeviceClaims {
  readonly #claimant: Claimant
  readonly #held: Held[] = []

  private constructor(claimant: Claimant) {
    this.#claimant = claimant
  }

  static claim(targets: readonly ClaimTarget[], claimant: Claimant): DeviceClaims {
    const claims = new DeviceClaims(claimant)
    claims.add(targets)
    return claims
  }

  get #name(): string | undefined {
    return 'name' in this.#claimant ? this.#claimant.name : undefined
  }

  #record(commit = false): void {
    const name = this.#name
    if (name === undefined || this.#held.length === 0) return
    recordClaims(
      name,
      this.#held.map(h => ({ role: commit && h.target.role === 'ro' ? 'commit' : h.target.role, path: h.target.path, key: h.key })),
    )
  }

  add(targets: readonly ClaimTarget[]): void {
    withRegistryLock(
      () => {
        const added: Held[] = []
        try {
          for (const t of targets) added.push(claimOne(t, this.#claimant))
        } catch (e) {
          for (const h of added) fs.closeSync(h.fd)
          throw e
        }
        this.#held.push(...added)
        this.#record()
      },
      { create: this.#name !== undefined },
    )
  }

  /**
   * Takes RO alone for a commit: refused while another device shares it.
   * Returns the function that gives the shared use back.
   */
  holdRoForCommit(): () => void {
    const ro = this.#held.find(h => h.target.role === 'ro')
    if (!ro) throw new Error('no RO claimed')
    const named = this.#name
    withRegistryLock(
      () => {
        const sharers = holdersOf(ro.key, named).map(h => h.name)
        if (sharers.length) {
          const them = sharers.join(', ')
          throw new RowrError(
            'EBUSY',
            `${ro.target.path} is also the RO of running device${sharers.length > 1 ? 's' : ''} ${them}; committing would change it under ${them}: ` +
              `make a new image instead (geom-rowr export ${named ?? '--ro RO --rw RW --map MAP'} FILE), or commit once ${them} no longer run${sharers.length > 1 ? '' : 's'}`,
          )
        }
        if (ro.kind === 'file' && tryLock(ro.fd, 'exclusive') === 'conflict') {
          // The failed conversion dropped the shared lock (flock(2)): take it back.
          tryLock(ro.fd, 'shared')
          throw new RowrError(
            'EBUSY',
            `${ro.target.path} is also in use by another process (${OTHER_PROCESS}; see which with: fuser -v ${ro.target.path}); ` +
              'committing would change it under that one: wait for it to finish, or make a new image instead with geom-rowr export',
          )
        }
        this.#record(true)
      },
      { create: named !== undefined },
    )
    return () => {
      if (ro.kind === 'file') tryLock(ro.fd, 'shared')
      if (this.#held.length) withRegistryLock(() => this.#record(), { create: true })
    }
  }

  /** What this device holds the device with `key` as, if it does. */
  roleOf(key: string): ClaimTarget['role'] | undefined {
    return this.#held.find(h => h.key === key)?.target.role
  }

  /** Lets RO go (hydration is done): its descriptor closes and the registry no longer names it. */
  releaseRo(): void {
    const i = this.#held.findIndex(h => h.target.role === 'ro')
    if (i < 0) return
    fs.closeSync(this.#held.splice(i, 1)[0]!.fd)
    withRegistryLock(() => this.#record(), { create: this.#name !== undefined })
  }

  /** Releases every claim. */
  release(): void {
    for (const h of this.#held.splice(0)) fs.closeSync(h.fd)
  }
}

/** The running geom-rowr devices' kernel devices, by claim key. */
const kernelDevices = (): Map<string, string> => {
  const out = new Map<string, string>()
  for (const name of listNames()) {
    const device = readState(name)?.device
    if (!device) continue
    try {
      out.set(claimKey({ kind: 'disk', dev: 0, ino: 0, rdev: fs.statSync(device).rdev }), name)
    } catch {
      // Gone with its device.
    }
  }
  return out
}

/** Whether another geom-rowr process holds a lock on the file (a lifecycle command's RO, RW or map). */
const fileLocked = (file: string): boolean => {
  let fd: number
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY)
  } catch {
    return false
  }
  try {
    return tryLock(fd, 'exclusive') === 'conflict'
  } finally {
    fs.closeSync(fd)
  }
}

/** Why writing `target` would change `o`, a device in use, or nothing. */
const exportTargetUse = (
  target: string,
  o: Overlap,
  own: DeviceClaims | undefined,
  running: Map<string, string>,
): RowrError | undefined => {
  const subject = o.how ? `${target} shares its bytes with ${o.how}, which` : target
  const key = claimKey(o.identity)
  const refusal = (why: string, instead = ''): RowrError =>
    new RowrError('EINUSE', `${subject} ${why}: choose another device to export onto${instead}`)
  const role = own?.roleOf(key)
  if (role) {
    const instead = role === 'ro' ? " (to write the device's changes into RO, use geom-rowr commit)" : ''
    return refusal(`is this device's ${ROLE_NAME[role]}; export never writes a device onto its own RO, RW or map`, instead)
  }
  const holder = holdersOf(key)[0]
  if (holder)
    return refusal(
      `belongs to running device ${holder.name} as its ${ROLE_NAME[holder.role]}; export never writes onto a geom-rowr device's RO, RW or map`,
    )
  const device = running.get(key)
  if (device) return refusal(`is the kernel device of running geom-rowr device ${device}; export does not write onto a geom-rowr device`)
  if (o.identity.kind === 'file' && o.path !== undefined && fileLocked(o.path)) {
    return refusal(`is in use by another process (${OTHER_PROCESS}; see which with: fuser -v ${o.path})`)
  }
  // A loop device or a loop's backing disk: the exclusive open of the target cannot see their users.
  if (o.identity.kind === 'disk' && (o.relation === 'loop over it' || o.relation === 'backing')) {
    const users = kernelUsers(majorMinor(o.identity.rdev))
    if (users.uses.length) return refusal(`is ${users.uses.join(', ')}`)
  }
  return undefined
}

/**
 * Opens the disk that export --to-device overwrites, for writing, once
 * nothing that shares its bytes (partitions, loop devices, backing files,
 * see overlapping()) is this device's RO, RW or map (`own`), another
 * geom-rowr device's, a geom-rowr kernel device or a loop device in use;
 * on Linux exclusively (O_EXCL), which fails while it is mounted or held.
 */
export const openExportTarget = (target: string, own: DeviceClaims | undefined): BlockDevice => {
  const linux = platform() === 'linux'
  const rdev = fs.statSync(target).rdev
  const related: Overlap[] = linux
    ? overlapping(majorMinor(rdev))
    : [{ identity: { kind: 'disk', dev: 0, ino: 0, rdev }, relation: 'itself', how: '' }]
  const running = kernelDevices()
  withRegistryLock(
    () => {
      for (const o of related) {
        const refusal = exportTargetUse(target, o, own, running)
        if (refusal) throw refusal
      }
    },
    { create: false },
  )
  let disk: BlockDevice
  try {
    disk = BlockDevice.open(target, { writable: true, exclusive: linux })
  } catch (e) {
    if (errnoCode(e) !== 'EBUSY') throw e
    const users = kernelUsers(majorMinor(rdev))
    const uses = users.uses.length
      ? `is ${users.uses.join(', ')}`
      : 'is held open exclusively by another program (a swap area, a RAID or LVM member, a geom-rowr device)'
    const umount = unmountHint(users)
    throw new RowrError(
      'EINUSE',
      `${target} ${uses}; export --to-device overwrites all of it, so it must be in use by nothing: choose another device` +
        (umount ? `; only if nothing on it is needed: ${umount}, and run this again` : ''),
      { cause: e },
    )
  }
  // What was checked above is what is open.
  if (disk.identity.kind !== 'disk' || disk.identity.rdev !== rdev) {
    disk.close()
    throw new RowrError('EINUSE', `${target} was replaced by another device while it was being opened; run this again`)
  }
  return disk
}
