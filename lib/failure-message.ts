// What a failure says to the user. geom-rowr's own refusals (RowrError)
// already name the device, the problem and the fix; a system error that
// reaches the user unexplained (a directory given as RW, a map in a folder
// that does not exist, a full disk, a busy port) is put the same way here,
// from its errno, the call that failed and the path or address it names.
import { isRowrError } from './errors.js'

interface SystemError {
  readonly code: string
  readonly syscall?: string
  readonly path?: string
  readonly dest?: string
  readonly address?: string
  readonly port?: number
  readonly message: string
}

const isSystemError = (e: unknown): e is SystemError =>
  e instanceof Error && typeof (e as { code?: unknown }).code === 'string' && typeof (e as { syscall?: unknown }).syscall === 'string'

/** The problem and the fix, for the errnos a user's input or machine can cause. */
const explanations: Record<string, (what: string, e: SystemError) => string> = {
  ENOENT: what =>
    `${what} does not exist (or a folder on its path does not): check the path; a new file's folder must exist first (mkdir -p)`,
  EISDIR: what => `${what} is a directory: give a regular file or a disk device`,
  ENOTDIR: what => `a part of ${what}'s path is not a directory: check the path`,
  EACCES: what => `permission to use ${what} is denied: run as its owner or as root, or choose a path you may use`,
  EPERM: what =>
    `${what} may not be changed (an immutable or append-only file, or a device the system protects): lsattr or the system's policy says which; choose another`,
  EROFS: what => `${what} is on a read-only file system: choose a path on a writable one, or remount it read-write`,
  ENOSPC: what => `the file system holding ${what} is full: free space there, or choose a file system with room`,
  EDQUOT: what => `the disk quota for ${what} is used up: free space or raise the quota`,
  EFBIG: what => `${what} would grow past the largest file its file system allows: choose another file system`,
  ENAMETOOLONG: what => `${what}'s name is too long for the file system: choose a shorter path`,
  ELOOP: what => `${what} is a loop of symbolic links: check where its links point`,
  EMFILE: () => 'this process has too many open files: raise its limit (ulimit -n) and try again',
  ENFILE: () => 'the system has too many open files: close some and try again',
  EBUSY: what => `${what} is busy (mounted or held open by someone else): release it first`,
  ETXTBSY: what => `${what} is a running program's file: choose another`,
  ENXIO: what => `${what} has no device behind it (a device that went away?): check it is attached`,
  ENODEV: what => `${what} has no device behind it: check it is attached`,
  EIO: what => `${what} failed with an I/O error: the device or its medium is failing; look at the kernel log (dmesg)`,
  EADDRINUSE: (what, e) =>
    e.port !== undefined
      ? `${what} is already in use (another NBD server?): choose another --port, or stop the program listening there (ss -ltnp 'sport = :${e.port}' names it)`
      : `${what} is already in use by a running program: choose another path`,
  EADDRNOTAVAIL: what => `${what} is not an address of this machine: choose one it has (ip address lists them)`,
}

/** What a system error was about: its path (and destination), or its address and port. */
const subject = (e: SystemError): string => {
  if (e.path) return e.dest ? `${e.path} -> ${e.dest}` : e.path
  if (e.address !== undefined) return e.port !== undefined ? `${e.address} port ${e.port}` : e.address
  return 'the operation'
}

export const failureMessage = (e: unknown): string => {
  if (isRowrError(e) || !isSystemError(e)) return e instanceof Error ? e.message : String(e)
  const explain = explanations[e.code]
  const what = subject(e)
  return explain ? `${explain(what, e)} (${e.code} from ${e.syscall})` : `${e.syscall} ${what} failed: ${e.message}`
}

/**
 * A system error from a call on a file descriptor names no path; `path`
 * says which file it was about, for failureMessage.
 */
export const aboutPath = (e: unknown, path: string): unknown => {
  if (isSystemError(e) && !e.path) Object.defineProperty(e, 'path', { value: path, enumerable: true })
  return e
}
