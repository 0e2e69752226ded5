// The map bound to its RW (issue 11): a device ID in the map, carried by RW,
// checked on every resume, after a clean stop or a SIGKILL alike; a floor
// of written sectors that tells a map cut short (even once re-extended);
// --discard-map, the one explicit way to start over; a RW that holds a
// map's changes is never taken as empty by mistake; a failed create leaves
// nothing behind; --map-on-rw with RW auto; format 1 maps still open; and
// hints that lose nothing when followed. Driven through the CLI only, so
// that it can run against an older build.
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import t, { type Test } from 'tap'
import { alive, cliRunDir, makeImage, requires, run, waitUntil } from './fixtures/helpers.js'

const SIZE = 8 << 20
const SECTOR = 512
const NEEDS = { tools: ['qemu-io'] }
/** The map of an 8 MiB device of 512-byte sectors: two header slots and two slots each of one written page and one on-RW page. */
const MAP_BYTES = 6 * 4096

const setup = (t: Test) => {
  const { dir, runDir, g, create } = cliRunDir(t)
  const ro = makeImage(path.join(dir, 'ro.img'), SIZE)
  const rw = makeImage(path.join(dir, 'rw.img'), SIZE, 'zero')
  const map = path.join(dir, 'rw.map')
  const write = async (uri: string, offset: number, length: number, fill: number): Promise<void> => {
    const r = await run('qemu-io', ['-f', 'raw', uri, '-c', `write -P ${fill} ${offset} ${length}`, '-c', 'flush'])
    t.equal(r.code, 0, r.stderr)
  }
  /** What device NAME shows, through geom-rowr export. */
  const shows = async (name: string): Promise<Buffer> => {
    const out = path.join(dir, `${name}-${randomBytes(4).toString('hex')}.img`)
    const r = await g('export', name, out)
    t.equal(r.code, 0, r.stderr)
    const image = fs.readFileSync(out)
    fs.rmSync(out)
    return image
  }
  /** RO with these writes applied. */
  const expected = (...writes: [number, number, number][]): Buffer => {
    const image = fs.readFileSync(ro)
    for (const [offset, length, fill] of writes) image.fill(fill, offset, offset + length)
    return image
  }
  /** Kills NAME's daemon as a crash would: nothing flushed or closed after it. */
  const kill = async (name: string): Promise<void> => {
    const { pid } = JSON.parse(fs.readFileSync(path.join(runDir, name, 'state.json'), 'utf8')) as { pid: number }
    process.kill(pid, 'SIGKILL')
    t.ok(await waitUntil(() => !alive(pid)), `daemon ${pid} is gone`)
  }
  /** The run directory holds no device's state (logs aside). */
  const nothingLeft = (what: string): void => {
    const left = fs.existsSync(runDir) ? fs.readdirSync(runDir).filter(n => !n.endsWith('.log')) : []
    t.same(left, [], `${what}: no run state is left`)
  }
  return { dir, runDir, ro, rw, map, g, create, write, shows, expected, kill, nothingLeft }
}

/** A device name of this test run, and the automatic RW geom-rowr makes for it, removed afterwards. */
const autoName = (t: Test, prefix: string): { name: string; auto: string } => {
  const name = `${prefix}${process.pid}`
  const auto = `/var/tmp/geom-rowr-${name}.rw`
  t.teardown(() => fs.rmSync(auto, { force: true }))
  return { name, auto }
}

const DEVICE_ID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
/** The only ways on a damaged map may name: restoring copies, or starting over explicitly. */
const SAFE_WAYS =
  /restore the map and RW from copies made together .*or start over with --discard-map, which discards every change RW holds/

t.test('a map refuses another RW, after a clean stop and after a SIGKILL; its own RW resumes with every flushed write', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const other = makeImage(path.join(s.dir, 'other.img'), SIZE, 'zero')
  // Zeros written: sampled data of RW could not tell it from any empty RW.
  await s.write(await s.create('b0', '--map', s.map, s.ro, s.rw), 1 << 20, 64 << 10, 0)
  t.equal((await s.g('destroy', 'b0')).code, 0)
  const refusal = new RegExp(
    `map ${s.map} belongs to other devices: RW ${other} is not the RW this map was made with \\(device ID ${DEVICE_ID}\\): ` +
      `it carries no device ID in extended attribute (trusted|user)\\.geom-rowr\\.id of ${other}.*use --force`,
  )
  const clean = await s.g('create', '--no-attach', '--map', s.map, 'b1', s.ro, other)
  t.equal(clean.code, 1, 'after a clean stop, another RW is refused')
  t.match(clean.stderr, refusal)
  s.nothingLeft('the refusal')

  await s.write(await s.create('b0', '--map', s.map, s.ro, s.rw), 3 << 20, 128 << 10, 0x5a)
  await s.kill('b0')
  const crashed = await s.g('create', '--no-attach', '--map', s.map, 'b1', s.ro, other)
  t.equal(crashed.code, 1, 'after a SIGKILL, another RW is refused')
  t.match(crashed.stderr, refusal)
  t.ok(fs.readFileSync(other).equals(Buffer.alloc(SIZE)), 'the other RW is not written')

  await s.create('b0', '--map', s.map, s.ro, s.rw)
  t.ok(
    (await s.shows('b0')).equals(s.expected([1 << 20, 64 << 10, 0], [3 << 20, 128 << 10, 0x5a])),
    'its own RW resumes with every flushed write',
  )
})

