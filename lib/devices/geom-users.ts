// Who uses a GEOM provider, as FreeBSD tells it: the access counts of
// kern.geom.confxml (geom-mesh.ts). FreeBSD's counterpart of
// kernel-users.ts. An exclusive open cannot answer this there: g_dev_open
// (sys/geom/geom_dev.c) takes read and write counts for an open of
// /dev/NAME but never the exclusive one, whatever O_EXCL says. The mesh
// can: a mount is a consumer of the VFS class (g_vfs_open, read-only mounts
// included, which take no exclusive count), and a swap area, a pool or a
// class stacked on the provider are consumers of their own classes.
import { libc } from '../../native-bindings/libc.js'
import { errnoName } from '../../native-bindings/errno.js'
import { RowrError } from '../errors.js'
import { parseGeomMesh, type Access, type GeomConsumer, type GeomProvider } from './geom-mesh.js'

export type { GeomProvider } from './geom-mesh.js'

/** Every provider by name, as the kernel has them now. */
export const geomProviders = (): Map<string, GeomProvider> => {
  const xml = libc().sysctlString('kern.geom.confxml')
  if (typeof xml !== 'string') {
    throw new RowrError('EPLATFORM', `cannot read sysctl kern.geom.confxml: ${errnoName(xml.errno)}`)
  }
  return parseGeomMesh(xml)
}

/** The provider a path under /dev names (ada0p1, md0.uzip, gpt/root), or undefined for another path. */
export const providerName = (device: string): string | undefined =>
  device.startsWith('/dev/') && device.length > '/dev/'.length ? device.slice('/dev/'.length) : undefined

const used = (a: Access): boolean => a.r + a.w + a.e > 0

const counts = (a: Access): string => `r${a.r}w${a.w}e${a.e}`

const describe = (provider: string, c: GeomConsumer): string => {
  switch (c.className) {
    case 'DEV':
      return `held open through /dev/${provider} (${counts(c.mode)})`
    case 'VFS':
      return `mounted${c.mode.w > 0 ? '' : ' read-only'} (${c.geom})`
    default:
      return `used by GEOM class ${c.className} (${c.geom}, ${counts(c.mode)})`
  }
}

/** Every use of the provider: what DESTROY without force refuses while there is one. */
export const providerUses = (p: GeomProvider): string[] => p.consumers.filter(c => used(c.mode)).map(c => describe(p.name, c))

/**
 * Uses by the kernel itself: mounts, swap, pools, classes stacked on it;
 * opens of /dev/NAME only when exclusive. What an exclusive open refuses
 * on Linux.
 */
export const kernelUses = (p: GeomProvider): string[] =>
  p.consumers.filter(c => (c.className === 'DEV' ? c.mode.e > 0 : used(c.mode))).map(c => describe(p.name, c))
