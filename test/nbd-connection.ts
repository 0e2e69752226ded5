import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import t, { type Test } from 'tap'
import { BlockDevice } from '../lib/devices/block-device.js'
import { Engine } from '../lib/engine/engine.js'
import { NbdServer, exportFor, nbdUri } from '../lib/nbd/server.js'
import { bytes, Cmd, connect, connectGo, Errno, nameAndInfos, option, request, type Reader } from './fixtures/nbd-client.js'
import { makeImage, waitUntil } from './fixtures/helpers.js'

const SIZE = 1 << 20
const { READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS } = Cmd
const { EINVAL, ENOSPC } = Errno

/** An NBD server over fresh images; RO holds bytes 0,1,2,... mod 251. */
const serve = async (t: Test) => {
  const dir = t.testdir()
  const roPath = path.join(dir, 'ro.img')
  makeImage(roPath, SIZE, 'zero')
  const pattern = Buffer.alloc(SIZE)
  for (let i = 0; i < SIZE; i++) pattern[i] = i % 251
  const rwPath = makeImage(path.join(dir, 'rw.img'), SIZE, 'zero')
  const fd = BlockDevice.open(rwPath, { writable: true })
  fs.writeFileSync(roPath, pattern)
  const ro = BlockDevice.open(roPath, { writable: false })
  const engine = new Engine({ ro, rw: fd, size: SIZE, sectorSize: 512 })
  const logs: string[] = []
  const server = new NbdServer(engine, exportFor(engine, 'rowr0', 'test'), m => logs.push(m))
  // Unix socket paths are limited to 107 bytes; test directories run longer.
  const socket = path.join(fs.mkdtempSync('/tmp/nbd-test-'), 'nbd.sock')
  await server.listen({ socket })
  t.teardown(async () => {
    await server.close({ force: true })
    ro.close()
    fd.close()
    fs.rmSync(path.dirname(socket), { recursive: true, force: true })
  })
  return { socket, server, engine, pattern, logs, rwPath }
}

t.test('simple replies: write, read back, flush, trim, zero, cache', async t => {
  const { socket, pattern } = await serve(t)
  const { r, size, flags } = await connectGo(socket)
  t.equal(size, SIZE)
  t.equal(flags & 1, 1, 'HAS_FLAGS')
  r.socket.write(request(READ, 1, 0, 1024))
  t.same(await r.simpleReply(), { error: 0, cookie: 1 })
  t.same(await r.take(1024), pattern.subarray(0, 1024))
  r.socket.write(Buffer.concat([request(WRITE, 2, 512, 512, 1), Buffer.alloc(512, 0xaa)]))
  t.same(await r.simpleReply(), { error: 0, cookie: 2 }, 'FUA write')
  r.socket.write(request(READ, 3, 0, 1536))
  await r.simpleReply()
  const back = await r.take(1536)
  t.same(back.subarray(512, 1024), Buffer.alloc(512, 0xaa))
  t.same(back.subarray(1024), pattern.subarray(1024, 1536))
  for (const [type, cookie] of [
    [FLUSH, 4],
    [TRIM, 5],
    [WRITE_ZEROES, 6],
    [CACHE, 7],
  ] as const) {
    r.socket.write(request(type, cookie, type === FLUSH ? 0 : 4096, type === FLUSH ? 0 : 4096))
    t.same(await r.simpleReply(), { error: 0, cookie }, `command ${type}`)
  }
  r.socket.write(request(READ, 8, 4096, 4096))
  await r.simpleReply()
  t.same(await r.take(4096), Buffer.alloc(4096), 'trimmed range reads zeros')
  r.socket.write(request(DISC, 9, 0, 0))
  t.ok(await r.closed(), 'DISC closes the connection')
})

