// What each sector of the device is: still on RO, written by a client, or
// copied from RO by hydration. Reads only ask "on RW or not" (one map, as
// before hydration existed); diff, commit and export ask "written by a
// client" (the second map). A copied sector holds RO's own bytes, so it
// reads the same from either device and is never a change.
//
// Memory: two SectorMaps of the leaf design (sector-map.ts). Client writes
// are counted in both, so scattered writes cost twice what one map took;
// copied ranges are long and sequential, so hydration fills leaves of the
// on-RW map that collapse into the shared FULL marker and cost nothing once
// whole. The top levels take 8 bytes per 65536 sectors each (512 KiB for a
// 1 TiB device of 512-byte sectors).
import { SectorMap } from './sector-map.js'

export class SectorStates {
  readonly sectors: number
  /** Sectors served from RW: written by a client or copied from RO. */
  readonly onRw: SectorMap
  /** Sectors written by a client (trims and zero-writes included); all of them are on RW. */
  readonly written: SectorMap

  constructor(sectors: number) {
    this.sectors = sectors
    this.onRw = new SectorMap(sectors)
    this.written = new SectorMap(sectors)
  }

  get writtenSectors(): number {
    return this.written.writtenSectors
  }

  /** Sectors copied from RO and not written since. */
  get copiedSectors(): number {
    return this.onRw.writtenSectors - this.written.writtenSectors
  }

  /** Sectors still read from RO. */
  get roSectors(): number {
    return this.sectors - this.onRw.writtenSectors
  }

  /** Every sector is on RW: RO is not needed any more. */
  get hydrated(): boolean {
    return this.onRw.writtenSectors === this.sectors
  }

  /** Whether a client wrote the sector. */
  isWritten(sector: number): boolean {
    return this.written.isWritten(sector)
  }

  /** Marks sectors written by a client; returns how many were not written before. */
  markWritten(start: number, count: number): number {
    this.onRw.setRange(start, count)
    return this.written.setRange(start, count)
  }

  /** Marks sectors copied from RO; returns how many were not on RW before. */
  markCopied(start: number, count: number): number {
    return this.onRw.setRange(start, count)
  }

  /** Forgets every write and every copy. */
  clear(): void {
    this.onRw.clear()
    this.written.clear()
  }

  /** Approximate bytes of memory both maps use. */
  get memoryBytes(): number {
    return this.onRw.memoryBytes + this.written.memoryBytes
  }
}
