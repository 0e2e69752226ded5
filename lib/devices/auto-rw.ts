// RW given as `auto`: geom-rowr makes a read-write device of exactly RO's
// size itself, so the mediasize mismatch cannot happen, and removes it on
// destroy. On FreeBSD it is a swap-backed md(4) device (costing memory only
// for what is written); elsewhere a sparse file in /var/tmp.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { platform } from '../../native-bindings/platform.js'
import { RowrError, errnoCode } from '../errors.js'
import { runCommand } from '../run-command.js'

const MD_PATH = /^\/dev\/md(\d+)$/

let pageBytes: number | undefined

/** The kernel's page size (hw.pagesize on FreeBSD). */
const pageSize = (): number => {
  if (pageBytes !== undefined) return pageBytes
  const [command, args] = platform() === 'freebsd' ? ['sysctl', ['-n', 'hw.pagesize']] : ['getconf', ['PAGESIZE']]
  const n = Number(execFileSync(command, args as string[], { encoding: 'utf8' }).trim())
  if (!Number.isInteger(n) || n <= 0)
    throw new RowrError('EPLATFORM', `${command} ${(args as string[]).join(' ')} did not print a page size`)
  return (pageBytes = n)
}

/**
 * A swap-backed md's size for `bytes`: whole pages, as mdconfig demands
 * (anything else fails EDOM).
 */
export const mdBytes = (bytes: number): number => Math.ceil(bytes / pageSize()) * pageSize()

/** Where the sparse file for NAME goes where md(4) is not available. */
export const autoRwFile = (name: string): string => path.join('/var/tmp', `geom-rowr-${name}.rw`)

/** How the user is told about it; `kept` with a persistent map. */
export const describeAutoRw = (rw: string, size: number, kept = false): string =>
  MD_PATH.test(rw)
    ? `${rw} (swap-backed md, ${size} bytes; detached on destroy)`
    : `${rw} (sparse, ${size} bytes; ${kept ? 'kept on destroy: the map describes its data' : 'removed on destroy'})`

interface AutoRw {
  readonly path: string
  /** Made by this call, not an earlier run's kept file. */
  readonly made: boolean
}

/**
 * Makes the device. With `persistent` (a map resumes) or `discard`
 * (--discard-map starts over on it) the file an earlier run made and kept is
 * used again.
 */
export const makeAutoRw = async (name: string, size: number, { persistent = false, discard = false } = {}): Promise<AutoRw> => {
  if (platform() === 'freebsd') {
    if (persistent) {
      throw new RowrError(
        'EPLATFORM',
        'RW auto is a swap-backed md, whose data is gone after a reboot, so it cannot go with a persistent map; give RW as a disk, partition or file',
      )
    }
    let out: string
    try {
      // The device keeps RO's size; the md's tail past it is never used.
      out = (await runCommand('mdconfig', ['-a', '-t', 'swap', '-s', `${mdBytes(size)}b`])).stdout.trim()
    } catch (e) {
      throw new RowrError('EATTACH', `could not make a swap-backed md of ${mdBytes(size)} bytes: ${(e as Error).message}`, { cause: e })
    }
    if (!/^md\d+$/.test(out)) throw new RowrError('EATTACH', `mdconfig printed "${out}", not an md device name`)
    return { path: `/dev/${out}`, made: true }
  }
  const file = autoRwFile(name)
  if ((persistent || discard) && fs.existsSync(file)) return { path: file, made: false }
  let fd: number
  try {
    fd = fs.openSync(file, 'wx', 0o600)
  } catch (e) {
    if (errnoCode(e) !== 'EEXIST') throw e
    throw new RowrError(
      'EINUSE',
      `${file} already exists, and may hold the changes of a device ${name} with a persistent map (destroy keeps its RW). To resume them, give that map ` +
        `(--map FILE, or --map-on-rw); to start over on it, discarding them, add --discard-map; or name another read-write device`,
    )
  }
  try {
    fs.ftruncateSync(fd, size)
  } finally {
    fs.closeSync(fd)
  }
  return { path: file, made: true }
}

/** Removes what makeAutoRw made. */
export const removeAutoRw = async (rw: string): Promise<void> => {
  const md = MD_PATH.exec(rw)
  if (md) await runCommand('mdconfig', ['-d', '-u', md[1]!])
  else fs.rmSync(rw, { force: true })
}
