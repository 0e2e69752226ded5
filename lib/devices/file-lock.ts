// Advisory locks on open files (flock(2), through the C library: Node has
// none). A lock belongs to the open file description, so it lasts while
// its descriptor is open and goes away when it is closed, or with the
// process: a failure path that closes the descriptor releases it.
import { constants } from 'node:os'
import { LOCK_EX, LOCK_NB, LOCK_SH, libc } from '../../native-bindings/libc.js'

type LockMode = 'shared' | 'exclusive'

/** What taking a lock gave: the lock, another holder's conflicting lock, or no locks on this file system. */
type LockResult = 'locked' | 'conflict' | 'unsupported'

const CONFLICT = new Set([constants.errno.EWOULDBLOCK, constants.errno.EAGAIN])
/** File systems without flock: some network and FUSE ones; devfs on FreeBSD. */
const UNSUPPORTED = new Set([constants.errno.EOPNOTSUPP, constants.errno.ENOLCK, constants.errno.EINVAL, constants.errno.ENOSYS])

/**
 * Takes (or converts to) the lock without waiting. Converting is not atomic
 * (flock(2)): a conversion that fails has dropped the old lock, which the
 * caller takes again.
 */
export const tryLock = (fd: number, mode: LockMode): LockResult => {
  const c = libc()
  if (c.flock(fd, (mode === 'shared' ? LOCK_SH : LOCK_EX) | LOCK_NB) === 0) return 'locked'
  const errno = c.errno()
  if (CONFLICT.has(errno)) return 'conflict'
  if (UNSUPPORTED.has(errno)) return 'unsupported'
  throw Object.assign(new Error(`flock failed: errno ${errno}`), { errno })
}
