// Hydration on in-memory devices: random client writes, trims and
// zero-writes racing the copy; at the end RW alone equals the model, the
// client's ranges are exactly what diff lists, RO's holes are zeros on RW;
// copy-on-read; a read error fails it and a resume retries; progress kept
// by a persistent map; RO released and revert refused once it is done.
import t from 'tap'
import { Engine } from '../lib/engine/engine.js'
import { Hydration } from '../lib/engine/hydration.js'
import { SectorStates } from '../lib/engine/sector-states.js'
import { mapBytes } from '../lib/persist/map-format.js'
import { MemoryAttributes, MemoryDevice } from './fixtures/memory-device.js'
import { openMemoryMap } from './fixtures/memory-map.js'
import { prng } from './fixtures/prng.js'

const SECTOR = 512
const PIECE = 512
/** RO's content: each piece its number; a hole reads zeros. */
const roFill =
  (holes: (piece: number) => boolean) =>
  (piece: number, into: Buffer): void => {
    if (holes(piece)) return void into.fill(0)
    into.fill((piece * 7) & 0xff)
    into.writeUInt32LE(piece, 0)
  }
/** RW before anything is written: not zeros, so that a hole not made zero on RW shows. */
const rwGarbage = (_piece: number, into: Buffer): void => void into.fill(0xee)

const holesEvery = (piece: number): boolean => Math.floor(piece / 96) % 3 === 1

interface Setup {
  ro: MemoryDevice
  rw: MemoryDevice
  engine: Engine
  model: Buffer
  map: SectorStates
}

const setup = (size: number, seed: number, o: { map?: SectorStates } = {}): Setup => {
  const ro = new MemoryDevice('/ro', size, { fill: roFill(holesEvery), holes: holesEvery, jitter: 3, seed })
  const rw = new MemoryDevice('/rw', size, { fill: rwGarbage, jitter: 3, seed: seed + 1 })
  const map = o.map ?? new SectorStates(size / SECTOR)
  const engine = new Engine({ ro, rw, size, sectorSize: SECTOR, map })
  const model = Buffer.alloc(size)
  for (let piece = 0; piece < size / PIECE; piece++) roFill(holesEvery)(piece, model.subarray(piece * PIECE, (piece + 1) * PIECE))
  return { ro, rw, engine, model, map }
}

/** RW's bytes, read from RW alone. */
const rwImage = async (rw: MemoryDevice): Promise<Buffer> => {
  const b = Buffer.alloc(rw.size)
  await rw.read(b, 0, b.length, 0)
  return b
}

/** The sector-aligned ranges a set of sectors makes, in order. */
const ranges = (sectors: Set<number>): { offset: number; length: number }[] => {
  const out: { offset: number; length: number }[] = []
  for (const s of [...sectors].sort((a, b) => a - b)) {
    const last = out.at(-1)
    if (last && last.offset + last.length === s * SECTOR) out[out.length - 1] = { offset: last.offset, length: last.length + SECTOR }
    else out.push({ offset: s * SECTOR, length: SECTOR })
  }
  return out
}

const until = async (done: () => boolean): Promise<void> => {
  while (!done()) await new Promise(resolve => setTimeout(resolve, 1))
}

