// The engine's health: I/O errors of RO and RW counted per device and
// direction, the last one kept, until reset().
import t from 'tap'
import { Engine } from '../lib/engine/engine.js'
import { healthLine, type IoErrorEvent } from '../lib/engine/io-errors.js'
import { MemoryDevice } from './fixtures/memory-device.js'

const SIZE = 64 * 1024

const setup = () => {
  const ro = new MemoryDevice('/dev/ro', SIZE, { fill: (_piece, into) => into.fill(7) })
  const rw = new MemoryDevice('/dev/rw', SIZE)
  const engine = new Engine({ ro, rw, size: SIZE, sectorSize: 512 })
  const events: IoErrorEvent[] = []
  engine.errors.onError = e => events.push(e)
  return { ro, rw, engine, events }
}

const read = async (engine: Engine, offset: number, length: number): Promise<Buffer> => {
  const buf = Buffer.alloc(length)
  await engine.read(buf, offset)
  return buf
}

t.test('a new device is ok, with no errors', async t => {
  const { engine } = setup()
  t.equal(engine.errors.health, 'ok')
  t.same(engine.errors.counts(), { rwWrite: 0, rwRead: 0, roRead: 0, last: null })
  t.equal(healthLine(engine.errors.counts()), 'ok')
})

t.test('a failed RW write is counted, kept as the last error, and keeps its errno for the client', async t => {
  const { rw, engine, events } = setup()
  rw.failing.write = 'ENOSPC'
  const before = Date.now()
  await t.rejects(engine.write(4096, Buffer.alloc(1024, 1)), { code: 'ENOSPC', message: /RW \/dev\/rw: write at byte 4096 failed/ })
  await t.rejects(engine.write(8192, Buffer.alloc(512, 1)), { code: 'ENOSPC' })
  const counts = engine.errors.counts()
  t.equal(counts.rwWrite, 2)
  t.equal(counts.rwRead, 0)
  t.equal(counts.roRead, 0)
  t.match(counts.last, { errno: 'ENOSPC', device: 'rw', op: 'write', offset: 8192 })
  t.ok(Date.parse(counts.last!.at) >= before - 1000, 'at is an ISO time of now')
  t.equal(engine.errors.health, 'degraded')
  t.match(healthLine(counts), /^degraded: rw write ENOSPC at offset 8192 \(.+\); 2 I\/O error\(s\)/)
  t.equal(events.length, 2, 'the listener heard of each one')
  t.match(events[0], { kind: 'rwWrite', errno: 'ENOSPC', offset: 4096 })
})

t.test('zero-writes and flushes of RW count as RW writes', async t => {
  const { rw, engine } = setup()
  rw.failing.write = 'EIO'
  await t.rejects(engine.zero(1024, 2048), { code: 'EIO' })
  t.match(engine.errors.counts(), { rwWrite: 1, last: { device: 'rw', op: 'write', offset: 1024 } })
  rw.failing = { sync: 'EIO' }
  await t.rejects(engine.flush(), { code: 'EIO' })
  await t.rejects(engine.write(0, Buffer.alloc(512), { fua: true }), { code: 'EIO' })
  t.match(engine.errors.counts(), { rwWrite: 3, last: { device: 'rw', op: 'flush', errno: 'EIO' } })
  t.match(healthLine(engine.errors.counts()), /^degraded: rw flush EIO \(/)
})

t.test('reads are counted against the device that served them', async t => {
  const { ro, rw, engine } = setup()
  await engine.write(0, Buffer.alloc(4096, 2))
  ro.failing.read = 'EIO'
  await t.rejects(read(engine, 8192, 512), { code: 'EIO' })
  t.same(await read(engine, 0, 4096), Buffer.alloc(4096, 2), 'RW still serves its sectors')
  t.match(engine.errors.counts(), { roRead: 1, rwRead: 0, last: { device: 'ro', op: 'read', offset: 8192 } })
  ro.failing = {}
  rw.failing.read = 'EIO'
  await t.rejects(read(engine, 1024, 512), { code: 'EIO' })
  t.match(engine.errors.counts(), { roRead: 1, rwRead: 1, last: { device: 'rw', offset: 1024 } })
})

t.test('a read split over both devices names the one that failed', async t => {
  const { ro, engine } = setup()
  await engine.write(0, Buffer.alloc(4096, 2))
  ro.failing.read = 'EIO'
  await t.rejects(read(engine, 0, 8192), { code: 'EIO', message: /RO \/dev\/ro: read at byte 4096/ })
  t.match(engine.errors.counts(), { roRead: 1, rwRead: 0, last: { device: 'ro', offset: 4096 } })
})

t.test('the edge read of a partial-sector write counts as a read of its device', async t => {
  const { ro, engine } = setup()
  ro.failing.read = 'EIO'
  await t.rejects(engine.write(100, Buffer.alloc(10, 1)), { code: 'EIO' })
  t.match(engine.errors.counts(), { roRead: 1, rwWrite: 0, last: { device: 'ro', op: 'read', offset: 0 } })
})

t.test('CACHE failures count as reads', async t => {
  const { ro, engine } = setup()
  ro.failing.read = 'EIO'
  await t.rejects(engine.cache(0, 4096), { code: 'EIO' })
  t.match(engine.errors.counts(), { roRead: 1 })
})

t.test('reset clears the error counts and the statistics, not what is written', async t => {
  const { rw, engine } = setup()
  await engine.write(0, Buffer.alloc(4096, 3))
  await read(engine, 0, 4096)
  rw.failing.write = 'ENOSPC'
  await t.rejects(engine.write(8192, Buffer.alloc(512)), { code: 'ENOSPC' })
  t.equal(engine.errors.health, 'degraded')
  engine.reset()
  t.equal(engine.errors.health, 'ok')
  t.same(engine.errors.counts(), { rwWrite: 0, rwRead: 0, roRead: 0, last: null })
  const stats = engine.stats()
  t.equal(stats.writes, 0)
  t.equal(stats.reads, 0)
  t.equal(stats.readBytesFromRw, 0)
  t.equal(stats.overlapWaits, 0)
  t.equal(stats.writtenBytes, 4096, 'the written sectors stay written')
  t.same(await read(engine, 0, 4096), Buffer.alloc(4096, 3))
  rw.failing = {}
  await engine.write(8192, Buffer.alloc(512))
  t.equal(engine.errors.health, 'ok', 'a write that succeeds does not make it degraded')
  t.equal(engine.stats().writes, 1, 'statistics count again from zero')
})
