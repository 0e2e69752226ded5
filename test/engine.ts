import { AssertionError } from 'node:assert'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { BlockDevice, type BlockIo, type DeviceCounters } from '../lib/devices/block-device.js'
import { Engine, type MapJournal } from '../lib/engine/engine.js'
import { SectorStates } from '../lib/engine/sector-states.js'
import { PAGE_SECTORS, mapBytes } from '../lib/persist/map-format.js'
import { makeImage, sha256 } from './fixtures/helpers.js'
import { MemoryAttributes, MemoryDevice } from './fixtures/memory-device.js'
import { openMemoryMap } from './fixtures/memory-map.js'

const MiB = 1 << 20

/** RO and RW image files and an engine over them. */
const setup = (t: Test, size: number, sectorSize = 512) => {
  const dir = t.testdir()
  const roPath = makeImage(path.join(dir, 'ro.img'), size)
  const rwPath = makeImage(path.join(dir, 'rw.img'), size, 'zero')
  const ro = BlockDevice.open(roPath, { writable: false })
  const rw = BlockDevice.open(rwPath, { writable: true })
  t.teardown(() => {
    ro.close()
    rw.close()
  })
  const engine = new Engine({ ro, rw, size, sectorSize })
  return { engine, roPath, rwPath, roHash: sha256(roPath), original: fs.readFileSync(roPath) }
}

/** Reads a range, at once or through the thread pool, as the engine chooses. */
const readBack = async (engine: Engine, offset: number, length: number): Promise<Buffer> => {
  const buf = Buffer.allocUnsafe(length)
  await engine.read(buf, offset)
  return buf
}

/** A deterministic random number source, so a failure can be replayed. */
const prng =
  (seed: number) =>
  (k: number): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648
    return Math.floor((seed / 2147483648) * k)
  }

t.test('reads come from RO until written, then from RW', async t => {
  const { engine, original } = setup(t, MiB)
  t.same(await readBack(engine, 0, 4096), original.subarray(0, 4096))
  const data = Buffer.alloc(1024, 0x5a)
  await engine.write(512, data)
  const got = await readBack(engine, 0, 4096)
  t.same(got.subarray(0, 512), original.subarray(0, 512), 'sector before the write is RO')
  t.same(got.subarray(512, 1536), data, 'written sectors are new data')
  t.same(got.subarray(1536), original.subarray(1536, 4096), 'sectors after are RO')
  const s = engine.stats()
  t.equal(s.writtenSectors, 2)
  t.equal(s.writtenBytes, 1024)
  t.equal(s.readBytesFromRw, 1024)
  t.equal(s.readBytesFromRo, 4096 + 3072)
  t.equal(s.splitReads, 1, 'the second read was split into three runs')
})

t.test('RO is never written, whatever is done to the device', async t => {
  const { engine, roPath, roHash } = setup(t, MiB)
  await engine.write(0, randomBytes(64 * 1024))
  await engine.zero(100000, 300000)
  await engine.write(333, randomBytes(1000))
  await engine.flush()
  t.equal(sha256(roPath), roHash)
})

t.test('unaligned writes keep the rest of their edge sectors', async t => {
  const { engine, original } = setup(t, MiB)
  const data = Buffer.alloc(700, 0x11)
  await engine.write(1000, data)
  const got = await readBack(engine, 0, 2048)
  const expected = Buffer.from(original.subarray(0, 2048))
  data.copy(expected, 1000)
  t.same(got, expected)
  t.equal(engine.stats().partialSectorWrites, 1)
  t.equal(engine.stats().writtenSectors, 3, 'sectors 1, 2 and 3 are now on RW')
  await engine.write(10, Buffer.from('abc'))
  expected.write('abc', 10)
  t.same(await readBack(engine, 0, 2048), expected, 'a write inside one sector')
})

