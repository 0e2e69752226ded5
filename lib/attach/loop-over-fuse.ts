// nbdfuse shows the export as a file in a FUSE mount; a loop device with
// direct I/O turns that file into a block device. (Without direct I/O the
// loop device and FUSE would each cache the pages, and writes crawl.)
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { RowrError } from '../errors.js'
import type { AttachOptions } from './attach-options.js'
import { type CommandError, runCommand, sleep, waitFor } from '../run-command.js'
import { processAlive } from '../processes.js'

export interface LoopOverFuseAttachment {
  readonly kind: 'loop'
  /** The loop device, e.g. /dev/loop3. */
  readonly device: string
  readonly mount: string
  /** The export as a file inside the mount. */
  readonly file: string
  readonly fusePid: number
}

const NBDFUSE_READY_MS = 15_000
const UNMOUNT_MS = 10_000
const EXIT_MS = 10_000

/** /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes. */
const mountinfoEscape = (p: string): string => p.replace(/[ \t\n\\]/g, c => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`)

export const fuseMounted = (mount: string): boolean => {
  const target = ` ${mountinfoEscape(mount)} `
  try {
    return fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .some(line => line.includes(target))
  } catch {
    return false
  }
}

export const attachLoopOverFuse = async (options: AttachOptions): Promise<LoopOverFuseAttachment> => {
  const { name, nbdSocket, mountDir, sectorSize, log } = options
  fs.mkdirSync(mountDir, { recursive: true, mode: 0o700 })
  const pidFile = path.join(path.dirname(mountDir), 'nbdfuse.pid')
  const file = path.join(mountDir, name)
  const stderr: Buffer[] = []
  const child = spawn('nbdfuse', ['-P', pidFile, file, '--unix', nbdSocket], {
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
  })
  child.stderr.on('data', (c: Buffer) => stderr.push(c))
  let exited: string | undefined
  child.on('exit', (code, signal) => (exited = signal ?? `exit ${code}`))
  child.on('error', e => (exited = e.message))
  const ready = await waitFor(() => exited !== undefined || fs.existsSync(pidFile), NBDFUSE_READY_MS)
  if (exited !== undefined || !ready) {
    if (!exited) child.kill('SIGKILL')
    fs.rmSync(mountDir, { recursive: true, force: true })
    throw new RowrError(
      'EATTACH',
      `nbdfuse could not show ${name} as a file (${exited ?? 'timed out'}): ${Buffer.concat(stderr).toString().trim()}; ` +
        `install it (apt-get install libnbd-bin fuse3) and check that /dev/fuse exists, or use --no-attach`,
    )
  }
  child.unref()
  child.stderr.destroy()
  const fusePid = child.pid!
  log(`nbdfuse (pid ${fusePid}) shows the export as ${file}`)
  try {
    const { stdout } = await runCommand('losetup', ['--find', '--show', '--direct-io=on', '--sector-size', String(sectorSize), file])
    const device = stdout.trim()
    log(`attached ${device} (loop device over ${file})`)
    return { kind: 'loop', device, mount: mountDir, file, fusePid }
  } catch (e) {
    await unmountFuse({ mount: mountDir, fusePid }, { force: true })
    throw new RowrError('EATTACH', `could not attach a loop device to ${file}: ${(e as Error).message}`, { cause: e })
  }
}

/** Loop devices whose backing file is `file`. */
const loopsBackedBy = (file: string): string[] => {
  const out: string[] = []
  for (const entry of fs.readdirSync('/sys/block')) {
    if (!entry.startsWith('loop')) continue
    try {
      const backing = fs.readFileSync(`/sys/block/${entry}/loop/backing_file`, 'utf8').trim()
      if (backing === file) out.push(`/dev/${entry}`)
    } catch {
      // Not configured.
    }
  }
  return out
}

export const detachLoopOverFuse = async (
  attachment: Pick<LoopOverFuseAttachment, 'file' | 'mount' | 'fusePid'>,
  { force }: { force: boolean },
): Promise<void> => {
  for (const loop of loopsBackedBy(attachment.file)) {
    // On a loop device still in use this only sets autoclear: the kernel
    // detaches it when its last user (a forced-away mount) lets go.
    await runCommand('losetup', ['-d', loop]).catch((e: CommandError) => {
      if (!/No such device/i.test(e.stderr)) throw e
    })
  }
  await unmountFuse(attachment, { force })
}

const unmountFuse = async ({ mount, fusePid }: { mount: string; fusePid: number }, { force }: { force: boolean }): Promise<void> => {
  // The loop device lets go of the FUSE file a moment after losetup -d
  // returns, so a plain unmount is retried until it stops being busy.
  const deadline = Date.now() + (force ? 0 : UNMOUNT_MS)
  while (fuseMounted(mount)) {
    try {
      await runCommand('fusermount3', ['-u', mount])
    } catch (e) {
      if (Date.now() < deadline) {
        await sleep(100)
        continue
      }
      if (!force) throw e
      // Forced: detach the mount lazily and end nbdfuse, so that whoever
      // still holds the file gets I/O errors instead of a hang.
      await runCommand('fusermount3', ['-u', '-z', mount]).catch(() => undefined)
      if (fusePid > 0 && processAlive(fusePid)) process.kill(fusePid, 'SIGTERM')
      break
    }
  }
  // A pid of 0 would mean our own process group to kill(2): never signal it.
  if (fusePid > 0 && !(await waitFor(() => !processAlive(fusePid), EXIT_MS))) process.kill(fusePid, 'SIGKILL')
  fs.rmSync(mount, { recursive: true, force: true })
  fs.rmSync(path.join(path.dirname(mount), 'nbdfuse.pid'), { force: true })
}