t.test('a map cut short is damaged, even re-extended: the refusal suggests nothing that loses data; --discard-map starts over', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  await s.write(await s.create('c0', '--map', s.map, s.ro, s.rw), 1 << 20, 64 << 10, 0x33)
  t.equal((await s.g('destroy', 'c0')).code, 0)
  t.equal(fs.statSync(s.map).size, MAP_BYTES)

  fs.truncateSync(s.map, 5000)
  const cut = await s.g('create', '--no-attach', '--map', s.map, 'c0', s.ro, s.rw)
  t.equal(cut.code, 1)
  t.match(cut.stderr, `map ${s.map} is truncated: it has 5000 of the ${MAP_BYTES} bytes of this map, so the map cannot be trusted`)
  t.match(cut.stderr, SAFE_WAYS)
  t.notMatch(cut.stderr, /truncate -s|has room for/, 'no hint to grow the map')

  // What the old hint led to: the map back at its size, its pages zeros.
  fs.truncateSync(s.map, MAP_BYTES)
  const grown = await s.g('create', '--no-attach', '--map', s.map, 'c0', s.ro, s.rw)
  t.equal(grown.code, 1, 'the re-extended map is refused, not resumed with nothing written')
  t.match(
    grown.stderr,
    `map ${s.map} has lost pages: they hold 0 written sectors, but held at least ${(64 << 10) / SECTOR} when the map was last opened or closed`,
  )
  t.match(grown.stderr, SAFE_WAYS)
  t.notMatch(grown.stderr, /truncate/)
  s.nothingLeft('the refusals')

  const over = await s.g('create', '--no-attach', '--discard-map', '--map', s.map, 'c0', s.ro, s.rw)
  t.equal(over.code, 0, over.stderr)
  t.match(
    over.stderr,
    new RegExp(
      `warning: --discard-map: the changes recorded in map ${s.map} \\(device ID ${DEVICE_ID}, at least ${64 << 10} bytes written when it was last opened or closed\\) ` +
        `are discarded; ${s.rw} is taken as empty: the device reads as RO until written`,
    ),
  )
  t.same(JSON.parse((await s.g('diff', '--json', 'c0')).stdout).ranges, [], 'the new map is empty')
  t.ok((await s.shows('c0')).equals(fs.readFileSync(s.ro)), "RW's old data is unreachable: the device reads as RO")
  await s.write(over.stdout.trim(), 0, 4096, 0x44)
  t.equal((await s.g('destroy', 'c0')).code, 0)
  await s.create('c0', '--map', s.map, s.ro, s.rw)
  t.ok((await s.shows('c0')).equals(s.expected([0, 4096, 0x44])), 'the new map resumes')
})

t.test("a RW that holds a map's changes is not taken as empty by a new map or by a device without one", async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  await s.write(await s.create('d0', '--map', s.map, s.ro, s.rw), 0, 8192, 0x21)
  t.equal((await s.g('destroy', 'd0')).code, 0)
  const bound = new RegExp(
    `${s.rw} is the RW of another map, device ID ${DEVICE_ID} \\(extended attribute (trusted|user)\\.geom-rowr\\.id of ${s.rw}\\): ` +
      `it holds that map's changes, which this device would overwrite. To resume them, give that map .*to start over, discarding them, add --discard-map`,
  )
  const fresh = path.join(s.dir, 'new.map')
  const newMap = await s.g('create', '--no-attach', '--map', fresh, 'd1', s.ro, s.rw)
  t.equal(newMap.code, 1, 'a new map over it is refused')
  t.match(newMap.stderr, bound)
  t.notOk(fs.existsSync(fresh), 'the refused create leaves no map file')
  const noMap = await s.g('create', '--no-attach', 'd1', s.ro, s.rw)
  t.equal(noMap.code, 1, 'a device without a map is refused')
  t.match(noMap.stderr, bound)
  s.nothingLeft('the refusals')

  await s.create('d0', '--map', s.map, s.ro, s.rw)
  t.ok((await s.shows('d0')).equals(s.expected([0, 8192, 0x21])), 'the hint followed: its map resumes the changes')
  t.equal((await s.g('destroy', 'd0')).code, 0)

  const discarded = await s.g('create', '--no-attach', '--discard-map', 'd1', s.ro, s.rw)
  t.equal(discarded.code, 0, discarded.stderr)
  t.match(
    discarded.stderr,
    new RegExp(`warning: --discard-map: the changes ${s.rw} held for device ID ${DEVICE_ID} .* are discarded; it is taken as empty`),
  )
  t.equal((await s.g('destroy', 'd1')).code, 0)
  const stale = await s.g('create', '--no-attach', '--map', s.map, 'd0', s.ro, s.rw)
  t.equal(stale.code, 1, "RW no longer carries the old map's ID: that map cannot resume over what the other device wrote")
  t.match(stale.stderr, 'is not the RW this map was made with')
})

