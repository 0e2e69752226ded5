// RO given as the word none: a device whose map says every sector is on RW
// (fully hydrated) resumes without its RO, which may be gone for good. The
// engine never reads it (the map sends every read to RW); a read that came
// here anyway fails with a clear error rather than reading anything else.
import type { BlockIo, DeviceCounters } from './block-device.js'
import { RowrError } from '../errors.js'

export const NO_RO = 'none'

const gone = (): Promise<never> => Promise.reject(new RowrError('ERORELEASED', 'RO was given as none: the device has no RO to read'))

export class AbsentRo implements BlockIo {
  readonly path = NO_RO
  /** The device's size, from its map. */
  readonly size: number

  constructor(size: number) {
    this.size = size
  }

  read = gone
  write = gone
  datasync = gone
  zero = gone
  readNow(): boolean {
    return false
  }
  async release(): Promise<boolean> {
    return false
  }
  counters(): DeviceCounters {
    return { inlineWrites: 0, writeStalls: 0 }
  }
  close(): void {}
}
