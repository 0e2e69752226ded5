// Exclusive use (issue 11): a RW, a map and a RO being committed belong to
// one device at a time, a RO may be shared read-only; commit refuses while
// the device is open or its RO shared, asks first, and --dry-run writes
// nothing. Every refusal leaves nothing behind: no run state, no lock held
// (the next create of the right kind succeeds).
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { cliRunDir, makeImage, requires, rowr, run, sha256, sleep } from './fixtures/helpers.js'

const SIZE = 8 << 20
const NEEDS = { tools: ['qemu-io'] }

const setup = (t: Test) => {
  const { dir, runDir, g, create } = cliRunDir(t)
  const base = makeImage(path.join(dir, 'base.img'), SIZE)
  const rw = makeImage(path.join(dir, 'rw.img'), SIZE, 'zero')
  /** The run directory holds nothing of a device but those named (logs aside). */
  const onlyDevices = (...names: string[]): void => {
    const left = fs.readdirSync(runDir).filter(n => !n.endsWith('.log'))
    t.same(left.sort(), names.sort(), `run state only of ${names.join(', ') || 'no device'}`)
  }
  const write = async (uri: string, offset = 4096, length = 8192, fill = 0x5a): Promise<void> => {
    const r = await run('qemu-io', ['-f', 'raw', uri, '-c', `write -P ${fill} ${offset} ${length}`, '-c', 'flush'])
    t.equal(r.code, 0, r.stderr)
  }
  return { dir, runDir, base, rw, g, create, onlyDevices, write }
}

t.test("the RW of a running device is refused as another device's RW", async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  await s.create('n1', s.base, s.rw)
  const second = await s.g('create', '--no-attach', 'n1b', s.base, s.rw)
  t.equal(second.code, 1)
  t.match(second.stderr, `${s.rw} belongs to running device n1 as its RW; it cannot also be this device's RW`)
  t.match(second.stderr, 'choose another RW')
  s.onlyDevices('n1')
  const own = makeImage(path.join(s.dir, 'rw2.img'), SIZE, 'zero')
  await s.create('n1b', s.base, own)
})

t.test("the RO of a running device is refused as another device's RW, and is not written", async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const hash = sha256(s.base)
  await s.create('x1', s.base, s.rw)
  const other = makeImage(path.join(s.dir, 'other.img'), SIZE)
  const x3 = await s.g('create', '--no-attach', 'x3', other, s.base)
  t.equal(x3.code, 1)
  t.match(x3.stderr, `${s.base} belongs to running device x1 as its RO; it cannot also be this device's RW`)
  t.equal(sha256(s.base), hash, "x1's RO is unchanged")
  s.onlyDevices('x1')
  // Nothing is left locked: other.img, which x3 held as RO, now serves as a RW.
  await s.create('x4', s.base, other)
})

t.test('the map of a running device is refused to a second device with another RW', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const map = path.join(s.dir, 'x.map')
  await s.write(await s.create('m1', '--map', map, s.base, s.rw))
  const mapBefore = sha256(map)
  const emptyRw = makeImage(path.join(s.dir, 'empty.img'), SIZE, 'zero')
  const second = await s.g('create', '--no-attach', '--map', map, 'm2', s.base, emptyRw)
  t.equal(second.code, 1)
  t.match(second.stderr, `${map} belongs to running device m1 as its map; it cannot also be this device's map`)
  t.equal(sha256(map), mapBefore, 'the map is untouched')
  s.onlyDevices('m1')
  await s.create('m2', '--map', path.join(s.dir, 'own.map'), s.base, emptyRw)
})

t.test('two devices share one RO, each with its own RW', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const hash = sha256(s.base)
  const a = await s.create('s1', s.base, s.rw)
  const b = await s.create('s2', s.base, makeImage(path.join(s.dir, 'rw2.img'), SIZE, 'zero'))
  await s.write(a, 0, 4096, 0x11)
  await s.write(b, 0, 4096, 0x22)
  for (const [uri, fill] of [
    [a, 0x11],
    [b, 0x22],
  ] as const) {
    const r = await run('qemu-io', ['-f', 'raw', uri, '-c', `read -P ${fill} 0 4096`, '-c', `read -v 4096 16`])
    t.equal(r.code, 0, r.stderr)
    t.notMatch(r.stdout, 'Pattern verification failed')
  }
  t.equal(sha256(s.base), hash)
})

