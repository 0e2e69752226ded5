// Where running devices are recorded: one directory per NAME under the run
// directory, holding state.json, the control socket and the NBD socket.
// Creating that directory is how a NAME is claimed, atomically.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { RowrError, errnoCode } from '../errors.js'
import type { Attachment } from '../attach/attachment.js'
import { processAlive } from '../processes.js'

export interface DeviceState {
  readonly name: string
  readonly pid: number
  /** 'starting' until the device serves I/O. */
  readonly phase: 'starting' | 'ready'
  readonly ro: string
  readonly rw: string
  /** RW was made by geom-rowr (RW given as `auto`); it goes away with the device unless a map keeps it. */
  readonly rwAuto: boolean
  /** Where the sector map is kept: a file, 'rw' (RW's tail), or null (memory only). */
  readonly map: string | null
  readonly mediasize: number
  readonly sectorsize: number
  /** The kernel block device, or null when only NBD is served. */
  readonly device: string | null
  readonly nbd: string
  readonly attachment: Attachment | null
  readonly created: string
}

const configuredRunDir = (): string => {
  const override = process.env.GEOM_ROWR_RUNDIR
  if (override) return path.resolve(override)
  if (process.getuid?.() === 0) return '/var/run/geom-rowr'
  const xdg = process.env.XDG_RUNTIME_DIR
  if (xdg) return path.join(xdg, 'geom-rowr')
  return path.join(os.tmpdir(), `geom-rowr-${process.getuid?.() ?? 'user'}`)
}

/**
 * The run directory: GEOM_ROWR_RUNDIR, else per user; with symbolic links
 * resolved (/var/run is one to /run on most systems), because the kernel
 * reports mount points and loop backing files by their real paths.
 */
export const runDir = (): string => realPath(configuredRunDir())

/**
 * A path with the symbolic links of its longest existing prefix resolved,
 * so it is the same before and after its last components are created.
 */
const realPath = (p: string): string => {
  try {
    return fs.realpathSync(p)
  } catch (e) {
    const parent = path.dirname(p)
    if (errnoCode(e) !== 'ENOENT' || parent === p) return p
    return path.join(realPath(parent), path.basename(p))
  }
}

interface StatePaths {
  readonly dir: string
  readonly state: string
  readonly control: string
  readonly nbd: string
  /** Where the FUSE mount that shows the device as a file goes. */
  readonly mount: string
}

export const statePaths = (name: string): StatePaths => {
  const root = runDir()
  const dir = path.join(root, name)
  return {
    dir,
    state: path.join(dir, 'state.json'),
    control: path.join(dir, 'control.sock'),
    nbd: path.join(dir, 'nbd.sock'),
    mount: path.join(dir, 'fuse'),
  }
}

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/

export const checkName = (name: string): void => {
  if (!NAME_PATTERN.test(name)) {
    throw new RowrError(
      'EBADNAME',
      `invalid device name "${name}": use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. rowr0)`,
    )
  }
}

/** Claims NAME by creating its directory; false if it exists already. */
export const claim = (name: string): boolean => {
  fs.mkdirSync(configuredRunDir(), { recursive: true, mode: 0o700 })
  try {
    fs.mkdirSync(statePaths(name).dir, { mode: 0o700 })
    return true
  } catch (e) {
    if (errnoCode(e) === 'EEXIST') return false
    throw e
  }
}

export const release = (name: string): void => {
  fs.rmSync(statePaths(name).dir, { recursive: true, force: true })
}

export const writeState = (state: DeviceState): void => {
  const p = statePaths(state.name).state
  const tmp = `${p}.tmp`
  fs.writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 })
  fs.renameSync(tmp, p)
}

export const readState = (name: string): DeviceState | undefined => {
  try {
    return JSON.parse(fs.readFileSync(statePaths(name).state, 'utf8')) as DeviceState
  } catch {
    return undefined
  }
}

/** Every NAME with a directory, live or not. */
export const listNames = (): string[] => {
  try {
    return fs
      .readdirSync(runDir(), { withFileTypes: true })
      .filter(d => d.isDirectory() && NAME_PATTERN.test(d.name))
      .map(d => d.name)
      .sort()
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return []
    throw e
  }
}

/** Seconds a directory without state.json is taken to be a create in progress. */
const CLAIM_GRACE_MS = 10_000

export type Liveness =
  | { readonly kind: 'absent' }
  | { readonly kind: 'starting' }
  | { readonly kind: 'running'; readonly state: DeviceState }
  | { readonly kind: 'stale'; readonly state: DeviceState | undefined; readonly reason: string }

/**
 * Whether NAME's daemon is alive. A daemon is running when its pid exists
 * and it said it is ready; whether it answers is for the caller to ask.
 */
export const liveness = (name: string): Liveness => {
  const paths = statePaths(name)
  let dirStat: fs.Stats
  try {
    dirStat = fs.statSync(paths.dir)
  } catch {
    return { kind: 'absent' }
  }
  const state = readState(name)
  if (!state) {
    if (Date.now() - dirStat.mtimeMs < CLAIM_GRACE_MS) return { kind: 'starting' }
    return { kind: 'stale', state, reason: 'it has no state file' }
  }
  if (!processAlive(state.pid)) {
    return { kind: 'stale', state, reason: `its daemon (pid ${state.pid}) is gone` }
  }
  return state.phase === 'starting' ? { kind: 'starting' } : { kind: 'running', state }
}
