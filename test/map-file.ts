// The persistent map's format and its refusals: resume, other data, newer
// formats, damage, truncation, other devices (and --force), and torn or
// damaged metadata at every slot of a map.
import t from 'tap'
import { Engine } from '../lib/engine/engine.js'
import { SectorStates } from '../lib/engine/sector-states.js'
import { MapFile, pageBits } from '../lib/persist/map-file.js'
import {
  FORMAT_VERSION,
  PAGE_SECTORS,
  SLOT_BYTES,
  decodeHeader,
  encodeHeader,
  mapBytes,
  mapBytesBeforeHydration,
} from '../lib/persist/map-format.js'
import { RwIdentity } from '../lib/persist/rw-binding.js'
import { MemoryAttributes, MemoryDevice } from './fixtures/memory-device.js'

const SECTOR = 512
const SECTORS = 2 * PAGE_SECTORS + 1000
const SIZE = SECTORS * SECTOR

const roFill = (piece: number, into: Buffer): void => {
  into.fill(piece & 0xff)
  into.writeUInt32LE(piece, 0)
}

interface Devices {
  ro: MemoryDevice
  rw: MemoryDevice
  /** RW's extended attributes, where it carries the map's device ID. */
  attributes: MemoryAttributes
  store: MemoryDevice
}

const devices = (): Devices => ({
  ro: new MemoryDevice('/ro', SIZE, { fill: roFill }),
  rw: new MemoryDevice('/rw', SIZE),
  attributes: new MemoryAttributes(),
  store: new MemoryDevice('/map', mapBytes(SIZE, SECTOR)),
})

const identity = (d: Devices): RwIdentity => new RwIdentity(d.rw, SIZE, d.attributes)

const open = (d: Devices, o: { force?: boolean; store?: MemoryDevice; map?: SectorStates } = {}) => {
  const map = o.map ?? new SectorStates(SECTORS)
  return MapFile.open({
    store: o.store ?? d.store,
    base: 0,
    describe: 'map /map',
    ro: d.ro,
    rw: d.rw,
    identity: identity(d),
    size: SIZE,
    sectorSize: SECTOR,
    map,
    force: o.force ?? false,
  }).then(opened => ({
    ...opened,
    map,
    engine: new Engine({ ro: d.ro, rw: d.rw, size: SIZE, sectorSize: SECTOR, map, journal: opened.file }),
  }))
}

/** Writes at these sectors, each sector holding its own number and the write's tag. */
const WRITES = [
  [0, 8],
  [PAGE_SECTORS - 3, 6],
  [PAGE_SECTORS + 77, 1],
  [2 * PAGE_SECTORS + 10, 200],
] as const

const payload = (first: number, count: number, tag: number): Buffer => {
  const b = Buffer.alloc(count * SECTOR, tag)
  for (let i = 0; i < count; i++) b.writeUInt32LE(first + i, i * SECTOR + 1)
  return b
}

/** A device with WRITES flushed, closed cleanly or not. */
const populated = async (clean: boolean): Promise<Devices> => {
  const d = devices()
  const { engine, file } = await open(d)
  for (const [first, count] of WRITES) await engine.write(first * SECTOR, payload(first, count, 0xc1))
  await engine.flush()
  if (clean) await file.closeClean()
  return d
}

const readSector = async (engine: Engine, s: number): Promise<Buffer> => {
  const b = Buffer.alloc(SECTOR)
  await engine.read(b, s * SECTOR)
  return b
}

t.test('a new map resumes with every flushed write, and says so', async t => {
  const d = await populated(true)
  const { engine, resumed, warnings, map } = await open(d)
  t.equal(resumed, true)
  t.same(warnings, [])
  t.equal(
    map.writtenSectors,
    WRITES.reduce((n, [, c]) => n + c, 0),
  )
  for (const [first, count] of WRITES) {
    const b = Buffer.alloc(count * SECTOR)
    await engine.read(b, first * SECTOR)
    t.same(b, payload(first, count, 0xc1), `sectors ${first}+${count} read back`)
  }
  const untouched = await readSector(engine, PAGE_SECTORS + 500)
  const expect = Buffer.alloc(SECTOR)
  roFill(PAGE_SECTORS + 500, expect)
  t.same(untouched, expect, 'the rest reads from RO')
})

