// Starting a device's daemon in the background (geom-rowr create without
// -v): the daemon runs lib/daemon/main.js in a process of its own, with its
// log file as standard output and error, and reports over an IPC channel
// that it serves I/O, or why it could not start.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import { fileURLToPath } from 'node:url'
import { RowrError } from '../errors.js'
import { DAEMON_NODE_FLAGS } from '../runtime-tuning.js'
import type { DaemonOptions } from './daemon.js'
import { openDaemonLog } from './daemon-log.js'

/** What the detached daemon is given: everything but its log, which is its standard error. */
export type DetachedOptions = Omit<DaemonOptions, 'log'>

interface DaemonReady {
  readonly type: 'ready'
  readonly device: string
  readonly state: { rw: string; rwAuto: boolean; mediasize: number; map: string | null }
  readonly warnings: readonly string[]
}

export type DaemonReport = DaemonReady | { readonly type: 'error'; readonly message: string }

/** How long a detached daemon may take to report ready. */
const START_TIMEOUT_MS = 60_000

/**
 * The argv[0] of a daemon: what ps shows, and how destroy -f knows a pid is
 * still a geom-rowr daemon. One that serves the root file system gets an '@'
 * in front: systemd's shutdown spares processes whose argv[0] begins with it
 * (its "root storage daemons"), which must outlive the remount of the root
 * read-only.
 */
const daemonArgv0 = (systemdMark: boolean): string => (systemdMark ? '@geom-rowr' : 'geom-rowr')

const DAEMON_MAIN = fileURLToPath(new URL('./main.js', import.meta.url))

/** Starts the daemon and waits for its report; a daemon that could not start has exited. */
export const startDetached = async (o: DetachedOptions, { systemdMark }: { systemdMark: boolean }): Promise<DaemonReady> => {
  const { fd: logFd, path: logPath } = openDaemonLog(o.name)
  const child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, DAEMON_MAIN, o.name, JSON.stringify(o)], {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'ipc'],
    argv0: daemonArgv0(systemdMark),
  })
  fs.closeSync(logFd)
  try {
    const report = await new Promise<DaemonReport>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGTERM')
        reject(
          new RowrError('EDAEMON', `the daemon for ${o.name} did not become ready within ${START_TIMEOUT_MS / 1000} s; see ${logPath}`),
        )
      }, START_TIMEOUT_MS)
      child.once('message', m => {
        clearTimeout(timer)
        child.removeAllListeners('exit')
        resolve(m as DaemonReport)
      })
      child.once('exit', (code, signal) => {
        clearTimeout(timer)
        const tail = fs.readFileSync(logPath, 'utf8').trim().split('\n').slice(-3).join('\n')
        reject(
          new RowrError(
            'EDAEMON',
            `the daemon for ${o.name} exited (${signal ?? `status ${code}`}) before it was ready; ${logPath} says:\n${tail}`,
          ),
        )
      })
    })
    if (report.type === 'error') {
      // A refusal leaves nothing behind, the failed daemon included.
      if (child.exitCode === null && child.signalCode === null) {
        await new Promise(resolve => child.once('exit', resolve))
      }
      throw new Error(`${report.message}\n(the daemon's log: ${logPath})`)
    }
    return report
  } finally {
    child.removeAllListeners()
    if (child.connected) child.disconnect()
    child.unref()
  }
}