t.test('zero-writes and trims read back as zeros and punch holes in RW', async t => {
  const { engine, rwPath } = setup(t, 4 * MiB)
  await engine.write(0, randomBytes(4 * MiB))
  await engine.flush()
  const before = fs.statSync(rwPath).blocks
  await engine.zero(MiB, 2 * MiB)
  t.same(await readBack(engine, MiB, 2 * MiB), Buffer.alloc(2 * MiB))
  t.ok(fs.statSync(rwPath).blocks < before, 'RW gave the space back')
  await engine.zero(100, 50)
  const head = await readBack(engine, 0, 512)
  t.same(head.subarray(100, 150), Buffer.alloc(50), 'a partial-sector zero')
  t.notSame(head.subarray(0, 100), Buffer.alloc(100), 'the rest of the sector is kept')
  await engine.zero(3 * MiB + 500, 1000)
  t.same(await readBack(engine, 3 * MiB + 500, 1000), Buffer.alloc(1000), 'zeros across a sector boundary with no whole sector')
})

t.test('a zero-write on RO data leaves RO alone and reads zeros', async t => {
  const { engine, roPath, roHash } = setup(t, MiB)
  await engine.zero(4096, 8192)
  t.same(await readBack(engine, 4096, 8192), Buffer.alloc(8192))
  t.equal(sha256(roPath), roHash)
  t.equal(engine.stats().writtenSectors, 16)
})

/**
 * Thousands of random reads, writes and zero-writes, every read checked
 * against a plain buffer that gets the same writes; returns how many reads
 * the engine answered at once and how many later.
 */
const agreesWithModel = async (t: Test, engine: Engine, model: Buffer, seed: number) => {
  const size = model.length
  const rand = prng(seed)
  let mismatch: string | undefined
  let atOnce = 0
  let later = 0
  const ops = 4000
  for (let op = 0; op < ops && !mismatch; op++) {
    const kind = rand(10)
    const offset = rand(size)
    const small = rand(3) !== 0
    const length = Math.min(size - offset, small ? rand(9000) + 1 : rand(512 * 1024) + 1)
    if (kind < 4) {
      const got = Buffer.allocUnsafe(length)
      const read = engine.read(got, offset)
      if (read === true) atOnce++
      else {
        later++
        await read
      }
      if (!got.equals(model.subarray(offset, offset + length))) mismatch = `op ${op}: read ${offset}+${length}`
    } else if (kind < 8) {
      const data = randomBytes(length)
      await engine.write(offset, data)
      data.copy(model, offset)
    } else {
      await engine.zero(offset, length)
      model.fill(0, offset, offset + length)
    }
  }
  t.equal(mismatch, undefined, `${ops} random reads, writes and zero-writes match the model`)
  t.ok((await readBack(engine, 0, size)).equals(model), 'the whole device matches at the end')
  return { atOnce, later }
}

t.test('agrees with an in-memory model under thousands of random requests', async t => {
  const { engine, roPath, roHash, original } = setup(t, 8 * MiB)
  const { atOnce, later } = await agreesWithModel(t, engine, Buffer.from(original), 42)
  t.ok(atOnce > 0, `${atOnce} reads were answered at once from the page cache, ${later} later`)
  t.equal(sha256(roPath), roHash, 'RO is unchanged')
})

t.test('agrees with the model over devices that answer some reads at once, and some runs of one read not', async t => {
  const size = 8 * MiB
  const fill = (piece: number, into: Buffer): void => {
    into.fill(piece & 0xff)
    into.writeUInt32LE(piece, 0)
  }
  const ro = new MemoryDevice('/ro', size, { fill, seed: 11 })
  const rw = new MemoryDevice('/rw', size, { seed: 12 })
  const original = Buffer.alloc(size)
  await ro.read(original, 0, size, 0)
  const engine = new Engine({ ro, rw, size, sectorSize: 512 })
  const { atOnce, later } = await agreesWithModel(t, engine, original, 43)
  t.ok(atOnce > 0 && later > 0, `${atOnce} reads answered at once, ${later} later`)
  t.ok(ro.readsNow > 0 && rw.readsNow > 0, 'both devices answered runs at once')
  t.ok(ro.readsNotNow > 0 && rw.readsNotNow > 0, 'and both turned some down')
  t.same(ro.pieces.size, 0, 'RO is never written')
})

