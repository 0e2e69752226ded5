// diff, revert, commit and export, each checked byte for byte against the
// image it should give, on a running device (NAME) and on a stopped one
// (--ro --rw --map); resume with --map; refusals; Ctrl-C.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { cli, makeImage, requires, rowr, run, sha256, shortDir, sleep } from './fixtures/helpers.js'

const SIZE = 8 << 20

/** The writes of each test: [offset, length, fill byte]. */
const WRITES = [
  [0, 4096, 0x11],
  [1 << 20, 64 << 10, 0x22],
  [(5 << 20) + 512, 1536, 0x33],
  [SIZE - 4096, 4096, 0x44],
] as const

const setup = (t: Test) => {
  const dir = shortDir(t)
  const runDir = path.join(dir, 'run')
  const ro = makeImage(path.join(dir, 'ro.img'), SIZE)
  const rw = makeImage(path.join(dir, 'rw.img'), SIZE, 'zero')
  const map = path.join(dir, 'rw.map')
  const g = (...args: string[]) => rowr(runDir, args)
  t.teardown(async () => {
    for (const name of fs.existsSync(runDir) ? fs.readdirSync(runDir) : []) if (!name.endsWith('.log')) await g('destroy', '-f', name)
  })
  /** RO with WRITES applied: what the device must show. */
  const expected = (): Buffer => {
    const image = fs.readFileSync(ro)
    for (const [offset, length, fill] of WRITES) image.fill(fill, offset, offset + length)
    return image
  }
  const create = async (name: string): Promise<string> => {
    const r = await g('create', '--no-attach', '--map', map, name, ro, rw)
    t.equal(r.code, 0, r.stderr)
    return r.stdout.trim()
  }
  const write = async (uri: string): Promise<void> => {
    const commands = WRITES.flatMap(([offset, length, fill]) => ['-c', `write -P ${fill} ${offset} ${length}`])
    const r = await run('qemu-io', ['-f', 'raw', uri, ...commands, '-c', 'flush'])
    t.equal(r.code, 0, r.stderr)
  }
  const offline = ['--ro', ro, '--rw', rw, '--map', map]
  return { dir, runDir, ro, rw, map, g, expected, create, write, offline }
}

const NEEDS = { tools: ['qemu-io'] }

/** Sector-rounded ranges of WRITES, merged, as diff reports them. */
const expectedRanges = [
  { offset: 0, length: 4096 },
  { offset: 1 << 20, length: 64 << 10 },
  { offset: (5 << 20) + 512, length: 1536 },
  { offset: SIZE - 4096, length: 4096 },
]

t.test('diff and export, running and stopped; resume shows the same', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  await s.write(await s.create('l0'))
  const running = await s.g('diff', '--json', 'l0')
  t.equal(running.code, 0, running.stderr)
  t.same(JSON.parse(running.stdout), { writtenBytes: expectedRanges.reduce((n, r) => n + r.length, 0), ranges: expectedRanges })
  const text = await s.g('diff', 'l0')
  t.equal(text.stdout, expectedRanges.map(r => `${r.offset} ${r.length}\n`).join(''))
  t.match(text.stderr, 'l0: 4 written range(s), 75264 bytes')

  const live = path.join(s.dir, 'live.img')
  const exported = await s.g('export', '--json', 'l0', live)
  t.equal(exported.code, 0, exported.stderr)
  t.match(JSON.parse(exported.stdout), { file: live, bytes: SIZE })
  t.ok(fs.readFileSync(live).equals(s.expected()), 'the export of the running device is RO with the writes')
  t.equal((await s.g('export', 'l0', live)).code, 1, 'export does not overwrite a file')

  t.equal((await s.g('destroy', 'l0')).code, 0)
  const stopped = await s.g('diff', '--json', ...s.offline)
  t.same(JSON.parse(stopped.stdout).ranges, expectedRanges, 'diff of the stopped device reads the map')
  const offlineImage = path.join(s.dir, 'offline.img')
  t.equal((await s.g('export', ...s.offline, offlineImage)).code, 0)
  t.ok(fs.readFileSync(offlineImage).equals(s.expected()), 'the export of the stopped device is the same')

  const uri = await s.create('l0')
  const copy = path.join(s.dir, 'copy.img')
  t.equal((await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, copy])).code, 0)
  t.ok(fs.readFileSync(copy).equals(s.expected()), 'the resumed device shows every write')
})