t.test('WRITE_ZEROES with NO_HOLE leaves zeros allocated on RW; without it, RW gets a hole', async t => {
  const { socket, rwPath } = await serve(t)
  const { r } = await connectGo(socket)
  const chunk = 64 * 1024
  r.socket.write(Buffer.concat([request(WRITE, 1, 0, 2 * chunk), Buffer.alloc(2 * chunk, 0x77)]))
  t.equal((await r.simpleReply()).error, 0)
  const written = fs.statSync(rwPath).blocks * 512
  t.ok(written >= 2 * chunk, 'both chunks are allocated on RW')
  r.socket.write(request(WRITE_ZEROES, 2, 0, chunk, 1 << 1))
  t.equal((await r.simpleReply()).error, 0)
  t.equal(fs.statSync(rwPath).blocks * 512, written, 'NO_HOLE: nothing was deallocated')
  r.socket.write(request(WRITE_ZEROES, 3, chunk, chunk))
  t.equal((await r.simpleReply()).error, 0)
  t.ok(fs.statSync(rwPath).blocks * 512 <= written - chunk, 'without NO_HOLE the range became a hole')
  r.socket.write(request(READ, 4, 0, 2 * chunk))
  t.equal((await r.simpleReply()).error, 0)
  t.same(await r.take(2 * chunk), Buffer.alloc(2 * chunk), 'both read as zeros')
})

t.test('structured replies: OFFSET_DATA, error chunks with messages, NONE', async t => {
  const { socket, pattern } = await serve(t)
  const { r, flags } = await connectGo(socket, { structured: true })
  t.equal(flags & (1 << 7), 1 << 7, 'SEND_DF')
  r.socket.write(request(READ, 10, 2048, 512))
  const c = await r.chunk()
  t.same([c.flags, c.type, c.cookie], [1, 1, 10], 'DONE, OFFSET_DATA')
  t.equal(Number(c.payload.readBigUInt64BE(0)), 2048)
  t.same(c.payload.subarray(8), pattern.subarray(2048, 2560))
  r.socket.write(request(READ, 11, SIZE, 512))
  const e = await r.chunk()
  t.same([e.flags, e.type, e.cookie], [1, 0x8001, 11], 'DONE, ERROR')
  t.equal(e.payload.readUInt32BE(0), EINVAL)
  t.match(e.payload.subarray(6).toString(), /beyond the 1048576-byte export/)
  r.socket.write(request(FLUSH, 12, 0, 0))
  const done = await r.chunk()
  t.same([done.flags, done.type, done.payload.length], [1, 0, 0])
})

t.test('requests the server refuses keep the connection', async t => {
  const { socket } = await serve(t)
  const { r } = await connectGo(socket)
  const cases: [string, Buffer, number][] = [
    ['read past the end', request(READ, 1, SIZE - 512, 1024), EINVAL],
    ['offset beyond 2^53', request(READ, 2, 2n ** 60n, 512), EINVAL],
    ['write past the end (payload still consumed)', Buffer.concat([request(WRITE, 3, SIZE, 512), Buffer.alloc(512)]), ENOSPC],
    ['zero past the end', request(WRITE_ZEROES, 4, SIZE - 512, 1024), ENOSPC],
    ['unknown command', request(42, 5, 0, 0), EINVAL],
    ['a flag the command does not take', request(FLUSH, 6, 0, 0, 1), EINVAL],
    ['block status without a context', request(BLOCK_STATUS, 7, 0, 512), EINVAL],
    ['a read larger than the maximum payload', request(READ, 8, 0, 33 << 20), EINVAL],
  ]
  for (const [what, bytes, errno] of cases) {
    r.socket.write(bytes)
    t.equal((await r.simpleReply()).error, errno, what)
  }
  r.socket.write(request(READ, 9, 0, 512))
  t.equal((await r.simpleReply()).error, 0, 'the connection still serves')
  await r.take(512)
})

t.test('a session fed one byte at a time answers exactly as one fed all at once', async t => {
  const session = Buffer.concat([
    bytes.u32(3),
    option(8),
    option(7, nameAndInfos('', [3])),
    Buffer.concat([request(WRITE, 1, 1000, 3000), Buffer.alloc(3000, 0x42)]),
    request(READ, 2, 512, 4096),
    request(DISC, 3, 0, 0),
  ])
  const transcript = async (feed: (s: net.Socket) => Promise<void>) => {
    const { socket } = await serve(t)
    const s = net.connect(socket)
    const chunks: Buffer[] = []
    s.on('data', c => chunks.push(c))
    const closed = new Promise(resolve => s.on('close', resolve))
    await new Promise(resolve => s.once('connect', resolve))
    await feed(s)
    await closed
    return Buffer.concat(chunks)
  }
  const whole = await transcript(async s => void s.write(session))
  const trickled = await transcript(async s => {
    for (const b of session) {
      s.write(Buffer.from([b]))
      await new Promise(resolve => setImmediate(resolve))
    }
  })
  t.ok(whole.length > 18 + 4096, 'the session produced replies')
  t.ok(trickled.equals(whole), 'byte-at-a-time input gives the same bytes back')
})