t.test('pages round-trip through their bitmap', async t => {
  const map = new SectorStates(SECTORS)
  const runs = [
    [0, 1],
    [7, 9],
    [31, 40],
    [PAGE_SECTORS - 1, 2],
    [PAGE_SECTORS + 8, 64],
    [SECTORS - 5, 5],
  ] as const
  const copies = [
    [100, 50],
    [PAGE_SECTORS + 500, 3000],
    [SECTORS - 20, 10],
  ] as const
  for (const [s, n] of copies) map.markCopied(s, n)
  for (const [s, n] of runs) map.markWritten(s, n)
  const back = new SectorStates(SECTORS)
  const d = devices()
  // Through a real open: write the pages, then resume into `back`.
  const opened = await open(d, { map })
  for (const [s, n] of runs) opened.file.marked(s, n)
  for (const [s, n] of copies) opened.file.copied(s, n)
  await opened.file.commit(async () => undefined)
  await open(d, { map: back })

  for (let p = 0; p < 3; p++) {
    t.same(pageBits(back.written, p), pageBits(map.written, p), `written page ${p}`)
    t.same(pageBits(back.onRw, p), pageBits(map.onRw, p), `on-RW page ${p}`)
  }
  t.equal(back.writtenSectors, map.writtenSectors)
  t.equal(back.copiedSectors, map.copiedSectors)
  t.equal(back.copiedSectors, 50 + 3000 + 10, 'copied and not written since')
})

t.test('a format 2 map: its bits are written; upgraded to format 3 where its store has room, kept at 2 where not', async t => {
  const d = await populated(true)
  // Made format 2: the header says so, the second set of pages is gone.
  const image = Buffer.alloc(d.store.size)
  await d.store.read(image, 0, image.length, 0)
  for (const slot of [0, 1]) {
    const decoded = decodeHeader(image.subarray(slot * SLOT_BYTES, (slot + 1) * SLOT_BYTES))
    if (!decoded.ok) throw new Error('no header')
    encodeHeader({ ...decoded.header, version: 2 }).copy(image, slot * SLOT_BYTES)
  }
  const v2Bytes = mapBytesBeforeHydration(SIZE, SECTOR)
  image.fill(0, v2Bytes)
  const written = WRITES.reduce((n, [, c]) => n + c, 0)

  const tight = new MemoryDevice('/map', v2Bytes)
  tight.apply(image.subarray(0, v2Bytes), 0)
  const kept = await open(d, { store: tight })
  t.equal(kept.map.writtenSectors, written, 'every bit is a written sector')
  t.equal(kept.map.copiedSectors, 0)
  t.equal(kept.file.recordsCopies, false, 'no room for copies: it cannot hydrate')
  const tightHeader = Buffer.alloc(SLOT_BYTES)
  await tight.read(tightHeader, 0, SLOT_BYTES, 0)
  t.equal(tightHeader.readUInt32LE(8), 2, 'and stays format 2')

  // Garbage where the second set goes: the upgrade zeroes it first.
  image.fill(0x5a, v2Bytes)
  const roomy = new MemoryDevice('/map', image.length)
  roomy.apply(image, 0)
  const upgraded = await open(d, { store: roomy })
  t.equal(upgraded.map.writtenSectors, written)
  t.equal(upgraded.file.recordsCopies, true)
  await upgraded.engine.copyFromRo(SIZE - 8 * SECTOR, 8 * SECTOR, Buffer.alloc(8 * SECTOR))
  await upgraded.engine.flush()
  await upgraded.file.closeClean()
  const again = await open(d, { store: roomy })
  t.equal(again.map.writtenSectors, written)
  t.equal(again.map.copiedSectors, 8, 'copies kept in format 3')
  const header = Buffer.alloc(SLOT_BYTES)
  await roomy.read(header, 0, SLOT_BYTES, 0)
  t.equal(header.readUInt32LE(8), FORMAT_VERSION)
})