t.test(
  "random writes, trims and zero-writes racing hydration: RW alone equals the model, diff lists exactly the client's ranges",
  async t => {
    for (const seed of [1, 2, 3]) {
      const size = 2 << 20
      const { ro, rw, engine, model } = setup(size, seed)
      const random = prng(seed)
      const written = new Set<number>()
      const hydration = new Hydration(engine, { pieceBytes: 16 << 10, share: 0.5 })
      hydration.start()
      const pending: Promise<void>[] = []
      const readsChecked: Promise<void>[] = []
      for (let op = 0; op < 1500; op++) {
        const offset = Math.floor(random() * (size - 1))
        const length = Math.min(size - offset, 1 + Math.floor(random() * 12000))
        const kind = random()
        const first = Math.floor(offset / SECTOR)
        const last = Math.floor((offset + length - 1) / SECTOR)
        if (kind < 0.45) {
          const data = Buffer.alloc(length, (op % 250) + 1)
          data.writeUInt32LE(op, 0)
          data.copy(model, offset)
          pending.push(engine.write(offset, data))
        } else if (kind < 0.6) {
          model.fill(0, offset, offset + length)
          pending.push(engine.zero(offset, length, { allocate: random() < 0.5 }))
        } else {
          const expected = Buffer.from(model.subarray(offset, offset + length))
          const buf = Buffer.alloc(length)
          const read = engine.read(buf, offset)
          readsChecked.push(
            Promise.resolve(read).then(() => {
              if (!buf.equals(expected)) throw new Error(`seed ${seed} op ${op}: a read of ${offset}+${length} differs from the model`)
            }),
          )
          continue
        }
        for (let s = first; s <= last; s++) written.add(s)
        if (op % 20 === 19) await Promise.all(pending.splice(0))
      }
      await Promise.all([...pending, ...readsChecked])
      await until(() => hydration.state !== 'running')
      t.equal(hydration.state, 'done', `seed ${seed}: hydration finished`)
      t.equal(engine.roBytes, 0, `seed ${seed}: every sector is on RW`)
      t.ok((await rwImage(rw)).equals(model), `seed ${seed}: RW alone equals the model (no client write overwritten by the copy)`)
      t.same(engine.writtenRanges(), ranges(written), `seed ${seed}: diff lists exactly the client-written ranges`)
      t.ok(
        engine.stats().copiedBytes > 0 && engine.stats().copiedBytes + engine.stats().writtenBytes === size,
        `seed ${seed}: the rest was copied`,
      )
      t.ok(ro.extentAt !== undefined)
    }
  },
)

t.test("RO's holes become zeros on RW; the device reads the same before and after", async t => {
  const size = 1 << 20
  const { ro, rw, engine, model } = setup(size, 7)
  let readFromRo = 0
  const read = ro.read.bind(ro)
  ro.read = (buf, offset, length, position) => {
    readFromRo += length
    return read(buf, offset, length, position)
  }
  const hydration = new Hydration(engine)
  hydration.start()
  await until(() => hydration.state !== 'running')
  t.equal(hydration.state, 'done')
  t.ok((await rwImage(rw)).equals(model), 'RW equals RO, holes as zeros where RW held other bytes')
  let data = 0
  for (let piece = 0; piece < size / PIECE; piece++) if (!holesEvery(piece)) data += PIECE
  t.equal(readFromRo, data, "only RO's data was read: its holes were zeroed, not copied")
  t.same(engine.writtenRanges(), [], 'nothing copied counts as a change')
})

t.test('copy-on-read copies what a read finds on RO, marked copied, not written', async t => {
  const size = 1 << 20
  const { rw, engine, model } = setup(size, 9)
  engine.copyOnRead = true
  const buf = Buffer.alloc(4096)
  await engine.read(buf, 8192)
  const big = Buffer.alloc(64 << 10)
  await engine.read(big, 256 << 10)
  await engine.drain()
  t.equal(engine.stats().copiedBytes, 4096 + (64 << 10))
  const image = await rwImage(rw)
  t.ok(image.subarray(8192, 8192 + 4096).equals(model.subarray(8192, 8192 + 4096)), "the small read's sectors are on RW")
  t.ok(image.subarray(256 << 10, 320 << 10).equals(model.subarray(256 << 10, 320 << 10)), "the large read's sectors are on RW")
  t.same(engine.writtenRanges(), [])
  engine.copyOnRead = false
  await engine.read(Buffer.alloc(4096), 512 << 10)
  await engine.drain()
  t.equal(engine.stats().copiedBytes, 4096 + (64 << 10), 'off: nothing more copied')
})

t.test('a read error of RO fails hydration and degrades the device; a resume retries', async t => {
  const size = 1 << 20
  const { ro, rw, engine, model } = setup(size, 11)
  const ended: string[] = []
  const hydration = new Hydration(engine, { pieceBytes: 64 << 10, onEnd: state => void ended.push(state) })
  ro.failing = { read: 'EIO' }
  hydration.start()
  await until(() => hydration.state !== 'running')
  t.equal(hydration.state, 'failed')
  t.match(hydration.status().error, /RO \/ro: read at byte \d+ failed/)
  t.equal(engine.errors.health, 'degraded')
  t.equal(engine.errors.counts().roRead, 1)
  ro.failing = {}
  hydration.start()
  await until(() => hydration.state !== 'running')
  t.equal(hydration.state, 'done')
  t.same(ended, ['failed', 'done'])
  t.ok((await rwImage(rw)).equals(model))
})

