// Where a detached daemon logs, and which logs are kept: outside the run
// directory (which holds what is running, and is often a tmpfs), in
// /var/log/geom-rowr as root and in a per-user state directory otherwise.
//
// Retention: a device destroyed cleanly takes its log with it; the log of a
// daemon that crashed or refused to start stays, and the messages about it
// name it. When a NAME starts again, its kept log is renamed with the time
// it was last written, and only the newest KEPT_LOGS kept logs stay. A log
// that outgrows LOG_CAP_BYTES starts over with a line that says so.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { errnoCode } from '../errors.js'

export const KEPT_LOGS = 20
const LOG_CAP_BYTES = 1 << 20

export const logDir = (): string => {
  const { GEOM_ROWR_LOGDIR, GEOM_ROWR_RUNDIR, XDG_STATE_HOME } = process.env
  if (GEOM_ROWR_LOGDIR) return path.resolve(GEOM_ROWR_LOGDIR)
  // A run directory of one's own (tests, several separate setups) keeps its logs beside it.
  if (GEOM_ROWR_RUNDIR) return path.resolve(GEOM_ROWR_RUNDIR)
  if (process.getuid?.() === 0) return '/var/log/geom-rowr'
  return path.join(XDG_STATE_HOME || path.join(os.homedir(), '.local/state'), 'geom-rowr')
}

export const logPath = (name: string): string => path.join(logDir(), `${name}.log`)

/** NAME.log, and kept ones: NAME.2026-12-03T10-00-00.000Z.log. */
const KEPT = /^(.+)\.\d{4}-\d\d-\d\dT[\d-]+\.\d+Z\.log$/

/**
 * Opens NAME's log for a daemon about to start (appending), after moving a
 * log an earlier daemon of NAME left aside and dropping the oldest kept logs.
 */
export const openDaemonLog = (name: string): { fd: number; path: string } => {
  const dir = logDir()
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  const current = logPath(name)
  try {
    const stamp = fs.statSync(current).mtime.toISOString().replace(/:/g, '-')
    fs.renameSync(current, path.join(dir, `${name}.${stamp}.log`))
  } catch (e) {
    if (errnoCode(e) !== 'ENOENT') throw e
  }
  pruneKeptLogs(dir)
  return { fd: fs.openSync(current, 'a', 0o600), path: current }
}

const pruneKeptLogs = (dir: string): void => {
  const kept = fs
    .readdirSync(dir)
    .filter(f => KEPT.test(f))
    .map(f => ({ f, mtime: fs.statSync(path.join(dir, f)).mtimeMs }))
    .sort((a, b) => b.mtime - a.mtime)
  for (const { f } of kept.slice(KEPT_LOGS)) fs.rmSync(path.join(dir, f), { force: true })
}

/** A cleanly destroyed device's log goes with it. */
export const removeDaemonLog = (name: string): void => fs.rmSync(logPath(name), { force: true })

/**
 * Writes log lines to `fd` (a file opened for appending), starting the file
 * over with a note once it has grown past the cap.
 */
export const cappedLogWriter = (fd: number, cap = LOG_CAP_BYTES): ((line: string) => void) => {
  let size = fs.fstatSync(fd).size
  return line => {
    if (size + Buffer.byteLength(line) > cap) {
      fs.ftruncateSync(fd, 0)
      const note = `${new Date().toISOString()} geom-rowr: the log reached ${cap} bytes and started over\n`
      fs.writeSync(fd, note)
      size = Buffer.byteLength(note)
    }
    size += fs.writeSync(fd, line)
  }
}