t.test('revert: refused while a client is connected, then the device reads as RO and RW is released', async t => {
  if (!requires(t, { tools: [...NEEDS.tools, 'qemu-nbd'] })) return
  const s = setup(t)
  const uri = await s.create('r0')
  await s.write(uri)
  const client = spawn('qemu-io', ['-f', 'raw', uri], { stdio: ['pipe', 'ignore', 'ignore'] })
  t.teardown(() => client.kill())
  await sleep(500)
  const busy = await s.g('revert', 'r0')
  t.equal(busy.code, 1)
  t.match(busy.stderr, 'r0 has 1 NBD client connection(s); disconnect them, or use revert -f')
  client.stdin.end('quit\n')
  await new Promise(resolve => client.once('exit', resolve))
  const reverted = await s.g('revert', '--json', 'r0')
  t.equal(reverted.code, 0, reverted.stderr)
  t.same(JSON.parse(reverted.stdout), { revertedBytes: 75264, released: true })
  const copy = path.join(s.dir, 'copy.img')
  t.equal((await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, copy])).code, 0)
  t.equal(sha256(copy), sha256(s.ro), 'the device reads as RO again')
  t.equal(fs.statSync(s.rw).blocks, 0, "RW's space was given back")
  t.equal((await s.g('destroy', 'r0')).code, 0)
  t.same(JSON.parse((await s.g('diff', '--json', ...s.offline)).stdout).ranges, [], 'the map stays empty after a restart')
})

t.test('commit folds the writes into RO, empties the map, and resumes; offline too', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  await s.write(await s.create('c0'))
  const committed = await s.g('commit', '-y', 'c0')
  t.equal(committed.code, 0, committed.stderr)
  t.match(committed.stdout, 'c0: committed 75264 bytes into RO; the map is empty')
  t.ok(fs.readFileSync(s.ro).equals(s.expected()), 'RO now holds the writes')
  t.same(JSON.parse((await s.g('diff', '--json', 'c0')).stdout).ranges, [])
  t.equal((await s.g('destroy', 'c0')).code, 0)
  const again = await s.g('create', '--no-attach', '--map', s.map, 'c0', s.ro, s.rw)
  t.equal(again.code, 0, `the map resumes with the new RO: ${again.stderr}`)
  await run('qemu-io', ['-f', 'raw', again.stdout.trim(), '-c', 'write -P 0x55 8192 4096', '-c', 'flush'])
  t.equal((await s.g('destroy', 'c0')).code, 0)
  const offline = await s.g('commit', '-y', '--json', ...s.offline)
  t.equal(offline.code, 0, offline.stderr)
  t.same(JSON.parse(offline.stdout), { committedBytes: 4096, released: true })
  const image = s.expected()
  image.fill(0x55, 8192, 8192 + 4096)
  t.ok(fs.readFileSync(s.ro).equals(image), "the stopped device's commit wrote RO too")
})

t.test('refusals: commit into a .uzip, a map for other devices, two writers', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const uzip = path.join(s.dir, 'system.uzip')
  fs.copyFileSync(s.ro, uzip)
  const uzipRw = makeImage(path.join(s.dir, 'u.rw'), SIZE, 'zero')
  const uzipMap = path.join(s.dir, 'u.map')
  t.equal((await s.g('create', '--no-attach', '--map', uzipMap, 'u0', uzip, uzipRw)).code, 0)
  t.equal((await s.g('destroy', 'u0')).code, 0)
  const r = await s.g('commit', '-y', '--ro', uzip, '--rw', uzipRw, '--map', uzipMap)
  t.equal(r.code, 1)
  t.match(r.stderr, 'is a geom_uzip image, which cannot be written; use geom-rowr export to make a new image instead')

  await s.write(await s.create('x0'))
  const twice = await s.g('diff', ...s.offline)
  t.equal(twice.code, 1)
  t.match(twice.stderr, `${s.rw} belongs to running device x0 as its RW; give NAME (x0) instead of --ro/--rw`)
  t.equal((await s.g('destroy', 'x0')).code, 0)

  const other = makeImage(path.join(s.dir, 'other.img'), SIZE)
  const wrong = await s.g('create', '--no-attach', '--map', s.map, 'x1', other, s.rw)
  t.equal(wrong.code, 1)
  t.match(wrong.stderr, `map ${s.map} belongs to other devices: RO ${other} is not the device the map was made with`)
  const usage = await s.g('diff', '--ro', s.ro, '--rw', s.rw)
  t.equal(usage.code, 2)
  t.match(usage.stderr, 'a stopped device needs its map: --map MAP or --map-on-rw')
})

