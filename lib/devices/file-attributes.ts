// Extended attributes of an open file (Node has no API for them): root
// writes in the system namespace (Linux's trusted.*, which only root can
// change or read), anyone else in user.*. A file system may refuse both:
// vfat, ramfs, some network file systems, tmpfs before Linux 6.6 for user.*.
import fs from 'node:fs'
import { constants } from 'node:os'
import { ATTRIBUTE_ABSENT, libc, type AttributeSpace } from '../../native-bindings/libc.js'
import { platform } from '../../native-bindings/platform.js'

export type { AttributeSpace }

export type AttributeRead =
  | { readonly kind: 'found'; readonly value: Buffer }
  | { readonly kind: 'absent' }
  /** This file system, or this namespace on it, keeps no extended attributes. */
  | { readonly kind: 'unsupported' }

export interface FileAttributes {
  get(space: AttributeSpace, name: string): AttributeRead
  /** Sets the attribute durably; false where the file system refuses it. */
  set(space: AttributeSpace, name: string, value: Buffer): boolean
  /** Removes the attribute if it is there. */
  remove(space: AttributeSpace, name: string): void
}

/** How users see an attribute's full name (getfattr on Linux, getextattr on FreeBSD). */
export const attributeName = (space: AttributeSpace, name: string): string =>
  platform() === 'freebsd' ? `${space}:${name}` : `${space === 'system' ? 'trusted' : 'user'}.${name}`

/** The namespaces this process may write, best first. */
export const writableSpaces = (): AttributeSpace[] => (process.getuid?.() === 0 ? ['system', 'user'] : ['user'])

/**
 * Refusals that mean "not here": no support (EOPNOTSUPP, ENOTSUP on Linux),
 * no permission for this namespace or this kind of file (EPERM, EACCES), no
 * room for attributes (ENOSPC, EDQUOT, E2BIG).
 */
const REFUSED = new Set(
  ['EOPNOTSUPP', 'ENOTSUP', 'EPERM', 'EACCES', 'ENOSPC', 'EDQUOT', 'E2BIG'].flatMap(n => {
    const errno = (constants.errno as Record<string, number | undefined>)[n]
    return errno === undefined ? [] : [errno]
  }),
)

/** Longer than any value geom-rowr writes. */
const MAX_VALUE_BYTES = 256

const failure = (what: string, errno: number): Error => Object.assign(new Error(`${what} failed: errno ${errno}`), { errno })

/** The attributes of the file open on `fd`. */
export const fileAttributes = (fd: number): FileAttributes => ({
  get(space, name) {
    const c = libc()
    const value = Buffer.alloc(MAX_VALUE_BYTES)
    const n = c.getAttribute(fd, space, name, value)
    if (n >= 0) return { kind: 'found', value: value.subarray(0, n) }
    const errno = c.errno()
    if (errno === ATTRIBUTE_ABSENT) return { kind: 'absent' }
    // A value too long for ours is not one we wrote: it reads as found, and unlike ours.
    if (errno === constants.errno.ERANGE) return { kind: 'found', value }
    if (REFUSED.has(errno)) return { kind: 'unsupported' }
    throw failure(`reading extended attribute ${attributeName(space, name)}`, errno)
  },
  set(space, name, value) {
    const c = libc()
    if (c.setAttribute(fd, space, name, value) !== 0) {
      const errno = c.errno()
      if (REFUSED.has(errno)) return false
      throw failure(`setting extended attribute ${attributeName(space, name)}`, errno)
    }
    // Attributes are metadata: fdatasync may leave them behind.
    fs.fsyncSync(fd)
    return true
  },
  remove(space, name) {
    const c = libc()
    if (c.removeAttribute(fd, space, name) === 0) {
      fs.fsyncSync(fd)
      return
    }
    const errno = c.errno()
    if (errno !== ATTRIBUTE_ABSENT && !REFUSED.has(errno)) throw failure(`removing extended attribute ${attributeName(space, name)}`, errno)
  },
})
