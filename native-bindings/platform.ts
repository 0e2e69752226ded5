// What this process runs on, as the code sees it, and the seams that let the
// FreeBSD code run on Linux under the ggctl simulator (test/ggsim/). Every
// such environment variable is read here and nowhere else:
//   GEOM_ROWR_PLATFORM  linux | freebsd: which platform's code paths run
//   GEOM_ROWR_LIBC      the C library to load instead of the system's (the
//                       simulator's exports /dev/ggctl's ioctls)
//   GGSIM_MOUNT         with GEOM_ROWR_LIBC, the directory where the
//                       simulator's FUSE mount shows its providers
import path from 'node:path'

export type Platform = 'linux' | 'freebsd'

export const platform = (): Platform => {
  const override = process.env.GEOM_ROWR_PLATFORM
  if (override === 'linux' || override === 'freebsd') return override
  return process.platform === 'freebsd' ? 'freebsd' : 'linux'
}

/** A C library other than the system's is loaded (the ggctl simulator's). */
export const libcReplaced = (): boolean => process.env.GEOM_ROWR_LIBC !== undefined && process.env.GEOM_ROWR_LIBC !== ''

/** The C library to load. */
export const libcPath = (): string =>
  libcReplaced() ? process.env.GEOM_ROWR_LIBC! : process.platform === 'freebsd' ? 'libc.so.7' : 'libc.so.6'

/** Where GEOM provider NAME appears: /dev/NAME, or under the ggctl simulator the file its FUSE mount shows. */
export const providerPath = (name: string): string => {
  const simMount = process.env.GGSIM_MOUNT
  return libcReplaced() && simMount ? path.join(simMount, name) : `/dev/${name}`
}