t.test('concurrent overlapping requests: reads see writes that came before them', async t => {
  const size = 2 * MiB
  const { engine, original } = setup(t, size)
  const model = Buffer.from(original)
  const rand = prng(7)
  for (let round = 0; round < 50; round++) {
    const batch: Promise<unknown>[] = []
    const expectations: { offset: number; length: number; expected: Buffer; got: Promise<Buffer> }[] = []
    for (let i = 0; i < 16; i++) {
      const offset = rand(64) * 512 + rand(3) * 100
      const length = rand(8) * 512 + 512
      if (rand(2) === 0) {
        const data = randomBytes(length)
        data.copy(model, offset)
        batch.push(engine.write(offset, data))
      } else {
        // Requests are served in arrival order where they overlap, so the
        // model as it stands now is what this read must return.
        const got = readBack(engine, offset, length)
        expectations.push({ offset, length, expected: Buffer.from(model.subarray(offset, offset + length)), got })
        batch.push(got)
      }
    }
    await Promise.all(batch)
    for (const e of expectations) {
      if (!(await e.got).equals(e.expected)) {
        t.fail(`round ${round}: read ${e.offset}+${e.length} saw the wrong data`)
        return
      }
    }
  }
  t.ok((await readBack(engine, 0, size)).equals(model))
  t.ok(engine.stats().overlapWaits > 0, 'some requests had to wait their turn')
})

/** A device whose operations can be made to fail, recording what is done. */
class FakeDevice implements BlockIo {
  readonly path = '/fake'
  readonly size: number
  readonly data: Buffer
  readonly calls: string[] = []
  failWrites: Error | undefined
  failReads: Error | undefined
  constructor(size: number) {
    this.size = size
    this.data = Buffer.alloc(size, 0xee)
  }
  async read(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.calls.push(`read ${position}+${length}`)
    if (this.failReads) throw this.failReads
    this.data.copy(buf, offset, position, position + length)
  }
  async write(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.calls.push(`write ${position}+${length}`)
    if (this.failWrites) throw this.failWrites
    buf.copy(this.data, position, offset, offset + length)
  }
  async datasync(): Promise<void> {
    this.calls.push('datasync')
  }
  async zero(position: number, length: number): Promise<void> {
    this.calls.push(`zero ${position}+${length}`)
    this.data.fill(0, position, position + length)
  }
  async release(position: number, length: number): Promise<boolean> {
    this.calls.push(`release ${position}+${length}`)
    return false
  }
  readNow(): boolean {
    return false
  }
  counters(): DeviceCounters {
    return { inlineWrites: 0, writeStalls: 0 }
  }
}

t.test('a failed write leaves the sectors on RO and reports the error', async t => {
  const ro = new FakeDevice(8192)
  const rw = new FakeDevice(8192)
  const engine = new Engine({ ro, rw, size: 8192, sectorSize: 512 })
  rw.failWrites = Object.assign(new Error('no space'), { code: 'ENOSPC' })
  await t.rejects(engine.write(0, Buffer.alloc(512, 1)), { code: 'ENOSPC' })
  t.equal(engine.stats().writtenSectors, 0, 'nothing was marked written')
  ro.calls.length = 0
  await readBack(engine, 0, 512)
  t.same(ro.calls, ['read 0+512'], 'the sector still reads from RO')
  rw.failWrites = undefined
  await engine.write(0, Buffer.alloc(512, 1))
  t.equal(engine.stats().writtenSectors, 1, 'the device works again once RW does')
})

t.test('a failed read is reported and does not block later requests', async t => {
  const ro = new FakeDevice(8192)
  const rw = new FakeDevice(8192)
  const engine = new Engine({ ro, rw, size: 8192, sectorSize: 512 })
  ro.failReads = Object.assign(new Error('medium error'), { code: 'EIO' })
  await t.rejects(readBack(engine, 0, 1024), { code: 'EIO' })
  ro.failReads = undefined
  await engine.write(0, Buffer.alloc(1024, 2))
  t.same(await readBack(engine, 0, 1024), Buffer.alloc(1024, 2))
})

