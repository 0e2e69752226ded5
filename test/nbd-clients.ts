// geom-rowr serve against real NBD clients: qemu-io, qemu-img, nbdinfo and nbdcopy.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { makeImage, requires, run, sha256, shortDir, startServe } from './fixtures/helpers.js'

const SIZE = 64 << 20

/** RO of random bytes, a sparse RW, and a server over them. */
const setup = async (t: Test, extra: string[] = []) => {
  const dir = shortDir(t)
  const ro = makeImage(path.join(dir, 'ro.img'), SIZE)
  const rw = makeImage(path.join(dir, 'rw.img'), SIZE, 'zero')
  const roHash = sha256(ro)
  const server = await startServe(t, path.join(dir, 'run'), ['--name', 'rowr0', ...extra, ro, rw])
  return { dir, ro, rw, roHash, uri: server.uri }
}

t.test('qemu-io pattern writes read back; qemu-img compare and nbdcopy see the expected image', async t => {
  if (!requires(t, { tools: ['qemu-io', 'qemu-img', 'nbdcopy'] })) return
  const { dir, ro, roHash, uri } = await setup(t)
  const io = await run('qemu-io', [
    '-f',
    'raw',
    uri,
    '-c',
    'write -P 0xab 1M 64k',
    '-c',
    'write -P 0xcd 1000 3000',
    '-c',
    'write -z 4M 1M',
    '-c',
    'discard 8M 1M',
    '-c',
    'write -P 0xef 63M 1M',
    '-c',
    'flush',
    '-c',
    'read -P 0xab 1M 64k',
    '-c',
    'read -P 0xcd 1000 3000',
    '-c',
    'read -P 0 4M 1M',
    '-c',
    'read -P 0 8M 1M',
    '-c',
    'read -P 0xef 63M 1M',
  ])
  t.equal(io.code, 0, io.stderr)
  t.notMatch(io.stdout, /Pattern verification failed/, 'every pattern read back')
  const expected = Buffer.from(fs.readFileSync(ro))
  expected.fill(0xab, 1 << 20, (1 << 20) + 65536)
  expected.fill(0xcd, 1000, 4000)
  expected.fill(0, 4 << 20, 5 << 20)
  expected.fill(0, 8 << 20, 9 << 20)
  expected.fill(0xef, 63 << 20, 64 << 20)
  const expectedPath = path.join(dir, 'expected.img')
  fs.writeFileSync(expectedPath, expected)
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', expectedPath, uri])
  t.equal(cmp.code, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`)
  const copy = path.join(dir, 'copy.img')
  const nbdcopy = await run('nbdcopy', [uri, copy])
  t.equal(nbdcopy.code, 0, nbdcopy.stderr)
  t.equal(sha256(copy), sha256(expectedPath), 'nbdcopy of the whole device (multi-conn)')
  t.equal(sha256(ro), roHash, 'RO is unchanged')
})

t.test('nbdinfo --json: size, flags, block sizes and contexts', async t => {
  if (!requires(t, { tools: ['nbdinfo'] })) return
  const { uri } = await setup(t)
  const info = await run('nbdinfo', ['--json', uri])
  t.equal(info.code, 0, info.stderr)
  const e = JSON.parse(info.stdout).exports[0]
  t.match(e, {
    'export-name': 'rowr0',
    'export-size': SIZE,
    is_read_only: false,
    can_flush: true,
    can_fua: true,
    can_trim: true,
    can_zero: true,
    can_cache: true,
    can_df: true,
    can_multi_conn: true,
    block_size_minimum: 512,
    block_size_preferred: 4096,
    block_size_maximum: 32 << 20,
  })
  t.same(e.contexts, ['base:allocation', 'geom-rowr:written'])
})

t.test('nbdinfo --map shows which ranges come from RW', async t => {
  if (!requires(t, { tools: ['nbdinfo', 'qemu-io'] })) return
  const { uri } = await setup(t)
  await run('qemu-io', ['-f', 'raw', uri, '-c', 'write 1M 512k', '-c', 'write 10M 4k'])
  const map = await run('nbdinfo', ['--map=geom-rowr:written', '--json', uri])
  t.equal(map.code, 0, map.stderr)
  const written = (JSON.parse(map.stdout) as { offset: number; length: number; type: number }[])
    .filter(e => e.type === 1)
    .map(e => [e.offset, e.length])
  t.same(written, [
    [1 << 20, 512 << 10],
    [10 << 20, 4096],
  ])
  const base = await run('nbdinfo', ['--map', uri])
  t.equal(base.code, 0)
  t.match(base.stdout, /0\s+67108864\s+0\s+data/, 'base:allocation: all data')
})

t.test('a sector size larger than 512 is advertised and served', async t => {
  if (!requires(t, { tools: ['nbdinfo', 'qemu-io'] })) return
  const { uri } = await setup(t, ['--sector-size', '4096'])
  const info = JSON.parse((await run('nbdinfo', ['--json', uri])).stdout).exports[0]
  t.equal(info.block_size_minimum, 4096)
  const io = await run('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x33 1000 100', '-c', 'read -P 0x33 1000 100'])
  t.notMatch(io.stdout, /failed/, 'a small write is handled by the client at 4096-byte granularity')
})

t.test('serve over TCP on 127.0.0.1 by default', async t => {
  if (!requires(t, { tools: ['nbdinfo'] })) return
  const { uri } = await setup(t, ['--port', '0'])
  t.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+\/$/)
  const info = await run('nbdinfo', ['--size', uri])
  t.equal(info.stdout.trim(), String(SIZE))
})
