import { AssertionError } from 'node:assert'
import t from 'tap'
import { LEAF_SECTORS, SectorMap } from '../lib/engine/sector-map.js'

/** The obvious model: one boolean per sector. */
class ModelMap {
  readonly bits: Uint8Array
  constructor(n: number) {
    this.bits = new Uint8Array(n)
  }
  set(start: number, count: number): number {
    let added = 0
    for (let i = start; i < start + count; i++) {
      if (!this.bits[i]) added++
      this.bits[i] = 1
    }
    return added
  }
  runLength(start: number, end: number): number {
    let i = start
    while (i < end && this.bits[i] === this.bits[start]) i++
    return i - start
  }
}

t.test('a new map has nothing written and one run', async t => {
  const m = new SectorMap(1000)
  t.equal(m.writtenSectors, 0)
  t.equal(m.isWritten(0), false)
  t.equal(m.runLength(0, 1000), 1000)
  t.equal(m.runLength(999, 1000), 1)
})

t.test('setRange marks exactly the range and counts new sectors once', async t => {
  const m = new SectorMap(200)
  t.equal(m.setRange(10, 5), 5)
  t.equal(m.setRange(12, 10), 7, 'overlap is not counted twice')
  t.equal(m.writtenSectors, 12)
  t.equal(m.isWritten(9), false)
  t.equal(m.isWritten(10), true)
  t.equal(m.isWritten(21), true)
  t.equal(m.isWritten(22), false)
  t.equal(m.runLength(0, 200), 10)
  t.equal(m.runLength(10, 200), 12)
  t.equal(m.runLength(15, 18), 3, 'a run stops at the end asked for')
  t.equal(m.runLength(22, 200), 178)
})

t.test('word and leaf boundaries', async t => {
  const n = LEAF_SECTORS * 3 + 77
  const m = new SectorMap(n)
  m.setRange(31, 2)
  t.equal(m.runLength(31, n), 2)
  m.setRange(LEAF_SECTORS - 1, 2)
  t.equal(m.runLength(LEAF_SECTORS - 1, n), 2, 'a run crosses a leaf boundary')
  t.equal(m.runLength(33, n), LEAF_SECTORS - 1 - 33)
  m.setRange(n - 1, 1)
  t.equal(m.isWritten(n - 1), true, 'the last sector of a partial last leaf')
  t.throws(() => m.setRange(n - 1, 2), AssertionError, 'past the end is a bug: the engine and the map loader stay inside')
  t.throws(() => m.setRange(-1, 1), AssertionError)
})

t.test('a full leaf becomes the shared marker and costs no leaf memory', async t => {
  const m = new SectorMap(LEAF_SECTORS * 4)
  m.setRange(LEAF_SECTORS, LEAF_SECTORS)
  t.equal(m.allocatedLeaves, 0, 'a whole-leaf write allocates nothing')
  m.setRange(0, 100)
  t.equal(m.allocatedLeaves, 1)
  m.setRange(100, LEAF_SECTORS - 100)
  t.equal(m.allocatedLeaves, 0, 'a leaf that fills up is released')
  t.equal(m.writtenSectors, LEAF_SECTORS * 2)
  t.equal(m.runLength(0, LEAF_SECTORS * 4), LEAF_SECTORS * 2)
  t.equal(m.runLength(LEAF_SECTORS * 2, LEAF_SECTORS * 4), LEAF_SECTORS * 2)
  t.equal(m.setRange(LEAF_SECTORS + 5, 10), 0, 'writing into a full leaf adds nothing')
})

t.test('memory: an untouched 1 TiB device costs well under 1 MiB', async t => {
  const m = new SectorMap(2 ** 40 / 512)
  t.ok(m.memoryBytes < 512 * 1024, `${m.memoryBytes} bytes`)
  m.setRange(12345678, 8)
  t.ok(m.memoryBytes < 512 * 1024 + 16 * 1024, 'one write adds one leaf')
})