t.test('FUA syncs RW before the write completes; FLUSH syncs RW', async t => {
  const ro = new FakeDevice(8192)
  const rw = new FakeDevice(8192)
  const engine = new Engine({ ro, rw, size: 8192, sectorSize: 512 })
  await engine.write(0, Buffer.alloc(512), { fua: true })
  t.same(rw.calls, ['write 0+512', 'datasync'])
  rw.calls.length = 0
  await engine.write(512, Buffer.alloc(512))
  t.same(rw.calls, ['write 512+512'], 'no sync without FUA')
  await engine.zero(1024, 1024, { fua: true })
  await engine.flush()
  t.same(rw.calls.slice(1), ['zero 1024+1024', 'datasync', 'datasync'])
  t.equal(engine.stats().flushes, 1)
})

t.test('CACHE reads the range through whichever device serves it', async t => {
  const ro = new FakeDevice(3 * MiB)
  const rw = new FakeDevice(3 * MiB)
  const engine = new Engine({ ro, rw, size: 3 * MiB, sectorSize: 512 })
  await engine.write(MiB, Buffer.alloc(512))
  await engine.cache(0, 2 * MiB + 512)
  t.same(
    rw.calls.filter(c => c.startsWith('read')),
    [`read ${MiB}+512`],
  )
  t.ok(ro.calls.includes('read 0+1048576'))
  t.equal(engine.stats().caches, 1)
})

t.test('extents describe which ranges are on RW', async t => {
  const ro = new FakeDevice(8192)
  const rw = new FakeDevice(8192)
  const engine = new Engine({ ro, rw, size: 8192, sectorSize: 512 })
  await engine.write(1024, Buffer.alloc(1024))
  t.same(engine.extents(0, 8192, 100), [
    { length: 1024, written: false },
    { length: 1024, written: true },
    { length: 6144, written: false },
  ])
  t.same(engine.extents(1536, 1024, 100), [
    { length: 512, written: true },
    { length: 512, written: false },
  ])
  t.same(engine.extents(0, 8192, 1), [{ length: 1024, written: false }], 'at most max extents')
})

t.test('a request outside the device is a bug below the front ends: an assertion fails', async t => {
  const ro = new FakeDevice(8192)
  const rw = new FakeDevice(8192)
  const engine = new Engine({ ro, rw, size: 8192, sectorSize: 512 })
  await t.rejects(readBack(engine, 8000, 512), AssertionError)
  await t.rejects(engine.write(-1, Buffer.alloc(1)), AssertionError)
  await t.rejects(engine.zero(0, 9000), AssertionError)
  t.throws(() => engine.extents(8192, 1, 1), AssertionError)
  t.throws(() => new Engine({ ro, rw, size: 8000, sectorSize: 512 }), AssertionError, 'a size of part sectors')
  t.throws(() => new Engine({ ro, rw, size: 16384, sectorSize: 512 }), AssertionError, 'devices smaller than the engine')
  t.throws(() => new Engine({ ro, rw, size: 8192, sectorSize: 512, map: new SectorStates(8) }), AssertionError, 'a map of another size')
  await engine.write(0, Buffer.alloc(0))
  await engine.zero(0, 0)
  t.equal(engine.stats().writes + engine.stats().zeroes, 0, 'empty requests do nothing')
})

t.test('read answers cached data at once, and waits for an overlapping write in flight', async t => {
  const { engine, original } = setup(t, MiB)
  const now = Buffer.alloc(8192)
  t.equal(engine.read(now, 4096), true, 'image files just written are in the page cache')
  t.same(now, original.subarray(4096, 12288))
  const data = Buffer.alloc(1024, 0x77)
  const pending = engine.write(5000, data)
  const overlapping = Buffer.alloc(8192)
  const waiting = engine.read(overlapping, 4096)
  t.not(waiting, true, 'a write to the range is in flight: the read waits for it')
  t.equal(engine.read(Buffer.alloc(512), 20000), true, 'reads elsewhere go on at once')
  await pending
  await waiting
  t.same(overlapping.subarray(904, 1928), data, 'the read that waited sees the write')
  const after = Buffer.alloc(8192)
  t.equal(engine.read(after, 4096), true)
  t.same(after, overlapping, 'and so does one at once after it')
  t.same(after.subarray(0, 904), original.subarray(4096, 5000))
  t.equal(engine.stats().splitReads, 2, 'RO, RW, RO runs, each time')
})

