// Hydration through the CLI and a daemon with a map file: create --hydrate,
// a client write meanwhile, SIGKILL part-way, a restart that keeps the
// progress and resumes; done: RO released (closed in /proc/PID/fd), status
// says so, revert and commit refused, diff lists the client's write only,
// RW equals RO plus the write; the map then resumes with RO given as none,
// which a map not fully hydrated refuses.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { alive, cliRunDir, makeImage, requires, run, waitUntil } from './fixtures/helpers.js'

const SIZE = 48 << 20
const NEEDS = { tools: ['qemu-io'] }

interface Shown {
  pid: number
  ro: string
  roHeld: boolean
  hydration: { state: string; copiedBytes: number; remainingBytes: number; rateBytesPerSecond: number }
}

t.test('create --hydrate with a map: SIGKILL part-way, resume, RO released when done, then resumed without RO', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, runDir, g, create } = cliRunDir(t)
  const ro = makeImage(path.join(dir, 'ro.img'), SIZE)
  // A hole in RO: SEEK_HOLE finds it, and RW gets zeros there.
  const fd = fs.openSync(ro, 'r+')
  fs.ftruncateSync(fd, 16 << 20)
  fs.ftruncateSync(fd, SIZE)
  fs.closeSync(fd)
  const rw = makeImage(path.join(dir, 'rw.img'), SIZE, 'random')
  const map = path.join(dir, 'h.map')
  const status = async (name: string): Promise<Shown> => {
    const r = await g('status', '--json', name)
    t.equal(r.code, 0, r.stderr)
    return JSON.parse(r.stdout) as Shown
  }

  const uri = await create('h0', '--map', map, '--hydrate', '--hydrate-rate', '8M', ro, rw)
  const w = await run('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x5c 20M 1M', '-c', 'flush'])
  t.equal(w.code, 0, w.stderr)
  t.ok(await waitUntil(async () => (await status('h0')).hydration.copiedBytes >= 8 << 20, 20_000), 'hydration makes progress')
  const before = await status('h0')
  t.equal(before.hydration.state, 'running')
  t.equal(before.roHeld, true)
  t.ok(before.hydration.remainingBytes > 0, 'not done yet')
  process.kill(before.pid, 'SIGKILL')
  t.ok(await waitUntil(() => !alive(before.pid)), 'killed')

  await create('h0', '--map', map, ro, rw)
  const resumed = await status('h0')
  t.equal(resumed.hydration.state, 'off', 'not started again without --hydrate')
  t.ok(resumed.hydration.copiedBytes > 0, `the copies made before the SIGKILL were kept (${resumed.hydration.copiedBytes} bytes)`)
  const waited = await g('hydrate', 'h0', '--rate', '0', '--wait')
  t.equal(waited.code, 0, waited.stderr)
  t.match(waited.stdout, /^h0: hydration done, 100\.0% on RW .*; RO released$/m)
  const done = await status('h0')
  t.same([done.hydration.state, done.hydration.remainingBytes, done.roHeld], ['done', 0, false])
  const fds = fs.readdirSync(`/proc/${done.pid}/fd`).map(f => {
    try {
      return fs.readlinkSync(`/proc/${done.pid}/fd/${f}`)
    } catch {
      return ''
    }
  })
  t.notOk(fds.includes(ro), 'the daemon no longer holds RO open')
  t.ok(fds.includes(rw), 'it holds RW')
  t.match((await g('status', 'h0')).stdout, `ro:            ${ro} (released: hydrated)`)
  const diff = await g('diff', '--json', 'h0')
  t.same((JSON.parse(diff.stdout) as { ranges: unknown }).ranges, [{ offset: 20 << 20, length: 1 << 20 }], 'diff: the client write alone')
  const revert = await g('revert', 'h0')
  t.equal(revert.code, 1)
  t.match(revert.stderr, 'revert needs RO, which was released when the device was fully hydrated')
  const commit = await g('commit', '-y', 'h0')
  t.match(commit.stderr, 'commit needs RO, which was released')
  t.equal((await g('destroy', 'h0')).code, 0)

  const expected = fs.readFileSync(ro)
  expected.fill(0x5c, 20 << 20, 21 << 20)
  t.ok(fs.readFileSync(rw).equals(expected), "RW alone holds RO plus the write (RO's hole as zeros)")
  fs.renameSync(ro, `${ro}.gone`)
  const noRo = await g('create', '--no-attach', '--map', map, 'h1', 'none', rw)
  t.equal(noRo.code, 0, `resumed with RO none: ${noRo.stderr}`)
  const again = await status('h1')
  t.same([again.ro, again.roHeld, again.hydration.state], ['none', false, 'done'])
  const r = await run('qemu-io', ['-f', 'raw', noRo.stdout.trim(), '-c', 'read -P 0x5c 20M 1M'])
  t.equal(r.code, 0, r.stderr)
  t.notMatch(r.stdout, /Pattern verification failed/, 'reads come from RW')
  t.equal((await g('destroy', 'h1')).code, 0)

  // A map that is not fully hydrated refuses RO none, and says why.
  fs.renameSync(`${ro}.gone`, ro)
  const other = path.join(dir, 'other.map')
  const rw2 = makeImage(path.join(dir, 'rw2.img'), SIZE, 'zero')
  await create('h2', '--map', other, ro, rw2)
  t.equal((await g('destroy', 'h2')).code, 0)
  const refused = await g('create', '--no-attach', '--map', other, 'h2', 'none', rw2)
  t.equal(refused.code, 1)
  t.match(refused.stderr, `map ${other} is not fully hydrated: ${SIZE} bytes of the device are still on RO, so RO cannot be none`)
  t.same(
    fs.readdirSync(runDir).filter(n => !n.endsWith('.log') && !n.startsWith('.')),
    [],
    'the refusal leaves nothing running',
  )
})