t.test('refusals name the map, the problem and the way out', async t => {
  const other = devices()
  other.store.apply(Buffer.alloc(SLOT_BYTES, 0x41), 0)
  await t.rejects(open(other), {
    code: 'ENOTMAP',
    message: /map \/map is not a geom-rowr map: it holds other data; give a new or empty file/,
  })

  const newer = await populated(true)
  for (const slot of [0, 1]) {
    const b = Buffer.alloc(SLOT_BYTES)
    await newer.store.read(b, 0, SLOT_BYTES, slot * SLOT_BYTES)
    if (b.readUInt32LE(8) === 0) continue
    b.writeUInt32LE(FORMAT_VERSION + 1, 8)
    newer.store.apply(b, slot * SLOT_BYTES)
  }
  await t.rejects(open(newer), {
    code: 'EMAPFORMAT',
    message: `was written by a newer geom-rowr (map format ${FORMAT_VERSION + 1}); this one reads format ${FORMAT_VERSION}`,
  })

  const damaged = await populated(true)
  const headers = Buffer.alloc(2 * SLOT_BYTES)
  await damaged.store.read(headers, 0, headers.length, 0)
  t.ok(
    headers.readUInt32LE(8) === FORMAT_VERSION && headers.readUInt32LE(SLOT_BYTES + 8) === FORMAT_VERSION,
    'both header slots are in use',
  )
  headers[200] = headers[200]! ^ 0xff
  headers[SLOT_BYTES + 200] = headers[SLOT_BYTES + 200]! ^ 0xff
  damaged.store.apply(headers, 0)
  await t.rejects(open(damaged), {
    code: 'EMAPCORRUPT',
    message:
      /has a damaged header \(no good copy is left\), so the map cannot be trusted: restore the map and RW from copies made together .* or start over with --discard-map/,
  })

  const headless = await populated(true)
  headless.store.apply(Buffer.alloc(2 * SLOT_BYTES), 0)
  await t.rejects(open(headless), { code: 'EMAPCORRUPT', message: /has map pages but no header/ })

  const roChanged = await populated(true)
  roChanged.ro.apply(Buffer.alloc(SECTOR, 0xee), 0)
  await t.rejects(open(roChanged), {
    code: 'EFINGERPRINT',
    message: /map \/map belongs to other devices: RO \/ro is not the device the map was made with.*use --force/,
  })
  const forced = await open(roChanged, { force: true })
  t.match(forced.warnings[0], /^--force: RO \/ro is not the device/)
  t.equal((await open(roChanged)).resumed, true, 'forced once, the map now belongs to the new RO')

  for (const clean of [true, false]) {
    const rwSwapped = await populated(clean)
    rwSwapped.attributes.values.clear()
    await t.rejects(
      open(rwSwapped),
      {
        code: 'EFINGERPRINT',
        message: /RW \/rw is not the RW this map was made with \(device ID [-0-9a-f]{36}\): it carries no device ID in extended attribute/,
      },
      `a RW without the map's device ID is refused (${clean ? 'clean stop' : 'crash'})`,
    )
  }

  const geometry = await populated(true)
  const map = new SectorStates(SECTORS - 8)
  await t.rejects(
    MapFile.open({
      store: geometry.store,
      base: 0,
      describe: 'map /map',
      ro: geometry.ro,
      rw: geometry.rw,
      identity: identity(geometry),
      size: SIZE - 8 * SECTOR,
      sectorSize: SECTOR,
      map,
      force: true,
    }),
    { code: 'EMAPGEOMETRY', message: /describes a \d+-byte device of 512-byte sectors, not this \d+-byte device/ },
    '--force does not override another geometry',
  )
})