t.test('a device that never answers at once: every read waits for read()', async t => {
  const ro = new FakeDevice(8192)
  const rw = new FakeDevice(8192)
  const engine = new Engine({ ro, rw, size: 8192, sectorSize: 512 })
  const read = engine.read(Buffer.alloc(512), 0)
  t.not(read, true)
  await read
  t.same(ro.calls, ['read 0+512'])
  t.equal(engine.stats().reads, 1, 'counted once')
})

t.test('a read some of whose runs are answered at once and one not is read again in full, and counted once', async t => {
  const size = 8192
  const ro = new MemoryDevice('/ro', size, { fill: (_p, into) => into.fill(1), readNowShare: 1 })
  const rw = new MemoryDevice('/rw', size, { readNowShare: 0 })
  const engine = new Engine({ ro, rw, size, sectorSize: 512 })
  await engine.write(1024, Buffer.alloc(512, 2))
  const buf = Buffer.alloc(2048)
  const read = engine.read(buf, 0)
  t.not(read, true, 'RW would not answer at once')
  t.equal(ro.readsNow, 1, 'after RO answered its first run')
  await read
  t.same(buf, Buffer.concat([Buffer.alloc(1024, 1), Buffer.alloc(512, 2), Buffer.alloc(512, 1)]))
  t.match(engine.stats(), { reads: 1, readBytesFromRo: 1536, readBytesFromRw: 512, splitReads: 1 })
})

t.test('a read outside the device rejects; it never throws', async t => {
  const ro = new FakeDevice(8192)
  const engine = new Engine({ ro, rw: new FakeDevice(8192), size: 8192, sectorSize: 512 })
  const read = engine.read(Buffer.alloc(512), 8000)
  t.not(read, true)
  await t.rejects(read as Promise<void>, AssertionError)
})

t.test('drain waits for writes still running on the device', async t => {
  const ro = new FakeDevice(8192)
  let finish: (() => void) | undefined
  const rw = new (class extends FakeDevice {
    override async write(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
      await new Promise<void>(resolve => (finish = resolve))
      return super.write(buf, offset, length, position)
    }
  })(8192)
  const engine = new Engine({ ro, rw, size: 8192, sectorSize: 512 })
  const write = engine.write(0, Buffer.alloc(512, 9))
  let drained = false
  const drain = engine.drain().then(() => (drained = true))
  await new Promise(res => setImmediate(res))
  t.notOk(drained, 'the write is still running')
  finish!()
  await write
  await drain
  t.ok(drained)
  t.equal(rw.data[0], 9)
})

t.test('large reads take the thread pool even when cached', async t => {
  const { engine, original } = setup(t, MiB)
  t.equal(engine.read(Buffer.alloc(8192), 0), true, '8 KiB at once')
  const large = Buffer.alloc(8192 + 512)
  const read = engine.read(large, 0)
  t.not(read, true, 'larger: the pool copies it beside the event loop')
  await read
  t.same(large, original.subarray(0, large.length))
})

/** A journal that records its calls in `log`, with RW's. */
const recordingJournal = (log: string[]): MapJournal => ({
  marked: (start, count) => void log.push(`marked ${start}+${count}`),
  copied: (start, count) => void log.push(`copied ${start}+${count}`),
  recordsCopies: true,
  commit: async syncRw => {
    await syncRw()
    log.push('journal commit')
  },
  clear: async () => void log.push('journal clear'),
  startCommit: async () => void log.push('journal startCommit'),
  finishCommit: async ro => void log.push(`journal finishCommit ${ro.path}`),
})

t.test('revert empties the map through the journal, then gives RW its space back', async t => {
  const ro = new FakeDevice(8192)
  const rw = new FakeDevice(8192)
  const engine = new Engine({ ro, rw, size: 8192, sectorSize: 512, journal: recordingJournal(rw.calls) })
  await engine.write(1024, Buffer.alloc(1024, 5))
  t.same(engine.writtenRanges(), [{ offset: 1024, length: 1024 }])
  rw.calls.length = 0
  t.same(await engine.revert(), { bytes: 1024, released: false })
  t.same(rw.calls, ['journal clear', 'release 0+8192'], 'the map is emptied on disk before RW lets go of the data')
  t.same(engine.writtenRanges(), [])
  t.same(await readBack(engine, 1024, 512), Buffer.alloc(512, 0xee), 'RO shows through again')
})

