// Power loss, simulated: every write and sync that RW and the map file see
// is recorded; for every point of a workload, the devices are rebuilt with
// what was synced before that point plus any part of what was not (nothing,
// everything, or a random subset of its sectors: torn writes), and the map
// is resumed from them. Every write acknowledged before the last completed
// FLUSH (or with FUA) must read back, and no sector may read anything but
// RO's data or data some write put there. The devices answer some reads at
// once and turn others down, so the replay reads through both of the
// engine's read paths.
import t, { type Test } from 'tap'
import { Engine, type MapJournal } from '../lib/engine/engine.js'
import { SectorStates } from '../lib/engine/sector-states.js'
import { MapFile } from '../lib/persist/map-file.js'
import { PAGE_SECTORS, mapBytes } from '../lib/persist/map-format.js'
import { RwIdentity } from '../lib/persist/rw-binding.js'
import { MemoryAttributes, MemoryDevice, type LogEntry } from './fixtures/memory-device.js'
import { openMemoryMap } from './fixtures/memory-map.js'

const SECTOR = 512
/** Three map pages, so that writes straddle page boundaries. */
const SECTORS = 3 * PAGE_SECTORS
const SIZE = SECTORS * SECTOR

/** RO's sector s: a pattern that names it. */
const fillRo = (s: number, into: Buffer): void => {
  into.fill((s * 7) & 0xff)
  into[0] = 0xa5
  into.writeUInt32LE(s, 1)
}
/** Sector s as written by write number `tag`. */
const written = (tag: number, s: number, into: Buffer): void => {
  into.fill(tag & 0xff)
  into[0] = 0x5a
  into.writeUInt32LE(tag, 1)
  into.writeUInt32LE(s, 5)
}

/** What a read of sector s shows: 'ro', 'zero', a write's tag, or 'garbage'. */
const identify = (s: number, b: Buffer): string => {
  const expect = Buffer.alloc(SECTOR)
  if (b.every(x => x === 0)) return 'zero'
  if (b[0] === 0xa5) {
    fillRo(s, expect)
    return b.equals(expect) ? 'ro' : 'garbage'
  }
  if (b[0] === 0x5a) {
    const tag = b.readUInt32LE(1)
    written(tag, s, expect)
    return b.equals(expect) ? `w${tag}` : 'garbage'
  }
  return 'garbage'
}

type Op =
  | { kind: 'write' | 'zero'; id: number; first: number; count: number; fua: boolean; issued: number; acked: number }
  /** Hydration's copy of sectors still on RO: it changes what RW holds, never what the device shows. */
  | { kind: 'copy'; id: number; first: number; count: number; issued: number; acked: number }
  | { kind: 'flush'; id: number; issued: number; acked: number }

const random = (seed: number) => () => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff
  return seed / 0x7fffffff
}

/** A workload of writes, zero-writes, FUA writes and flushes, some concurrent. */
const runWorkload = async (engine: Engine, log: LogEntry[], rand: () => number, count: number): Promise<Op[]> => {
  const ops: Op[] = []
  let id = 0
  const near = [0, PAGE_SECTORS - 40, PAGE_SECTORS + 100, 2 * PAGE_SECTORS - 10, SECTORS - 80]
  const one = (): Promise<void> => {
    const r = rand()
    const opId = ++id
    if (r < 0.2) {
      const op: Op = { kind: 'flush', id: opId, issued: log.length, acked: -1 }
      ops.push(op)
      return engine.flush().then(() => void (op.acked = log.length))
    }
    const first = Math.min(SECTORS - 64, near[Math.floor(rand() * near.length)]! + Math.floor(rand() * 60))
    const count = 1 + Math.floor(rand() * 64)
    if (r < 0.3) {
      const op: Op = { kind: 'copy', id: opId, first, count, issued: log.length, acked: -1 }
      ops.push(op)
      return engine.copyFromRo(first * SECTOR, count * SECTOR, Buffer.alloc(count * SECTOR)).then(() => void (op.acked = log.length))
    }
    const kind = r < 0.4 ? 'zero' : 'write'
    const fua = rand() < 0.15
    const op: Op = { kind, id: opId, first, count, fua, issued: log.length, acked: -1 }
    ops.push(op)
    const done = (): void => void (op.acked = log.length)
    if (kind === 'zero') return engine.zero(first * SECTOR, count * SECTOR, { fua }).then(done)
    const data = Buffer.alloc(count * SECTOR)
    for (let i = 0; i < count; i++) written(opId, first + i, data.subarray(i * SECTOR, (i + 1) * SECTOR))
    return engine.write(first * SECTOR, data, { fua }).then(done)
  }
  while (id < count) {
    const batch = 1 + Math.floor(rand() * 3)
    await Promise.all(Array.from({ length: batch }, one))
  }
  return ops
}

/** The device as a power cut at log index `cut` may leave it. */
const rebuild = (log: LogEntry[], cut: number, device: string, size: number, tear: 'none' | 'all' | (() => boolean)): MemoryDevice => {
  const copy = new MemoryDevice(device, size, { seed: cut })
  let lastSync = -1
  for (let i = 0; i < cut; i++) {
    const e = log[i]!
    if (e.kind === 'sync' && e.device === device) lastSync = i
  }
  for (let i = 0; i < cut; i++) {
    const e = log[i]!
    if (e.kind !== 'write' || e.device !== device) continue
    if (i < lastSync || tear === 'all') copy.apply(e.data, e.position)
    else if (tear !== 'none') copy.apply(e.data, e.position, () => tear())
  }
  return copy
}