t.test('commit refuses while another device shares the RO; the RO is unchanged', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const hash = sha256(s.base)
  await s.write(await s.create('c1', s.base, s.rw))
  await s.create('c2', s.base, makeImage(path.join(s.dir, 'rw2.img'), SIZE, 'zero'))
  const refused = await s.g('commit', '-y', 'c1')
  t.equal(refused.code, 1)
  t.match(
    refused.stderr,
    `${s.base} is also the RO of running device c2; committing would change it under c2: make a new image instead (geom-rowr export c1 FILE)`,
  )
  t.equal(sha256(s.base), hash)
  // A stopped device's commit is refused the same way.
  const map = path.join(s.dir, 'o.map')
  const rw3 = makeImage(path.join(s.dir, 'rw3.img'), SIZE, 'zero')
  await s.create('c3', '--map', map, s.base, rw3)
  t.equal((await s.g('destroy', 'c3')).code, 0)
  const offline = await s.g('commit', '-y', '--ro', s.base, '--rw', rw3, '--map', map)
  t.equal(offline.code, 1)
  t.match(offline.stderr, 'is also the RO of running devices c1, c2; committing would change it under c1, c2')
  t.equal((await s.g('destroy', 'c2')).code, 0)
  const done = await s.g('commit', '-y', 'c1')
  t.equal(done.code, 0, done.stderr)
  t.not(sha256(s.base), hash, 'with nobody sharing it, commit writes RO')
})

t.test('commit without -y and without a terminal refuses and says so', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const hash = sha256(s.base)
  await s.write(await s.create('y1', s.base, s.rw))
  const r = await s.g('commit', 'y1')
  t.equal(r.code, 1)
  t.match(
    r.stderr,
    "y1: commit overwrites RO with the device's writes, which cannot be undone, so it asks first, and there is no terminal to ask on: give -y (--yes)",
  )
  t.equal(sha256(s.base), hash)
  t.same(JSON.parse((await s.g('diff', '--json', 'y1')).stdout).writtenBytes, 8192, 'the writes are still there')
})

t.test('commit --dry-run prints the ranges and bytes and writes nothing', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const hash = sha256(s.base)
  const uri = await s.create('d1', s.base, s.rw)
  await s.write(uri, 4096, 8192)
  await s.write(uri, 1 << 20, 512)
  const text = await s.g('commit', '--dry-run', 'd1')
  t.equal(text.code, 0, text.stderr)
  t.equal(text.stdout, `4096 8192\n${1 << 20} 512\n`)
  t.match(text.stderr, `d1: commit --dry-run: would write 8704 bytes in 2 range(s) into ${s.base}; nothing was written`)
  const json = await s.g('commit', '--dry-run', '--json', 'd1')
  t.same(JSON.parse(json.stdout), {
    dryRun: true,
    ro: s.base,
    bytes: 8704,
    ranges: [
      { offset: 4096, length: 8192 },
      { offset: 1 << 20, length: 512 },
    ],
  })
  t.equal(sha256(s.base), hash, 'RO is unchanged')
  t.equal(JSON.parse((await s.g('diff', '--json', 'd1')).stdout).writtenBytes, 8704, 'the map still holds every write')
})

t.test('commit refuses while an NBD client is connected, unless -f', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const hash = sha256(s.base)
  const uri = await s.create('b1', s.base, s.rw)
  await s.write(uri)
  const client = spawn('qemu-io', ['-f', 'raw', uri], { stdio: ['pipe', 'ignore', 'ignore'] })
  const exited = new Promise(resolve => client.once('exit', resolve))
  t.teardown(async () => {
    client.kill()
    await exited
  })
  await sleep(500)
  for (const args of [['-y'], ['--dry-run']]) {
    const busy = await s.g('commit', ...args, 'b1')
    t.equal(busy.code, 1)
    t.match(busy.stderr, 'b1 has 1 NBD client connection(s); disconnect them, or use commit -f')
  }
  t.equal(sha256(s.base), hash)
  const forced = await s.g('commit', '-y', '-f', 'b1')
  t.equal(forced.code, 0, forced.stderr)
  t.not(sha256(s.base), hash, '-f commits anyway')
})

t.test('files are locked across run directories, and by the commands on a stopped device', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const map = path.join(s.dir, 'l.map')
  await s.create('l1', '--map', map, s.base, s.rw)
  // Another run directory: its registry knows nothing of l1; the file locks do.
  const elsewhere = path.join(s.dir, 'run2')
  t.teardown(() => rowr(elsewhere, ['destroy', '-f', 'l2']))
  const other = await rowr(elsewhere, ['create', '--no-attach', 'l2', makeImage(path.join(s.dir, 'o.img'), SIZE), s.rw])
  t.equal(other.code, 1)
  t.match(other.stderr, `${s.rw} is in use by another process`)
  t.match(other.stderr, `fuser -v ${s.rw}`)
  const asRo = await rowr(elsewhere, ['create', '--no-attach', 'l2', s.rw, makeImage(path.join(s.dir, 'r.img'), SIZE, 'zero')])
  t.equal(asRo.code, 1)
  t.match(asRo.stderr, `${s.rw} is in use as a RW or map by another process`)
  const offline = await rowr(elsewhere, ['diff', '--ro', s.base, '--rw', makeImage(path.join(s.dir, 'r2.img'), SIZE, 'zero'), '--map', map])
  t.equal(offline.code, 1)
  t.match(offline.stderr, `${map} is in use by another process`)
  t.same(fs.existsSync(elsewhere) ? fs.readdirSync(elsewhere).filter(n => !n.endsWith('.log')) : [], [])
})