t.test('damage at any slot: the last good state, or a clear refusal; truncation: a refusal', async t => {
  const clean = await populated(false)
  const slots = clean.store.size / SLOT_BYTES
  const expectWritten = (s: number): boolean => WRITES.some(([f, c]) => s >= f && s < f + c)
  let resumedCount = 0
  for (let slot = 0; slot < slots; slot++) {
    for (const harm of ['flip', 'zero', 'truncate'] as const) {
      const d = await populated(false)
      if (harm === 'truncate') {
        const short = new MemoryDevice('/map', slot * SLOT_BYTES)
        for (const [piece, data] of d.store.pieces) if ((piece + 1) * 512 <= short.size) short.apply(data, piece * 512)
        d.store = short
      } else {
        const b = Buffer.alloc(SLOT_BYTES)
        await d.store.read(b, 0, SLOT_BYTES, slot * SLOT_BYTES)
        if (harm === 'flip') b[100] = b[100]! ^ 0xff
        else b.fill(0)
        d.store.apply(b, slot * SLOT_BYTES)
      }
      let opened: Awaited<ReturnType<typeof open>>
      try {
        opened = await open(d)
      } catch (e) {
        t.match(
          (e as { code: string }).code,
          /^EMAP(CORRUPT|GEOMETRY)$|^ENOTMAP$/,
          `${harm} at slot ${slot}: refused (${(e as Error).message})`,
        )
        continue
      }
      resumedCount++
      t.not(harm, 'truncate', `truncated at slot ${slot} is not resumed`)
      // Never wrong data: each sector reads its write or RO.
      let wrong = 0
      for (const [first, count] of WRITES) {
        for (let s = first; s < first + count; s++) {
          const b = await readSector(opened.engine, s)
          const ro = Buffer.alloc(SECTOR)
          roFill(s, ro)
          const mine = payload(s, 1, 0xc1)
          if (!b.equals(mine) && !b.equals(ro)) wrong++
          // Damage to a header slot loses no page: every write is still there.
          else if (slot < 2 && !b.equals(mine) && expectWritten(s)) wrong++
        }
      }
      t.equal(wrong, 0, `${harm} at slot ${slot}: resumed, every sector reads its write or RO`)
    }
  }
  t.ok(resumedCount > slots, `most single-slot damage is survived (${resumedCount} resumes)`)
})

t.test('the floor: a page lost in both copies after a header write is damage, not "never written"', async t => {
  const d = await populated(true)
  // Page 1's two slots zeroed, as a map cut short and re-extended reads.
  d.store.apply(Buffer.alloc(2 * SLOT_BYTES), 4 * SLOT_BYTES)
  await t.rejects(open(d), {
    code: 'EMAPCORRUPT',
    message: new RegExp(
      `map /map has lost pages: they hold \\d+ written sectors, but held at least ${WRITES.reduce((n, [, c]) => n + c, 0)} when the map was last opened or closed, ` +
        'so the map cannot be trusted: restore the map and RW from copies',
    ),
  })
  // Both header slots hold the newest header: losing either keeps the floor.
  for (const slot of [0, 1]) {
    const e = await populated(true)
    e.store.apply(Buffer.alloc(SLOT_BYTES), slot * SLOT_BYTES)
    e.store.apply(Buffer.alloc(2 * SLOT_BYTES), 2 * SLOT_BYTES)
    await t.rejects(open(e), { code: 'EMAPCORRUPT', message: /has lost pages/ }, `header slot ${slot} lost as well`)
  }
})

t.test('a RW without extended attributes carries the ID in its tail, or says it cannot be checked', async t => {
  const openWith = (d: Devices, rw: MemoryDevice) =>
    MapFile.open({
      store: d.store,
      base: 0,
      describe: 'map /map',
      ro: d.ro,
      rw,
      identity: new RwIdentity(rw, SIZE, null),
      size: SIZE,
      sectorSize: SECTOR,
      map: new SectorStates(SECTORS),
      force: false,
    })
  const d = devices()
  const tail = Math.ceil(SIZE / SLOT_BYTES) * SLOT_BYTES
  const roomy = new MemoryDevice('/rw', tail + SLOT_BYTES)
  t.same((await openWith(d, roomy)).warnings, [], 'a RW with room past the device takes a stamp there')
  const other = new MemoryDevice('/other', tail + SLOT_BYTES)
  await t.rejects(openWith(d, other), {
    code: 'EFINGERPRINT',
    message: new RegExp(
      `RW /other is not the RW this map was made with \\(device ID [-0-9a-f]{36}\\): it carries no device ID in /other's tail \\(bytes ${tail}-${tail + SLOT_BYTES - 1}\\)`,
    ),
  })
  t.equal((await openWith(d, roomy)).resumed, true, 'its own RW resumes')

  const e = devices()
  const exact = new MemoryDevice('/rw', SIZE)
  const unbound =
    /the binding of map \/map to RW \/rw cannot be checked: \/rw is a disk of exactly the device's size: it has no room past the device's end for a stamp/
  t.match((await openWith(e, exact)).warnings, [unbound], 'no stamp fits: said at create')
  t.match((await openWith(e, exact)).warnings, [unbound], 'and at every resume')
})