t.test('commitInto copies the written ranges into RO chunk by chunk, and a step that throws stops it with the map intact', async t => {
  const size = 4 * MiB
  const ro = new FakeDevice(size)
  const rw = new FakeDevice(size)
  const log = rw.calls
  const engine = new Engine({ ro, rw, size, sectorSize: 512, journal: recordingJournal(log) })
  const data = randomBytes(2 * MiB + 512)
  await engine.write(MiB, data)
  const steps: [number, number][] = []
  const stop = new Error('stop')
  await t.rejects(
    engine.commitInto(ro, (done, total) => {
      steps.push([done, total])
      if (done > 0) throw stop
    }),
    stop,
  )
  t.same(
    steps,
    [
      [0, data.length],
      [MiB, data.length],
    ],
    'a step before each chunk',
  )
  t.ok(ro.data.subarray(MiB, 2 * MiB).equals(data.subarray(0, MiB)), 'the first chunk reached RO')
  t.same(engine.writtenRanges(), [{ offset: MiB, length: data.length }], 'the map still describes RW')
  t.notOk(log.includes('journal finishCommit /fake'))
  log.length = 0
  steps.length = 0
  const done = await engine.commitInto(ro, (d, total) => void steps.push([d, total]))
  t.same(done, { bytes: data.length, released: false })
  t.same(steps.at(-1), [data.length, data.length], 'and one when all is copied')
  t.ok(ro.data.subarray(MiB, MiB + data.length).equals(data), 'RO holds every write')
  t.same(engine.writtenRanges(), [])
  t.same(
    log.filter(c => !c.startsWith('read') && !c.startsWith('write')),
    ['datasync', 'journal commit', 'journal startCommit', 'journal finishCommit /fake', 'release 0+4194304'],
    'RW and the map durable first, the commit recorded, then the map emptied, then RW released',
  )
})

/** RW whose syncs each wait until the test lets them go. */
class HeldSyncs extends MemoryDevice {
  readonly held: (() => void)[] = []
  override async datasync(): Promise<void> {
    await new Promise<void>(resolve => this.held.push(resolve))
    return super.datasync()
  }
}

const turns = async (until: () => boolean): Promise<void> => {
  for (let i = 0; i < 1000 && !until(); i++) await new Promise(resolve => setImmediate(resolve))
}

t.test("revert waits for the map's flush rounds still running or queued, or they would write old bits into the emptied map", async t => {
  const sectors = PAGE_SECTORS
  const size = sectors * 512
  const ro = new MemoryDevice('/ro', size, { fill: (_p, into) => into.fill(3) })
  const rw = new HeldSyncs('/rw', size)
  const store = new MemoryDevice('/map', mapBytes(size, 512))
  // RW's extended attributes, where the map stamps its device ID: the same RW each time it is opened.
  const attributes = new MemoryAttributes()
  const open = async () => {
    const map = new SectorStates(sectors)
    const opened = await openMemoryMap({ store, ro, rw, attributes, size, sectorSize: 512, map })
    return { map, file: opened.file }
  }
  const { map, file } = await open()
  const engine = new Engine({ ro, rw, size, sectorSize: 512, map, journal: file })
  await engine.write(0, Buffer.alloc(4096, 1))
  const first = engine.flush()
  await turns(() => rw.held.length === 1)
  await engine.write(8192, Buffer.alloc(512, 2))
  const second = engine.flush()
  const reverted = engine.revert()
  rw.held.shift()!()
  await turns(() => rw.held.length === 1)
  t.equal(rw.held.length, 1, 'the second round waits for its sync of RW')
  await turns(() => false)
  rw.held.shift()!()
  await Promise.all([first, second, reverted])
  const again = await open()
  t.equal(again.map.writtenSectors, 0, 'the map on disk is empty after revert')
})
