import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import t from 'tap'
import { ControlServer, callControl } from '../lib/daemon/control.js'
import { checkName, claim, listNames, liveness, release, runDir, writeState } from '../lib/daemon/run-state.js'
import { Teardown } from '../lib/daemon/teardown.js'
import { shortDir } from './fixtures/helpers.js'

t.test('one framed JSON request, one reply', async t => {
  const dir = shortDir(t)
  const sock = path.join(dir, 'c.sock')
  const seen: unknown[] = []
  const server = await ControlServer.listen(sock, async request => {
    seen.push(request)
    return request.cmd === 'status' ? { ok: true, answer: 42 } : { ok: false, code: 'EBUSY', message: 'busy' }
  })
  t.teardown(() => server.close())
  t.same(await callControl(sock, { cmd: 'status' }), { ok: true, answer: 42 })
  t.same(await callControl(sock, { cmd: 'destroy', force: false }), { ok: false, code: 'EBUSY', message: 'busy' })
  t.same(seen, [{ cmd: 'status' }, { cmd: 'destroy', force: false }])
})

t.test('malformed, oversized and thrown requests are answered or dropped, never crash', async t => {
  const dir = shortDir(t)
  const sock = path.join(dir, 'c.sock')
  const server = await ControlServer.listen(sock, async () => {
    throw Object.assign(new Error('it broke'), { code: 'EIO' })
  })
  t.teardown(() => server.close())
  t.same(await callControl(sock, { cmd: 'status' }), { ok: false, code: 'EIO', message: 'it broke' })
  const raw = (bytes: Buffer) =>
    new Promise<Buffer>(resolve => {
      const s = net.connect(sock, () => s.end(bytes))
      const chunks: Buffer[] = []
      s.on('data', c => chunks.push(c))
      s.on('close', () => resolve(Buffer.concat(chunks)))
      s.on('error', () => undefined)
    })
  const frame = (body: string) => {
    const b = Buffer.from(body)
    const h = Buffer.alloc(4)
    h.writeUInt32BE(b.length)
    return Buffer.concat([h, b])
  }
  const bad = await raw(frame('{"cmd":"format-disk"}'))
  t.match(JSON.parse(bad.subarray(4).toString()), { ok: false, code: 'EINVAL' })
  t.equal((await raw(frame('not json'))).length, 0, 'unparseable: dropped')
  t.equal((await raw(Buffer.from([0xff, 0xff, 0xff, 0xff]))).length, 0, 'oversized: dropped')
  t.equal((await raw(Buffer.from([0, 0]))).length, 0, 'cut short: dropped')
  t.match(await callControl(sock, { cmd: 'status' }), { ok: false }, 'still serving')
})

t.test('an absent daemon is a clear error', async t => {
  const dir = shortDir(t)
  await t.rejects(callControl(path.join(dir, 'none.sock'), { cmd: 'status' }), { code: 'EDAEMON', message: /cannot reach the daemon/ })
  const silent = net.createServer(() => undefined)
  const sock = path.join(dir, 's.sock')
  await new Promise<void>(resolve => silent.listen(sock, resolve))
  t.teardown(() => silent.close())
  await t.rejects(callControl(sock, { cmd: 'status' }, 200), { code: 'EDAEMON', message: /did not answer within 0.2 s/ })
})

t.test('run state: names are claimed once, and liveness follows the pid', async t => {
  const dir = shortDir(t)
  process.env.GEOM_ROWR_RUNDIR = dir
  t.teardown(() => delete process.env.GEOM_ROWR_RUNDIR)
  t.throws(() => checkName('-x'), { code: 'EBADNAME' })
  t.throws(() => checkName('a/b'), { code: 'EBADNAME' })
  checkName('rowr0.test_1')
  t.equal(liveness('r0').kind, 'absent')
  t.equal(claim('r0'), true)
  t.equal(claim('r0'), false, 'a second claim fails')
  t.equal(liveness('r0').kind, 'starting', 'claimed but no state yet')
  const state = {
    name: 'r0',
    pid: process.pid,
    phase: 'ready' as const,
    ro: '/a',
    rw: '/b',
    rwAuto: false,
    map: null,
    mediasize: 512,
    sectorsize: 512,
    device: null,
    nbd: 'x',
    attachment: null,
    created: '',
  }
  writeState(state)
  t.equal(liveness('r0').kind, 'running')
  writeState({ ...state, pid: 2 ** 22 + 1 })
  t.match(liveness('r0'), { kind: 'stale', reason: /is gone/ })
  t.same(listNames(), ['r0'])
  release('r0')
  t.same(listNames(), [])
})

t.test('the run directory is its real path, even before it exists', async t => {
  const dir = shortDir(t)
  fs.mkdirSync(path.join(dir, 'real'))
  fs.symlinkSync('real', path.join(dir, 'link'))
  process.env.GEOM_ROWR_RUNDIR = path.join(dir, 'link', 'run', 'deeper')
  t.teardown(() => delete process.env.GEOM_ROWR_RUNDIR)
  t.equal(runDir(), path.join(dir, 'real', 'run', 'deeper'), 'before it is created')
  t.equal(claim('r1'), true)
  t.equal(runDir(), path.join(dir, 'real', 'run', 'deeper'), 'after')
})

t.test('teardown runs in reverse, carries on past failures and reports the first', async t => {
  const log: string[] = []
  const td = new Teardown(m => log.push(m))
  const order: string[] = []
  td.add('a', () => order.push('a'))
  td.add('b', () => {
    throw new Error('b failed')
  })
  td.add('c', async ({ force }) => order.push(`c force=${force}`))
  await t.rejects(td.run({ force: true }), { message: 'b failed' })
  t.same(order, ['c force=true', 'a'])
  t.same(log, ['releasing b failed: b failed'])
  await td.run({ force: false })
  t.same(order.length, 2, 'each step runs once')
})