/** What sector s may read after a cut at `cut`. */
const acceptable = (ops: Op[], cut: number, s: number): Set<string> => {
  const flushes = ops.filter(o => o.kind === 'flush' && o.acked >= 0 && o.acked <= cut)
  const lastFlushIssued = flushes.length ? Math.max(...flushes.map(f => f.issued)) : -1
  const touching = ops.filter(
    (o): o is Extract<Op, { fua: boolean }> =>
      (o.kind === 'write' || o.kind === 'zero') && o.issued < cut && s >= o.first && s < o.first + o.count,
  )
  const value = (o: Extract<Op, { fua: boolean }>): string => (o.kind === 'zero' ? 'zero' : `w${o.id}`)
  const durable = touching.filter(o => o.acked >= 0 && (o.acked <= lastFlushIssued || (o.fua && o.acked <= cut)))
  const last = durable.at(-1)
  const ok = new Set<string>([last ? value(last) : 'ro'])
  for (const o of touching) if (!last || o.issued > last.issued || o === last) ok.add(value(o))
  return ok
}

interface Outcome {
  readonly cuts: number
  readonly violations: string[]
  /** Runs of the replay's reads that RO and RW answered at once, and that they turned down. */
  readonly readsNow: number
  readonly readsNotNow: number
}

/**
 * Runs the workload over recording devices, then resumes from every cut;
 * `journalOf` may wrap the map's journal (to prove the test can fail).
 */
const powerLoss = async (seed: number, opCount: number, journalOf: (f: MapFile) => MapJournal = f => f): Promise<Outcome> => {
  const log: LogEntry[] = []
  const ro = new MemoryDevice('ro', SIZE, { fill: (piece, into) => fillRo(piece, into) })
  const rw = new MemoryDevice('rw', SIZE, { log })
  const store = new MemoryDevice('map', mapBytes(SIZE, SECTOR), { log })
  const map = new SectorStates(SECTORS)
  // RW's device ID is stamped when the map is made, before anything is logged: every rebuilt RW carries it.
  const attributes = new MemoryAttributes()
  const opened = await openMemoryMap({ store, ro, rw, attributes, size: SIZE, sectorSize: SECTOR, map })
  const engine = new Engine({ ro, rw, size: SIZE, sectorSize: SECTOR, map, journal: journalOf(opened.file) })
  const start = log.length
  const ops = await runWorkload(engine, log, random(seed), opCount)
  const rand = random(seed ^ 0x5eed)
  const violations: string[] = []
  const checked = new Set<number>()
  for (const o of ops) if (o.kind !== 'flush') for (let s = o.first; s < o.first + o.count; s++) checked.add(s)
  for (const s of [1, PAGE_SECTORS + 5000, SECTORS - 1]) checked.add(s)
  let cuts = 0
  let readsNow = 0
  let readsNotNow = 0
  const outcome = (): Outcome => ({ cuts, violations, readsNow: readsNow + ro.readsNow, readsNotNow: readsNotNow + ro.readsNotNow })
  for (let cut = start; cut <= log.length; cut++) {
    for (const tear of ['none', 'all', () => rand() < 0.5] as const) {
      cuts++
      const rw2 = rebuild(log, cut, 'rw', SIZE, tear)
      const store2 = rebuild(log, cut, 'map', store.size, tear)
      const map2 = new SectorStates(SECTORS)
      try {
        await MapFile.open({
          store: store2,
          base: 0,
          describe: 'map',
          ro,
          rw: rw2,
          identity: new RwIdentity(rw2, SIZE, attributes),
          size: SIZE,
          sectorSize: SECTOR,
          map: map2,
          force: false,
        })
      } catch (e) {
        violations.push(`cut ${cut}: the map did not resume: ${(e as Error).message}`)
        continue
      }
      const resumed = new Engine({ ro, rw: rw2, size: SIZE, sectorSize: SECTOR, map: map2 })
      const b = Buffer.alloc(SECTOR)
      for (const s of checked) {
        await resumed.read(b, s * SECTOR)
        const got = identify(s, b)
        const ok = acceptable(ops, cut, s)
        if (!ok.has(got))
          violations.push(
            `cut ${cut} (${typeof tear === 'string' ? tear : 'torn'}): sector ${s} reads ${got}, allowed ${[...ok].join('/')}`,
          )
      }
      readsNow += rw2.readsNow
      readsNotNow += rw2.readsNotNow
      if (violations.length > 20) return outcome()
    }
  }
  return outcome()
}

t.test('every cut of a workload resumes with every flushed write and nothing unwritten', async (t: Test) => {
  for (const seed of [1, 2, 3]) {
    const { cuts, violations, readsNow, readsNotNow } = await powerLoss(seed, 60)
    t.same(violations, [], `seed ${seed}: ${cuts} power cuts replayed`)
    t.ok(cuts > 100, `seed ${seed}: the workload gave ${cuts} cut points`)
    t.ok(readsNow > 0 && readsNotNow > 0, `seed ${seed}: ${readsNow} runs read at once, ${readsNotNow} through read()`)
  }
})

t.test('the replay catches a map that reaches the disk before the data it describes', async (t: Test) => {
  // The same workload with the journal told that RW is synced when it is not.
  const { violations } = await powerLoss(1, 60, f => ({
    marked: (a, b) => f.marked(a, b),
    copied: (a, b) => f.copied(a, b),
    recordsCopies: true,
    commit: () => f.commit(async () => undefined),
    clear: () => f.clear(),
    startCommit: () => f.startCommit(),
    finishCommit: ro => f.finishCommit(ro),
  }))
  t.ok(violations.length > 0, `a broken ordering is detected (${violations[0]})`)
})