t.test('a rate limit and pause hold the copy back; resume goes on where it stopped', async t => {
  const size = 1 << 20
  const { engine } = setup(size, 13)
  const hydration = new Hydration(engine, { pieceBytes: 64 << 10, rate: 256 << 10 })
  hydration.start()
  await new Promise(resolve => setTimeout(resolve, 50))
  await hydration.pause()
  t.equal(hydration.state, 'paused')
  const remaining = engine.roBytes
  t.ok(remaining > 0 && remaining < size, `some copied (${size - remaining} bytes), not all`)
  await new Promise(resolve => setTimeout(resolve, 20))
  t.equal(engine.roBytes, remaining, 'nothing copied while paused')
  hydration.setRate(0)
  hydration.start()
  await until(() => hydration.state !== 'running')
  t.equal(hydration.state, 'done')
})

t.test('with a persistent map, copies survive a restart; a client write makes a copied sector written; revert forgets writes', async t => {
  const size = 1 << 20
  const sectors = size / SECTOR
  const store = new MemoryDevice('/map', mapBytes(size, SECTOR))
  const attributes = new MemoryAttributes()
  const ro = new MemoryDevice('/ro', size, { fill: roFill(() => false) })
  const rw = new MemoryDevice('/rw', size, { fill: rwGarbage })
  const open = async () => {
    const map = new SectorStates(sectors)
    const opened = await openMemoryMap({ store, ro, rw, attributes, size, sectorSize: SECTOR, map })
    return { map, engine: new Engine({ ro, rw, size, sectorSize: SECTOR, map, journal: opened.file }), file: opened.file }
  }
  const first = await open()
  const hydration = new Hydration(first.engine, { pieceBytes: 64 << 10, rate: 1 << 20 })
  hydration.start()
  await new Promise(resolve => setTimeout(resolve, 100))
  await hydration.pause()
  const copied = first.map.copiedSectors
  t.ok(copied > 0 && copied < sectors, `part copied: ${copied} sectors`)
  await first.engine.write(0, Buffer.alloc(4096, 0x55))
  await first.engine.flush()

  const second = await open()
  t.equal(second.map.copiedSectors, copied - 8, 'the copies are back, less the sectors written over')
  t.same(second.engine.writtenRanges(), [{ offset: 0, length: 4096 }], "only the client's write is a change")
  const again = new Hydration(second.engine)
  again.start()
  await until(() => again.state !== 'running')
  t.equal(again.state, 'done')
  const third = await open()
  t.equal(third.map.hydrated, true, 'the map says every sector is on RW')

  await third.engine.revert()
  t.same(third.engine.writtenRanges(), [])
  const b = Buffer.alloc(4096)
  await third.engine.read(b, 0)
  const expected = Buffer.alloc(4096)
  await ro.read(expected, 0, 4096, 0)
  t.ok(b.equals(expected), "reverted: RO's data again")
})

t.test('a revert after hydration (RO still held) puts sectors back on RO; starting again copies them again', async t => {
  const size = 256 << 10
  const { rw, engine, model } = setup(size, 19)
  const hydration = new Hydration(engine)
  hydration.start()
  await until(() => hydration.state !== 'running')
  await engine.write(0, Buffer.alloc(4096, 0x77))
  await engine.revert()
  t.equal(engine.roBytes, size, 'the map is empty again')
  hydration.start()
  await until(() => hydration.state !== 'running')
  t.equal(hydration.state, 'done')
  t.equal(engine.roBytes, 0)
  t.ok((await rwImage(rw)).equals(model), 'RW holds RO again, the reverted write gone')
})

t.test('once hydrated, RO is released: nothing reads it, revert and commit are refused', async t => {
  const size = 256 << 10
  const { ro, engine, model } = setup(size, 17)
  const hydration = new Hydration(engine)
  hydration.start()
  await until(() => hydration.state !== 'running')
  t.equal(await engine.releaseRo(), true)
  t.equal(engine.roHeld, false)
  ro.failing = { read: 'EIO' }
  const b = Buffer.alloc(size)
  await engine.read(b, 0)
  t.ok(b.equals(model), 'reads come from RW alone')
  t.throws(() => engine.revert(), { code: 'ERORELEASED', message: /revert needs RO, which was released/ })
  t.throws(() => engine.commitInto(ro, () => undefined), { code: 'ERORELEASED' })
})