t.test('block status: both contexts, one chunk each, the last marked DONE', async t => {
  const { socket } = await serve(t)
  const { r } = await connectGo(socket, { structured: true, contexts: ['base:allocation', 'geom-rowr:written'] })
  r.socket.write(Buffer.concat([request(WRITE, 1, 4096, 1024), Buffer.alloc(1024)]))
  await r.chunk()
  r.socket.write(request(BLOCK_STATUS, 2, 0, 16384))
  const first = await r.chunk()
  const second = await r.chunk()
  t.same([first.type, first.flags, second.type, second.flags], [5, 0, 5, 1])
  const decode = (p: Buffer) => {
    const out: number[][] = []
    for (let at = 4; at < p.length; at += 8) out.push([p.readUInt32BE(at), p.readUInt32BE(at + 4)])
    return { id: p.readUInt32BE(0), extents: out }
  }
  t.same(decode(first.payload), { id: 1, extents: [[16384, 0]] }, 'base:allocation: all data')
  t.same(
    decode(second.payload),
    {
      id: 2,
      extents: [
        [4096, 0],
        [1024, 1],
        [11264, 0],
      ],
    },
    'geom-rowr:written',
  )
  r.socket.write(request(BLOCK_STATUS, 3, 0, 16384, 8))
  await r.chunk()
  t.same(decode((await r.chunk()).payload).extents, [[4096, 0]], 'REQ_ONE gives one extent')
})

t.test('hostile input ends that connection only', async t => {
  const { socket, logs } = await serve(t)
  const good = await connectGo(socket)
  const hostile: [string, (r: Reader) => void][] = [
    ['bad request magic', r => r.socket.write(Buffer.alloc(28, 0xff))],
    [
      'a disconnect half way through a write payload',
      r => {
        r.socket.write(Buffer.concat([request(WRITE, 1, 0, 65536), Buffer.alloc(1000)]))
        r.socket.destroy()
      },
    ],
  ]
  for (const [what, act] of hostile) {
    const { r } = await connectGo(socket)
    act(r)
    t.ok(await r.closed(), what)
  }
  const bad = await connect(socket)
  bad.socket.write(Buffer.concat([Buffer.from('IHAVEOPT'), bytes.u32(7), bytes.u32(1 << 20)]))
  t.ok(await bad.closed(), 'option data over the limit')
  const flags = await connect(socket, 0x80)
  t.ok(await flags.closed(), 'unknown client flags')
  const junk = await connect(socket)
  junk.socket.write(Buffer.alloc(16, 0x41))
  t.ok(await junk.closed(), 'bad option magic')
  good.r.socket.write(request(READ, 99, 0, 512))
  t.same(await good.r.simpleReply(), { error: 0, cookie: 99 }, 'the well-behaved connection is unharmed')
  await good.r.take(512)
  t.ok(
    logs.some(l => /bad request magic/.test(l)),
    'the reason is logged',
  )
})

t.test('a write over the maximum payload: an error reply, its payload skipped, the next request served', async t => {
  const { socket, engine } = await serve(t)
  const { r } = await connectGo(socket)
  const length = (32 << 20) + 4096
  r.socket.write(request(WRITE, 1, 0, length))
  // The payload arrives in pieces, then a request that must be read as one.
  const piece = Buffer.alloc(1 << 20, 0xee)
  for (let sent = 0; sent < length; sent += piece.length) {
    await new Promise<void>(resolve => r.socket.write(piece.subarray(0, Math.min(piece.length, length - sent)), () => resolve()))
  }
  r.socket.write(request(READ, 2, 0, 512))
  t.same(await r.simpleReply(), { error: EINVAL, cookie: 1 }, 'the over-long write is refused')
  t.same(await r.simpleReply(), { error: 0, cookie: 2 }, 'the next request is served on the same connection')
  t.notOk((await r.take(512)).equals(Buffer.alloc(512, 0xee)), 'nothing of the skipped payload was written')
  t.equal(engine.stats().writes, 0)
})