t.test('a failed create leaves nothing behind: no automatic RW, no run state, no new map, no claim', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const { name, auto } = autoName(t, 'fail')
  const notMap = path.join(s.dir, 'not.map')
  fs.writeFileSync(notMap, Buffer.alloc(MAP_BYTES, 0x41))
  const refused = await s.g('create', '--no-attach', '--map', notMap, name, s.ro, 'auto')
  t.equal(refused.code, 1)
  t.match(refused.stderr, `map ${notMap} is not a geom-rowr map`)
  t.notOk(fs.existsSync(auto), 'the automatic RW it made is removed')
  s.nothingLeft('the refusal')
  const again = await s.g('create', '--no-attach', name, s.ro, 'auto')
  t.equal(again.code, 0, `the next create with RW auto succeeds: ${again.stderr}`)
  t.equal((await s.g('destroy', name)).code, 0)

  // A start that fails after the map was made: its port is taken.
  const busy = net.createServer()
  await new Promise<void>(resolve => busy.listen(0, '127.0.0.1', resolve))
  t.teardown(() => busy.close())
  const port = String((busy.address() as net.AddressInfo).port)
  const fresh = path.join(s.dir, 'new.map')
  const serve = await s.g('serve', '--name', 'e0', '--port', port, '--map', fresh, s.ro, s.rw)
  t.not(serve.code, 0, 'serve fails on a port in use')
  t.match(serve.stderr, /EADDRINUSE|is already in use/)
  t.notOk(fs.existsSync(fresh), 'the map file it made is removed')
  s.nothingLeft('the failed serve')
  // Nothing is held and RW is not bound to the map that was taken back.
  await s.create('e1', '--map', path.join(s.dir, 'other.map'), s.ro, s.rw)
})

t.test('--map-on-rw with RW auto: the automatic RW has room for the map, and resumes', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const { name, auto } = autoName(t, 'tail')
  const created = await s.g('create', '--no-attach', '--map-on-rw', name, s.ro, 'auto')
  t.equal(created.code, 0, created.stderr)
  t.equal(fs.statSync(auto).size, SIZE + MAP_BYTES, 'the device and its map')
  t.match(created.stderr, `read-write device: ${auto} (sparse, ${SIZE} bytes; kept on destroy: the map describes its data)`)
  t.notMatch(created.stderr, 'warning', 'no warning for the tail geom-rowr made itself')
  await s.write(created.stdout.trim(), 2 << 20, 16 << 10, 0x6b)
  t.equal((await s.g('destroy', name)).code, 0)
  await s.create(name, '--map-on-rw', s.ro, 'auto')
  t.ok((await s.shows(name)).equals(s.expected([2 << 20, 16 << 10, 0x6b])), "the map in the automatic RW's tail resumes")
})

t.test('an automatic RW kept for a map is never to be removed: the hint names the map and --discard-map', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const { name, auto } = autoName(t, 'kept')
  await s.write(await s.create(name, '--map', s.map, s.ro, 'auto'), 4096, 4096, 0x3c)
  t.equal((await s.g('destroy', name)).code, 0)
  const r = await s.g('create', '--no-attach', name, s.ro, 'auto')
  t.equal(r.code, 1)
  t.match(r.stderr, `${auto} already exists, and may hold the changes of a device ${name} with a persistent map`)
  t.match(
    r.stderr,
    /To resume them, give that map .*to start over on it, discarding them, add --discard-map; or name another read-write device/,
  )
  t.notMatch(r.stderr, /\brm\b/, 'no hint to remove it')
  t.ok(fs.existsSync(auto))
  await s.create(name, '--map', s.map, s.ro, 'auto')
  t.ok((await s.shows(name)).equals(s.expected([4096, 4096, 0x3c])), 'the hint followed: the changes are back')
})

