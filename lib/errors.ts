// Typed errors. Every refusal the user can meet carries a code, names the
// device or NAME concerned, and says how to fix it.

type RowrErrorCode =
  | 'ENOENT' // a device path does not exist
  | 'ENOTDEV' // a path is neither a regular file nor a disk device
  | 'EMEDIASIZE' // RW is smaller than RO
  | 'ESAMEDEV' // RO and RW are the same file or device
  | 'ENOTWRITABLE' // RW cannot be opened for writing
  | 'ESECTORSIZE' // a bad sector size, or a size that is not a multiple of it
  | 'EBADNAME' // NAME is not a valid device name
  | 'EINUSE' // NAME is taken by a running device
  | 'ENONAME' // no device of that NAME
  | 'EBUSY' // the device is open or mounted
  | 'ENOTCONFIRMED' // commit without -y, and no terminal to ask on (or the answer was no)
  | 'EATTACH' // the kernel block device could not be attached
  | 'EDAEMON' // the daemon did not start or did not answer
  | 'EPLATFORM' // not possible on this platform
  | 'ESOCKETPATH' // a Unix socket path the kernel cannot take
  | 'ENOTMAP' // a --map file that holds something else
  | 'EMAPFORMAT' // a map written by a newer geom-rowr
  | 'EMAPCORRUPT' // a map whose metadata is damaged or truncated
  | 'EMAPGEOMETRY' // a map for a device of another size or sector size
  | 'EFINGERPRINT' // a map that belongs to another RO or RW
  | 'EBOUND' // a RW that carries another map's device ID, taken as empty
  | 'ERORELEASED' // a job that needs RO, after hydration released it
  | 'EHYDRATE' // hydration cannot run on this device (its map cannot keep copies)
  | 'ENEEDRO' // RO given as none, but the map is not fully hydrated

export class RowrError extends Error {
  readonly code: RowrErrorCode
  constructor(code: RowrErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = 'RowrError'
  }
}

export const isRowrError = (e: unknown): e is RowrError => e instanceof RowrError

/** The errno-style code of a Node.js system error, if it is one. */
export const errnoCode = (e: unknown): string | undefined =>
  typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string' ? e.code : undefined

/** What an engine or system failure means to a client, in errno names every front end can express. */
type IoFailure = 'ENOSPC' | 'EPERM' | 'ENOMEM' | 'EIO'

export const ioFailure = (e: unknown): IoFailure => {
  switch (errnoCode(e)) {
    case 'ENOSPC':
    case 'EDQUOT':
      return 'ENOSPC'
    case 'EPERM':
    case 'EACCES':
    case 'EROFS':
      return 'EPERM'
    case 'ENOMEM':
      return 'ENOMEM'
    default:
      return 'EIO'
  }
}

/** sun_path holds 108 bytes on Linux (104 on FreeBSD), with a terminating NUL. */
const MAX_SOCKET_PATH = process.platform === 'freebsd' ? 103 : 107

/**
 * The kernel silently truncates a longer socket path, so the socket would
 * appear somewhere else; refuse it instead.
 */
export const checkSocketPath = (path: string): void => {
  const length = Buffer.byteLength(path)
  if (length > MAX_SOCKET_PATH) {
    throw new RowrError(
      'ESOCKETPATH',
      `socket path ${path} is ${length} bytes, over the ${MAX_SOCKET_PATH}-byte limit of Unix sockets; ` +
        `choose a shorter --socket path or run directory (GEOM_ROWR_RUNDIR)`,
    )
  }
}