t.test('DISC sent while the server is paused at its limits: every reply, then the server closes', async t => {
  const { socket, server } = await serve(t)
  const { r } = await connectGo(socket)
  r.socket.pause()
  const burst: Buffer[] = []
  for (let i = 0; i < 128; i++) burst.push(request(READ, i + 1, 0, SIZE))
  burst.push(request(DISC, 999, 0, 0))
  r.socket.write(Buffer.concat(burst))
  // The client reads its replies a second late: the server is paused by then.
  await new Promise(resolve => setTimeout(resolve, 1000))
  r.socket.resume()
  for (let i = 0; i < 128; i++) {
    t.equal((await r.simpleReply()).error, 0)
    await r.take(SIZE)
  }
  t.ok(await r.closed(), 'the server hung up')
  t.ok(await waitUntil(() => server.connections === 0), 'the connection is gone')
})

t.test('an unknown export name with EXPORT_NAME closes; ABORT is acknowledged', async t => {
  const { socket } = await serve(t)
  const r = await connect(socket)
  r.socket.write(option(1, Buffer.from('nope')))
  t.ok(await r.closed())
  const a = await connect(socket)
  a.socket.write(option(2))
  t.equal((await a.optionReply()).type, 1)
  t.ok(await a.closed())
})

t.test('graceful close answers requests in flight first', async t => {
  const { socket, server, engine } = await serve(t)
  const { r } = await connectGo(socket)
  r.socket.write(request(READ, 1, 0, 65536))
  await waitUntil(() => engine.stats().reads === 1)
  const closing = server.close()
  const reply = await r.simpleReply()
  t.equal(reply.error, 0, 'the read in flight is answered')
  await r.take(65536)
  t.ok(await r.closed())
  await closing
  t.equal(server.connections, 0)
})

t.test('TCP listening and URIs; over-long socket paths are refused', async t => {
  const { engine } = await serve(t)
  const server = new NbdServer(engine, exportFor(engine, 'rowr0', 'tcp'), () => undefined)
  t.teardown(() => server.close())
  await t.rejects(server.listen({ socket: `/tmp/${'x'.repeat(120)}` }), { code: 'ESOCKETPATH', message: /over the 107-byte limit/ })
  t.equal(nbdUri({ socket: '/run/x.sock' }), 'nbd+unix:///?socket=/run/x.sock')
  t.equal(nbdUri({ port: 10809, host: '::1' }), 'nbd://[::1]:10809/')
  const listen = await server.listen({ port: 0, host: '127.0.0.1' })
  t.ok('port' in listen && listen.port > 0)
  t.equal(nbdUri(listen), `nbd://127.0.0.1:${'port' in listen ? listen.port : 0}/`)
})

t.test('a payload arriving in pieces, and replies the client is slow to take', async t => {
  const { socket, pattern } = await serve(t)
  const { r } = await connectGo(socket)
  const data = Buffer.alloc(300 * 1024)
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) % 253
  const message = Buffer.concat([request(WRITE, 1, 8192, data.length), data])
  for (let at = 0; at < message.length; at += 7001) {
    r.socket.write(message.subarray(at, at + 7001))
    await new Promise(resolve => setTimeout(resolve, 1))
  }
  t.same(await r.simpleReply(), { error: 0, cookie: 1 }, 'a 300 KiB payload sent in 44 pieces')
  const expected = Buffer.from(pattern)
  data.copy(expected, 8192)
  // 8 MiB of replies the client does not read: the server stops reading too.
  r.socket.pause()
  for (let i = 0; i < 8; i++) r.socket.write(request(READ, 10 + i, 0, SIZE))
  r.socket.write(Buffer.concat([request(WRITE, 20, 0, 4096), Buffer.alloc(4096, 0xee)]))
  await new Promise(resolve => setTimeout(resolve, 200))
  r.socket.resume()
  // Replies may come in any order.
  const answered: number[] = []
  for (let i = 0; i < 8; i++) {
    const reply = await r.simpleReply()
    t.equal(reply.error, 0)
    answered.push(reply.cookie)
    t.ok((await r.take(SIZE)).equals(expected), `read ${reply.cookie}: the whole export, with the write`)
  }
  t.same(
    answered.sort((a, b) => a - b),
    [10, 11, 12, 13, 14, 15, 16, 17],
  )
  t.same(await r.simpleReply(), { error: 0, cookie: 20 }, 'the write sent behind them is served once they drained')
  r.socket.write(request(READ, 21, 0, 4096))
  await r.simpleReply()
  t.same(await r.take(4096), Buffer.alloc(4096, 0xee))
})