// Map format 1, as geom-rowr wrote it before the binding (docs/map-format.md
// of that version): a header in slot 0, one page per 32256 sectors.
const V1_PAGE_SECTORS = 32256

const sealSlot = (slot: Buffer): Buffer => {
  createHash('sha256').update(slot.subarray(0, 4064)).digest().copy(slot, 4064)
  return slot
}

/** Format 1's fingerprint: SHA-256 of the size, the sector size and the given sectors. */
const fingerprint = (image: Buffer, sectors: readonly number[]): Buffer => {
  const hash = createHash('sha256').update(`${image.length}:${SECTOR}:`)
  for (const s of sectors) hash.update(image.subarray(s * SECTOR, (s + 1) * SECTOR))
  return hash.digest()
}

/** A format 1 map of `first`..`first + count` written (one run), shut down cleanly. */
const format1Map = (file: string, ro: Buffer, rw: Buffer, first: number, count: number): void => {
  const sectors = ro.length / SECTOR
  const spread = Array.from({ length: 64 }, (_, i) => Math.floor((i * (sectors - 1)) / 63))
  const epoch = 0x1234_5678_9abc_def0n
  const header = Buffer.alloc(4096)
  header.write('GEOMROWR', 0, 'latin1')
  header.writeUInt32LE(1, 8)
  header.writeUInt32LE(4096, 12)
  randomBytes(16).copy(header, 16)
  header.writeBigUInt64LE(1n, 32)
  header.writeBigUInt64LE(epoch, 40)
  header.writeUInt32LE(SECTOR, 48)
  header.writeUInt32LE(V1_PAGE_SECTORS, 52)
  header.writeBigUInt64LE(BigInt(ro.length), 56)
  header.writeUInt32LE(1, 64) // CLEAN
  header.writeBigUInt64LE(BigInt(ro.length), 72)
  fingerprint(ro, spread).copy(header, 80)
  header.writeBigUInt64LE(BigInt(rw.length), 112)
  // The one written run: its first sector is the one sample.
  fingerprint(rw, [first]).copy(header, 120)
  const page = Buffer.alloc(4096)
  page.write('GRWRPAGE', 0, 'latin1')
  page.writeBigUInt64LE(epoch, 16)
  page.writeBigUInt64LE(1n, 24)
  for (let s = first; s < first + count; s++) page[32 + (s >>> 3)]! |= 1 << (s & 7)
  const map = Buffer.alloc(4 * 4096)
  sealSlot(header).copy(map, 0)
  sealSlot(page).copy(map, 2 * 4096)
  fs.writeFileSync(file, map)
}

t.test('a format 1 map opens with its old check and a warning, and is bound to its RW from then on', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const ro = fs.readFileSync(s.ro)
  const rw = Buffer.alloc(SIZE)
  rw.fill(0x77, 2048 * SECTOR, 2176 * SECTOR)
  fs.writeFileSync(s.rw, rw)
  const v1 = path.join(s.dir, 'v1.map')
  format1Map(v1, ro, rw, 2048, 128)

  const changed = path.join(s.dir, 'changed.img')
  fs.writeFileSync(changed, Buffer.alloc(SIZE, 0x01))
  const wrong = await s.g('create', '--no-attach', '--map', v1, 'f1', s.ro, changed)
  t.equal(wrong.code, 1, 'the old check still refuses a RW with other data after a clean shutdown')
  t.match(wrong.stderr, `RW ${changed} does not hold the data the map describes`)

  const opened = await s.g('create', '--no-attach', '--map', v1, 'f1', s.ro, s.rw)
  t.equal(opened.code, 0, opened.stderr)
  t.match(
    opened.stderr,
    new RegExp(
      `warning: map ${v1} is in map format 1, which checks RW only by sampled data and only after a clean shutdown; ` +
        `it is now format 3, bound to its RW by device ID ${DEVICE_ID}, and geom-rowr versions that read only format 1 can no longer open it`,
    ),
  )
  t.ok((await s.shows('f1')).equals(s.expected([2048 * SECTOR, 128 * SECTOR, 0x77])), 'every write the format 1 map recorded reads back')
  t.equal((await s.g('destroy', 'f1')).code, 0)
  const headers = fs.readFileSync(v1).subarray(0, 8192)
  t.same([headers.readUInt32LE(8), headers.readUInt32LE(4096 + 8)], [3, 3], 'the map is format 3 now')
  t.equal(fs.statSync(v1).size, MAP_BYTES, 'its file grew by the pages of sectors on RW')
  const other = makeImage(path.join(s.dir, 'other.img'), SIZE, 'zero')
  const bound = await s.g('create', '--no-attach', '--map', v1, 'f2', s.ro, other)
  t.equal(bound.code, 1, 'and refuses another RW')
  t.match(bound.stderr, 'is not the RW this map was made with')
})
