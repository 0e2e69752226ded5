// The servers the benchmark compares: geom-rowr and its copy-on-write peers
// (nbdkit's cow filter, qemu-nbd on a qcow2 overlay), plus a reference with
// no copy-on-write at all (nbdkit's file plugin on a plain copy). Each start
// gets a fresh overlay, so every run begins with nothing written.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { DAEMON_NODE_FLAGS } from '../lib/runtime-tuning.js'

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/geom-rowr.js')

export interface Peer {
  readonly name: string
  /**
   * Copy-on-write peers are what geom-rowr must beat; the reference only
   * informs; a baseline is geom-rowr built from an earlier commit, for a
   * change's before/after run.
   */
  readonly kind: 'rowr' | 'cow' | 'reference' | 'baseline'
  start(work: string, base: string): Promise<RunningPeer>
}

interface RunningPeer {
  readonly uri: string
  readonly pid: number
  stop(): Promise<void>
}

const waitForSocket = async (socket: string, child: ChildProcess, what: string): Promise<void> => {
  const deadline = Date.now() + 30_000
  while (!fs.existsSync(socket)) {
    if (child.exitCode !== null) throw new Error(`${what} exited (${child.exitCode}) before listening`)
    if (Date.now() > deadline) throw new Error(`${what} did not listen on ${socket}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

const launch = async (what: string, file: string, args: string[], socket: string, cleanup: string[]): Promise<RunningPeer> => {
  fs.rmSync(socket, { force: true })
  const child = spawn(file, args, { stdio: ['ignore', 'ignore', 'inherit'] })
  await waitForSocket(socket, child, what)
  return {
    uri: `nbd+unix:///?socket=${socket}`,
    pid: child.pid!,
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise(resolve => child.once('exit', resolve))
        child.kill('SIGTERM')
        await exited
      }
      for (const f of [socket, ...cleanup]) fs.rmSync(f, { force: true })
    },
  }
}

/** geom-rowr as the compiled CLI at `cliPath` serves it. */
const geomRowrAt = (name: string, kind: 'rowr' | 'baseline', cliPath: string): Peer => ({
  name,
  kind,
  start: async (work, base) => {
    const slug = name.replace(/[^a-z0-9]+/gi, '-')
    const rw = path.join(work, `${slug}-rw.img`)
    fs.rmSync(rw, { force: true })
    fs.writeFileSync(rw, '')
    fs.truncateSync(rw, fs.statSync(base).size)
    const socket = path.join(work, `${slug}.sock`)
    // As the daemon runs in production (create starts it with these flags).
    return launch(
      name,
      process.execPath,
      [...DAEMON_NODE_FLAGS, cliPath, 'serve', '--name', 'bench', '--socket', socket, base, rw],
      socket,
      [rw],
    )
  },
})

export const geomRowr = geomRowrAt('geom-rowr', 'rowr', cli)

/**
 * geom-rowr of another checkout (its dist/ built), named by its commit:
 * the "before" of a before/after run.
 */
export const geomRowrBaseline = (checkout: string): Peer => {
  const cliPath = path.resolve(checkout, 'dist/bin/geom-rowr.js')
  if (!fs.existsSync(cliPath)) throw new Error(`${checkout}: no ${cliPath}; build that checkout first (make build)`)
  let label = path.basename(checkout)
  try {
    label = execFileSync('git', ['-C', checkout, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim()
  } catch {
    // Not a git checkout: its folder name is the label.
  }
  return geomRowrAt(`geom-rowr@${label}`, 'baseline', cliPath)
}

const nbdkitCow: Peer = {
  name: 'nbdkit-cow',
  kind: 'cow',
  start: async (work, base) => {
    const socket = path.join(work, 'nbdkit-cow.sock')
    // The cow filter keeps its overlay in a temporary file it deletes itself.
    return launch('nbdkit', 'nbdkit', ['--foreground', '--unix', socket, '--filter=cow', 'file', base], socket, [])
  },
}

const qemuNbd: Peer = {
  name: 'qemu-nbd',
  kind: 'cow',
  start: async (work, base) => {
    const overlay = path.join(work, 'overlay.qcow2')
    fs.rmSync(overlay, { force: true })
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay])
    const socket = path.join(work, 'qemu-nbd.sock')
    // writeback cache and thread aio: the fastest of qemu-nbd's settings
    // when the base sits in the page cache.
    return launch(
      'qemu-nbd',
      'qemu-nbd',
      ['--persistent', '--socket', socket, '--format', 'qcow2', '--cache', 'writeback', '--aio', 'threads', '--shared', '4', overlay],
      socket,
      [overlay],
    )
  },
}

const nbdkitFileReference: Peer = {
  name: 'nbdkit-file (no cow)',
  kind: 'reference',
  start: async (work, base) => {
    const copy = path.join(work, 'plain-copy.img')
    if (!fs.existsSync(copy) || fs.statSync(copy).size !== fs.statSync(base).size) fs.copyFileSync(base, copy)
    const socket = path.join(work, 'nbdkit-file.sock')
    return launch('nbdkit', 'nbdkit', ['--foreground', '--unix', socket, 'file', copy], socket, [])
  },
}

export const PEERS: readonly Peer[] = [geomRowr, nbdkitCow, qemuNbd, nbdkitFileReference]

/** Peak resident memory of a process so far, bytes (VmHWM). */
export const peakRss = (pid: number): number | undefined => {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : undefined
  } catch {
    return undefined
  }
}

/** Current resident memory of a process, bytes (VmRSS). */
export const rss = (pid: number): number | undefined => {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : undefined
  } catch {
    return undefined
  }
}