t.test('agrees with the model under random writes and queries', async t => {
  const n = LEAF_SECTORS + 3000
  for (let round = 0; round < 3; round++) {
    const m = new SectorMap(n)
    const model = new ModelMap(n)
    let seed = round + 1
    const rand = (k: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % k
    }
    let firstMismatch: string | undefined
    for (let op = 0; op < 2000 && !firstMismatch; op++) {
      const start = rand(n)
      const count = rand(4) === 0 ? rand(n - start) + 1 : rand(Math.min(300, n - start)) + 1
      if (m.setRange(start, count) !== model.set(start, count)) firstMismatch = `op ${op}: setRange(${start}, ${count}) count`
      const q = rand(n)
      const end = q + rand(n - q) + 1
      if (m.runLength(q, end) !== model.runLength(q, end) || m.isWritten(q) !== (model.bits[q] === 1)) {
        firstMismatch = `op ${op}: run at ${q}..${end}`
      }
    }
    t.equal(firstMismatch, undefined, `round ${round}: 2000 writes and queries agree`)
    t.equal(
      m.writtenSectors,
      model.bits.reduce((a, b) => a + b, 0),
      `round ${round} totals agree`,
    )
  }
})

t.test('a sparsely written leaf keeps a run list, and becomes a bitmap when runs grow many', async t => {
  const m = new SectorMap(LEAF_SECTORS)
  const model = new ModelMap(LEAF_SECTORS)
  const agree = (): boolean => {
    for (let q = 0; q < LEAF_SECTORS; q += 37) {
      if (m.isWritten(q) !== (model.bits[q] === 1) || m.runLength(q, LEAF_SECTORS) !== model.runLength(q, LEAF_SECTORS)) return false
    }
    return true
  }
  t.equal(m.setRange(10, 5), 5)
  t.equal(m.setRange(20, 5), 5)
  t.equal(m.setRange(15, 5), 5, 'a run that touches both neighbours merges them')
  model.set(10, 15)
  t.equal(m.runLength(10, LEAF_SECTORS), 15)
  t.equal(m.setRange(5, 30), 15, 'a run over existing ones counts only what is new')
  model.set(5, 30)
  t.ok(agree())
  const small = m.memoryBytes
  t.ok(small < 1024, `one run costs little (${small} bytes)`)
  let miscounted = 0
  for (let i = 0; i < 300; i++) {
    const at = 100 + i * 200
    if (m.setRange(at, 3) !== model.set(at, 3)) miscounted++
  }
  t.equal(miscounted, 0, '300 separate runs, each counted right')
  t.ok(m.memoryBytes > 8192, 'past the limit the leaf is a bitmap')
  t.ok(agree(), 'and answers as before')
  t.equal(
    m.writtenSectors,
    model.bits.reduce((a, b) => a + b, 0),
  )
})

t.test('memory: 1 GiB written scattered over 1 TiB stays small', async t => {
  const sectors = 2 ** 40 / 512
  const m = new SectorMap(sectors)
  const writes = 2 ** 30 / 4096
  const stride = Math.floor(sectors / writes)
  for (let i = 0; i < writes; i++) m.setRange(i * stride, 8)
  t.equal(m.writtenSectors, writes * 8)
  t.ok(m.memoryBytes < 16 * 2 ** 20, `${(m.memoryBytes / 2 ** 20).toFixed(1)} MiB`)
})

t.test('writtenRuns lists the written runs of a range, cut at its ends', async t => {
  const m = new SectorMap(3 * LEAF_SECTORS)
  m.setRange(0, 4)
  m.setRange(LEAF_SECTORS - 2, 10)
  m.setRange(3 * LEAF_SECTORS - 1, 1)
  t.same(
    [...m.writtenRuns()],
    [
      [0, 4],
      [LEAF_SECTORS - 2, 10],
      [3 * LEAF_SECTORS - 1, 1],
    ],
  )
  t.same(
    [...m.writtenRuns(2, LEAF_SECTORS)],
    [
      [2, 2],
      [LEAF_SECTORS - 2, 2],
    ],
  )
  m.clear()
  t.same([...m.writtenRuns()], [])
  t.equal(m.writtenSectors, 0)
})