t.test("--map-on-rw keeps the map in RW's tail, and says how much room it needs", async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const small = await s.g('create', '--no-attach', '--map-on-rw', 'm0', s.ro, s.rw)
  t.equal(small.code, 1)
  t.match(
    small.stderr,
    new RegExp(
      `--map-on-rw needs ${s.rw} to hold the device and its map: (\\d+) bytes \\(${SIZE} \\+ \\d+ for the map\\), but it is ${SIZE} bytes: truncate -s \\1 ${s.rw}`,
    ),
  )
  const needed = Number(/: (\d+) bytes/.exec(small.stderr)![1])
  fs.truncateSync(s.rw, needed)
  const created = await s.g('create', '--no-attach', '--map-on-rw', 'm0', s.ro, s.rw)
  t.equal(created.code, 0, created.stderr)
  await s.write(created.stdout.trim())
  t.equal((await s.g('destroy', 'm0')).code, 0)
  const image = path.join(s.dir, 'out.img')
  t.equal((await s.g('export', '--ro', s.ro, '--rw', s.rw, '--map-on-rw', image)).code, 0)
  t.ok(fs.readFileSync(image).equals(s.expected()), "the map in RW's tail described every write")
})

t.test('Ctrl-C stops an export cleanly: no partial file, exit 130', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const big = path.join(s.dir, 'big.img')
  const bigRw = path.join(s.dir, 'big.rw')
  fs.writeFileSync(big, '')
  fs.truncateSync(big, 32 * 2 ** 30)
  fs.writeFileSync(bigRw, '')
  fs.truncateSync(bigRw, 32 * 2 ** 30)
  const out = path.join(s.dir, 'out.img')
  const bigMap = path.join(s.dir, 'big.map')
  t.equal((await s.g('create', '--no-attach', '--map', bigMap, 'big0', big, bigRw)).code, 0)
  t.equal((await s.g('destroy', 'big0')).code, 0)
  const child = spawn(process.execPath, [cli, 'export', '--ro', big, '--rw', bigRw, '--map', bigMap, out], {
    env: { ...process.env, GEOM_ROWR_RUNDIR: s.runDir },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const exited = new Promise(resolve => child.once('exit', resolve))
  let stderr = ''
  child.stderr.on('data', c => (stderr += c))
  await sleep(1000)
  child.kill('SIGINT')
  const code = await exited
  t.equal(code, 130, stderr)
  t.match(stderr, 'export was interrupted; nothing is half-done: it can be run again')
  t.notOk(fs.existsSync(out), 'the partial image is removed')
})

t.test('export and commit name their final sync once every byte is copied; the CLI draws it', async t => {
  if (!requires(t, { tools: ['script'] })) return
  const s = setup(t)
  const { openOffline } = await import('../lib/lifecycle/offline.js')
  const { commit, exportImage } = await import('../lib/lifecycle/jobs.js')
  t.equal((await s.g('create', '--no-attach', '--map', s.map, 's0', s.ro, s.rw)).code, 0, 'the map is made by a device')
  t.equal((await s.g('destroy', 's0')).code, 0)
  const device = await openOffline({ ro: s.ro, rw: s.rw, map: s.map, mapOnRw: false, force: false }, m => t.comment(m))
  const events: string[] = []
  const ctx = {
    engine: device.engine,
    ro: s.ro,
    claims: device.claims,
    signal: new AbortController().signal,
    progress: (done: number, total: number) => events.push(`${done}/${total}`),
    step: (what: string) => events.push(what),
  }
  try {
    await exportImage(ctx, path.join(s.dir, 'synced.img'), { toDevice: false })
    t.same(events.slice(-2), [`${SIZE}/${SIZE}`, 'syncing'], 'export: the sync is named after the last byte')
    events.length = 0
    await device.engine.write(4096, Buffer.alloc(8192, 0x77))
    await commit(ctx)
    t.same(events.slice(-2), ['8192/8192', 'syncing'], 'commit: the sync of RO is named after the last byte')
  } finally {
    await device.close()
  }

  // On a terminal the CLI draws the step (script(1) gives it one).
  const out = path.join(s.dir, 'drawn.img')
  const command = [process.execPath, cli, 'export', ...s.offline, out].map(a => `'${a}'`).join(' ')
  const drawn = await run('script', ['-q', '-e', '-c', command, '/dev/null'], { GEOM_ROWR_RUNDIR: s.runDir })
  t.equal(drawn.code, 0, drawn.code === 0 ? 'exported on a terminal' : drawn.stdout)
  t.match(drawn.stdout, /100% 8\.0 MiB\/8\.0 MiB syncing\.\.\./, 'the bar names the sync')
})

t.test('an interrupted commit leaves the device as it was, resumes, and finishes when run again', async t => {
  const s = setup(t)
  const { openOffline } = await import('../lib/lifecycle/offline.js')
  const { commit } = await import('../lib/lifecycle/jobs.js')
  const target = { ro: s.ro, rw: s.rw, map: s.map, mapOnRw: false, force: false }
  t.equal((await s.g('create', '--no-attach', '--map', s.map, 'c0', s.ro, s.rw)).code, 0, 'the map is made by a device')
  t.equal((await s.g('destroy', 'c0')).code, 0)
  const first = await openOffline(target, m => t.comment(m))
  const data = Buffer.alloc(3 << 20, 0x66)
  await first.engine.write(1 << 20, data)
  const abort = new AbortController()
  await t.rejects(
    commit({
      engine: first.engine,
      ro: s.ro,
      signal: abort.signal,
      progress: done => {
        if (done > 0) abort.abort()
      },
      step: () => undefined,
    }),
    { code: 'ECANCELED' },
  )
  await first.close()
  const roNow = fs.readFileSync(s.ro)
  t.ok(roNow.subarray(1 << 20, 2 << 20).equals(data.subarray(0, 1 << 20)), 'the first MiB reached RO')
  t.notOk(roNow.subarray(3 << 20, 4 << 20).equals(data.subarray(0, 1 << 20)), 'the rest did not')

  const resumed = await openOffline(target, m => t.comment(m))
  t.match(
    resumed.warnings.join('\n'),
    'a commit into RO was interrupted; run geom-rowr commit again to finish it',
    'RO changed, and the map knows why',
  )
  const view = Buffer.alloc(3 << 20)
  await resumed.engine.read(view, 1 << 20)
  t.ok(view.equals(data), 'the device shows the same data')
  await resumed.close()

  const finished = await s.g('commit', '-y', '--json', ...s.offline)
  t.equal(finished.code, 0, finished.stderr)
  t.equal(JSON.parse(finished.stdout).committedBytes, 3 << 20)
  const image = fs.readFileSync(s.ro)
  t.ok(image.subarray(1 << 20, 4 << 20).equals(data), 'RO holds all of it')
  const again = await s.g('diff', '--json', ...s.offline)
  t.same(JSON.parse(again.stdout).ranges, [], "and the map is empty, with RO's new fingerprint accepted")
})

t.test('with --map, RW auto is kept on destroy and used again', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const name = `keep${process.pid}`
  const auto = `/var/tmp/geom-rowr-${name}.rw`
  t.teardown(() => fs.rmSync(auto, { force: true }))
  const created = await s.g('create', '--no-attach', '--map', s.map, name, s.ro, 'auto')
  t.equal(created.code, 0, created.stderr)
  t.match(created.stderr, `read-write device: ${auto} (sparse, ${SIZE} bytes; kept on destroy: the map describes its data)`)
  await s.write(created.stdout.trim())
  t.equal((await s.g('destroy', name)).code, 0)
  t.ok(fs.existsSync(auto), 'RW is still there')
  const again = await s.g('create', '--no-attach', '--map', s.map, name, s.ro, 'auto')
  t.equal(again.code, 0, again.stderr)
  const copy = path.join(s.dir, 'copy.img')
  t.equal((await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', again.stdout.trim(), copy])).code, 0)
  t.ok(fs.readFileSync(copy).equals(s.expected()), 'the writes are back')
})
