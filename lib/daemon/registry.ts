// Who uses which device: each running device records the RO, RW and map it
// claimed (by identity: st_rdev for a disk, st_dev and st_ino for a file) in
// claims.json beside its state, and every new claim is checked against the
// others and recorded under one lock, on the run directory itself. This is what
// keeps geom-rowr devices apart where the kernel cannot (a disk RO is opened
// without an exclusive claim so that it can be shared; on FreeBSD user space
// has no exclusive open at all), and it lets a refusal name the device.
import fs from 'node:fs'
import path from 'node:path'
import type { DeviceIdentity } from '../devices/block-device.js'
import { tryLock } from '../devices/file-lock.js'
import { RowrError, errnoCode } from '../errors.js'
import { processAlive } from '../processes.js'
import { listNames, runDir, statePaths } from './run-state.js'

/** What a device uses a device for; 'commit' is its RO while a commit writes it. */
export type Role = 'ro' | 'rw' | 'map' | 'commit'

interface Claim {
  readonly role: Role
  /** As the user gave it, for messages. */
  readonly path: string
  /** The device's identity as a string: the same device gives the same key under any path. */
  readonly key: string
}

interface ClaimsFile {
  readonly pid: number
  readonly claims: readonly Claim[]
}

export const claimKey = (identity: DeviceIdentity): string =>
  identity.kind === 'disk' ? `disk:${identity.rdev}` : `file:${identity.dev}:${identity.ino}`

const claimsFile = (name: string): string => path.join(statePaths(name).dir, 'claims.json')

export interface Holder {
  readonly name: string
  readonly role: Role
}

/** The running devices that claim the device with this key (NAME itself left out). */
export const holdersOf = (key: string, except?: string): Holder[] => {
  const out: Holder[] = []
  for (const name of listNames()) {
    if (name === except) continue
    let file: ClaimsFile
    try {
      file = JSON.parse(fs.readFileSync(claimsFile(name), 'utf8')) as ClaimsFile
    } catch {
      continue
    }
    // A daemon that is gone holds nothing; its state is cleaned up elsewhere.
    if (!processAlive(file.pid)) continue
    for (const c of file.claims) if (c.key === key) out.push({ name, role: c.role })
  }
  return out
}

/** Records NAME's claims (replacing earlier ones); call under the registry lock. */
export const recordClaims = (name: string, claims: readonly Claim[]): void => {
  const p = claimsFile(name)
  const tmp = `${p}.tmp`
  fs.writeFileSync(tmp, `${JSON.stringify({ pid: process.pid, claims } satisfies ClaimsFile)}\n`, { mode: 0o600 })
  fs.renameSync(tmp, p)
}

/** How long to wait for another process's check-and-record; those take milliseconds. */
const LOCK_WAIT_MS = 10_000
const LOCK_POLL_MS = 10

/**
 * Runs `fn` (synchronous: nothing else runs while it holds the lock) under
 * the registry's lock: a lock on the run directory, so that no lock file is
 * left there. With `create` false and no run directory, no device can be
 * running: `fn` runs without the lock.
 */
export const withRegistryLock = <T>(fn: () => T, { create }: { create: boolean }): T => {
  const dir = runDir()
  if (create) fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  let fd: number
  try {
    fd = fs.openSync(dir, fs.constants.O_RDONLY)
  } catch (e) {
    if (!create && errnoCode(e) === 'ENOENT') return fn()
    throw e
  }
  try {
    const deadline = Date.now() + LOCK_WAIT_MS
    let got = tryLock(fd, 'exclusive')
    while (got === 'conflict' && Date.now() < deadline) {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, LOCK_POLL_MS)
      got = tryLock(fd, 'exclusive')
    }
    if (got === 'conflict') {
      throw new RowrError(
        'EBUSY',
        `another geom-rowr process has held the lock on ${dir} for over ${LOCK_WAIT_MS / 1000} s; see which with: fuser -v ${dir}`,
      )
    }
    return fn()
  } finally {
    fs.closeSync(fd)
  }
}
