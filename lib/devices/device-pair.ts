// Opening RO and RW together: every check that decides whether the two can
// form a rowr device, made before anything is handed to the engine. On any
// refusal both devices are closed again.
import { RowrError } from '../errors.js'
import { mdBytes } from './auto-rw.js'
import { AbsentRo } from './absent-ro.js'
import { BlockDevice } from './block-device.js'

const MIN_SECTOR_SIZE = 512
const MAX_SECTOR_SIZE = 65536

export interface DevicePair {
  /** AbsentRo: RO given as none (openWithoutRo). */
  readonly ro: BlockDevice | AbsentRo
  readonly rw: BlockDevice
  /** The combined device's size: RO's size. */
  readonly mediaSize: number
  readonly sectorSize: number
  /** Things the user should know that do not stop the device. */
  readonly warnings: readonly string[]
}

interface OpenPairOptions {
  /** Overrides the sector size derived from the devices. */
  readonly sectorSize?: number
  /** How to make a bigger RW, for the mediasize hint. */
  readonly resizeHint?: (rw: string, bytes: number) => string
  /** RW was made by geom-rowr (RW auto), in whole pages: a tail past RO's size is expected. */
  readonly rwMadeToFit?: boolean
}

const isPowerOfTwo = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0

export const checkSectorSize = (n: number): void => {
  if (!isPowerOfTwo(n) || n < MIN_SECTOR_SIZE || n > MAX_SECTOR_SIZE) {
    throw new RowrError(
      'ESECTORSIZE',
      `sector size ${n} is invalid: it must be a power of two from ${MIN_SECTOR_SIZE} to ${MAX_SECTOR_SIZE}`,
    )
  }
}

/**
 * How to get a RW large enough, losing nothing: a file grows in place
 * (truncate keeps its data); an md(4) device cannot, and recreating it
 * would destroy its contents, so a new one is made beside it, with the byte
 * size rounded up to whole pages. Any other device cannot be grown from
 * here: another one is needed.
 */
export const resizeHint = (rw: string, bytes: number): string => {
  if (/^\/dev\/md\d+$/.test(rw)) {
    return `make a new md of that size (mdconfig -a -t swap -s ${mdBytes(bytes)}b prints its name) and give it as RW; ${rw} is left as it is`
  }
  if (rw.startsWith('/dev/')) {
    return `give a device of at least ${bytes} bytes as RW, or a file (truncate -s ${bytes} FILE makes an empty one); ${rw} is left as it is`
  }
  return `truncate -s ${bytes} ${rw}`
}

export const openDevicePair = (
  roPath: string,
  rwPath: string,
  options: OpenPairOptions = {},
): DevicePair & { readonly ro: BlockDevice } => {
  if (options.sectorSize !== undefined) checkSectorSize(options.sectorSize)
  const ro = BlockDevice.open(roPath, { writable: false })
  let rw: BlockDevice | undefined
  try {
    rw = BlockDevice.open(rwPath, { writable: true })
    return checkPair(ro, rw, options)
  } catch (e) {
    rw?.close()
    ro.close()
    throw e
  }
}

/**
 * RW alone, for a device whose map says every sector is on RW (RO given as
 * none): its size and sector size are the map's, which MapFile.open then
 * holds to being fully hydrated.
 */
export const openWithoutRo = (rwPath: string, geometry: { readonly deviceSize: number; readonly sectorSize: number }): DevicePair => {
  const rw = BlockDevice.open(rwPath, { writable: true })
  if (rw.size < geometry.deviceSize || geometry.sectorSize % rw.sectorSize !== 0) {
    rw.close()
    throw new RowrError(
      'EMEDIASIZE',
      `${rwPath} (${rw.size} bytes, ${rw.sectorSize}-byte sectors) cannot hold the ${geometry.deviceSize}-byte device of ${geometry.sectorSize}-byte sectors its map describes: give the RW this map was made with`,
    )
  }
  return { ro: new AbsentRo(geometry.deviceSize), rw, mediaSize: geometry.deviceSize, sectorSize: geometry.sectorSize, warnings: [] }
}

const sameDevice = (ro: BlockDevice, rw: BlockDevice): boolean => {
  const a = ro.identity
  const b = rw.identity
  if (a.kind !== b.kind) return false
  return a.kind === 'file' ? a.dev === b.dev && a.ino === b.ino : a.rdev === b.rdev
}

const checkPair = (ro: BlockDevice, rw: BlockDevice, options: OpenPairOptions): DevicePair & { readonly ro: BlockDevice } => {
  if (sameDevice(ro, rw)) {
    throw new RowrError(
      'ESAMEDEV',
      `${ro.path} and ${rw.path} are the same ${ro.identity.kind === 'file' ? 'file' : 'device'}; ` +
        `the read-write device must be a separate device of the same size`,
    )
  }
  const warnings: string[] = []
  if (rw.size < ro.size) {
    const hint = (options.resizeHint ?? resizeHint)(rw.path, ro.size)
    throw new RowrError(
      'EMEDIASIZE',
      `mediasize mismatch: ${ro.path} is ${ro.size} bytes, ${rw.path} is ${rw.size} bytes; ` +
        `the read-write device must be at least as large: ${hint}`,
    )
  }
  if (rw.size > ro.size && !options.rwMadeToFit) {
    warnings.push(
      `${rw.path} is ${rw.size} bytes, larger than ${ro.path} (${ro.size} bytes); ` +
        `its first ${ro.size} bytes hold the device's data, and past them only a map's device ID or the map itself (--map-on-rw) is kept`,
    )
  }
  const native = Math.max(ro.sectorSize, rw.sectorSize)
  const small = Math.min(ro.sectorSize, rw.sectorSize)
  if (native % small !== 0) {
    throw new RowrError(
      'ESECTORSIZE',
      `sector sizes do not fit: ${ro.path} has ${ro.sectorSize}-byte sectors, ${rw.path} ` +
        `${rw.sectorSize}-byte sectors, and neither divides the other`,
    )
  }
  const sectorSize = options.sectorSize ?? native
  if (sectorSize < native) {
    throw new RowrError(
      'ESECTORSIZE',
      `sector size ${sectorSize} is smaller than the ${native}-byte sectors of ` +
        `${ro.sectorSize === native ? ro.path : rw.path}; use --sector-size ${native} or larger`,
    )
  }
  if (ro.size === 0 || ro.size % sectorSize !== 0) {
    throw new RowrError(
      'ESECTORSIZE',
      `${ro.path} is ${ro.size} bytes, not a non-zero multiple of the ${sectorSize}-byte sector size; ` +
        `pad the image to a multiple of ${sectorSize} bytes (truncate -s ${
          Math.max(1, Math.ceil(ro.size / sectorSize)) * sectorSize
        } ${ro.path}) or choose another --sector-size`,
    )
  }
  return { ro, rw, mediaSize: ro.size, sectorSize, warnings }
}
