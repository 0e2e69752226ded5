// A bounded hostile-input run against `geom-rowr serve` in its own process:
// several connections at once send random, truncated and mutated handshakes
// and request streams (some stop reading, some vanish mid-payload) while one
// well-behaved connection writes and verifies data. The daemon must not
// crash, the good connection must never wait more than 5 s for a reply, the
// daemon's file descriptors come back to their starting count once the
// hostile connections are gone, and RO is never changed.
//
// GEOM_ROWR_HOSTILE_SECONDS sets the length (default 20 s; keep it <= 60 in CI).
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import t from 'tap'
import { makeImage, sha256, shortDir, sleep, startServe, waitUntil } from './fixtures/helpers.js'
import { prng } from './fixtures/prng.js'
import { IHAVEOPT, option, request } from './fixtures/nbd-client.js'
import { Cmd, PipelinedClient } from './fixtures/pipelined-client.js'

const SECONDS = Number(process.env.GEOM_ROWR_HOSTILE_SECONDS ?? 20)
const HOSTILE_WORKERS = 6
const SIZE = 16 << 20
/** Hostile writes stay in the first half; the good connection owns the second. */
const GOOD_AT = SIZE / 2
const GOOD_BLOCK = 4096
const REPLY_BOUND_MS = 5000

type Rand = () => number
const int = (rand: Rand, n: number): number => Math.floor(rand() * n)
const randomBytes = (rand: Rand, n: number): Buffer => {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = int(rand, 256)
  return b
}
const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(v >>> 0)
  return b
}

/** Options a client might send, valid or not: any code, any length, any data. */
const hostileOption = (rand: Rand): Buffer => {
  const pick = rand()
  if (pick < 0.3) return option(int(rand, 12), randomBytes(rand, int(rand, 64)))
  if (pick < 0.45) {
    // A length that promises more than is sent, or more than the limit.
    const claimed = rand() < 0.5 ? int(rand, 1 << 20) : 0xffffffff
    return Buffer.concat([IHAVEOPT, u32(int(rand, 0x10000)), u32(claimed), randomBytes(rand, int(rand, 128))])
  }
  if (pick < 0.6) return Buffer.concat([randomBytes(rand, 8), u32(int(rand, 12)), u32(0)])
  // GO / INFO with random names and information requests.
  const name = randomBytes(rand, int(rand, 20))
  const infos = Array.from({ length: int(rand, 6) }, () => int(rand, 8))
  const data = Buffer.alloc(4 + name.length + 2 + infos.length * 2)
  data.writeUInt32BE(rand() < 0.8 ? name.length : int(rand, 1 << 16), 0)
  name.copy(data, 4)
  data.writeUInt16BE(infos.length, 4 + name.length)
  for (const [i, info] of infos.entries()) data.writeUInt16BE(info, 6 + name.length + 2 * i)
  return option(rand() < 0.5 ? 7 : 6, data)
}

/** Requests, mostly framed right, with every field at times wrong. */
const hostileRequest = (rand: Rand): Buffer => {
  const type = rand() < 0.85 ? [0, 1, 2, 3, 4, 5, 6, 7][int(rand, 8)]! : int(rand, 0x10000)
  const flags = rand() < 0.7 ? int(rand, 4) : int(rand, 0x10000)
  const inRange = rand() < 0.7
  const length = inRange ? 1 + int(rand, 1 << 16) : rand() < 0.5 ? int(rand, 0x100000000) : 0
  const offset = inRange ? int(rand, Math.max(1, GOOD_AT - length)) : rand() < 0.5 ? SIZE + int(rand, 1 << 20) : 2 ** 53 - 1
  const header = request(type, int(rand, 2 ** 31), offset, length >>> 0, flags)
  if (rand() < 0.05) header.writeUInt32BE(int(rand, 0x100000000), 0)
  // A write's payload, whole, cut short, or missing; only in-range writes
  // carry one, so hostile data lands in the first half at most.
  if (type !== Cmd.WRITE) return header
  const sent = !inRange ? int(rand, 256) : rand() < 0.9 ? length : int(rand, length)
  return Buffer.concat([header, randomBytes(rand, Math.min(sent, 1 << 16))])
}

/** One hostile connection: some handshake, some stream, some way of leaving. */
const hostileConnection = async (socketPath: string, rand: Rand, live: Set<net.Socket>, stuck: string[]): Promise<void> => {
  const socket = net.connect(socketPath)
  live.add(socket)
  socket.on('error', () => {})
  const closed = new Promise<void>(resolve => socket.once('close', () => resolve()))
  await new Promise<void>(resolve => {
    socket.once('connect', () => resolve())
    socket.once('close', () => resolve())
  })
  if (rand() < 0.3) socket.pause()
  else socket.resume()
  const parts: Buffer[] = []
  const style = rand()
  if (style < 0.15) parts.push(randomBytes(rand, int(rand, 4096)))
  else {
    parts.push(u32(rand() < 0.8 ? 3 : int(rand, 0x100000000)))
    // The DISC burst (style > 0.9) needs a clean handshake: an option that
    // promises more data than follows would rightly keep the server waiting.
    const options = style > 0.9 ? 0 : int(rand, 4)
    for (let i = 0; i < options; i++) parts.push(hostileOption(rand))
    if (style < 0.35) {
      // A handshake cut anywhere.
      const all = Buffer.concat(parts)
      parts.length = 0
      parts.push(all.subarray(0, int(rand, all.length + 1)))
    } else {
      parts.push(option(7, Buffer.from([0, 0, 0, 0, 0, 0])))
      if (style > 0.9) {
        // Past the in-flight limit at once, then DISC, replies unread for a while.
        socket.pause()
        for (let i = 0; i < 130; i++) parts.push(request(Cmd.READ, i, int(rand, GOOD_AT - (1 << 20)), 1 << 20))
        parts.push(request(Cmd.DISC, 0, 0, 0))
      } else {
        const requests = int(rand, 200)
        for (let i = 0; i < requests; i++) parts.push(hostileRequest(rand))
      }
    }
  }
  const stream = Buffer.concat(parts)
  // Sent in random pieces at random pace.
  for (let at = 0; at < stream.length && !socket.destroyed; ) {
    const n = 1 + int(rand, 8192)
    socket.write(stream.subarray(at, at + n))
    at += n
    if (rand() < 0.1) await sleep(int(rand, 20))
  }
  const leave = rand()
  if (style > 0.9) {
    await sleep(1000)
    socket.resume()
    // The client reads everything and waits: the server must hang up.
    const hungUp = await Promise.race([closed.then(() => true), sleep(12_000).then(() => false)])
    if (!hungUp) stuck.push('a connection that sent DISC while paused was never closed')
  } else if (leave < 0.3) socket.destroy()
  else if (leave < 0.6) socket.end()
  else await sleep(int(rand, 300))
  socket.destroy()
  await closed
  live.delete(socket)
}

const fdCount = (pid: number): number => fs.readdirSync(`/proc/${pid}/fd`).length

t.test(`${SECONDS} s of hostile connections beside a good one`, async t => {
  const dir = shortDir(t)
  const ro = makeImage(path.join(dir, 'ro.img'), SIZE)
  const roHash = sha256(ro)
  const rw = makeImage(path.join(dir, 'rw.img'), SIZE, 'zero')
  const server = await startServe(t, path.join(dir, 'run'), [ro, rw])
  const socketPath = /socket=(.*)$/.exec(server.uri)![1]!
  const pid = server.child.pid!

  const good = await PipelinedClient.connect(socketPath)
  t.teardown(() => good.close())
  await sleep(300)
  const fdsBefore = fdCount(pid)

  const deadline = Date.now() + SECONDS * 1000
  const live = new Set<net.Socket>()
  let hostile = 0
  const stuck: string[] = []
  const workers = Array.from({ length: HOSTILE_WORKERS }, async (_, w) => {
    const rand = prng(0x5eed + w)
    while (Date.now() < deadline) {
      hostile++
      await hostileConnection(socketPath, rand, live, stuck)
    }
  })

  const rand = prng(0xc0ffee)
  const expected = new Map<number, Buffer>()
  let slowest = 0
  let verified = 0
  const failures: string[] = []
  const timed = async (what: string, p: Promise<{ error: number; data?: Buffer }>) => {
    const started = Date.now()
    let timer: NodeJS.Timeout | undefined
    const r = await Promise.race([p, new Promise<undefined>(resolve => (timer = setTimeout(() => resolve(undefined), REPLY_BOUND_MS)))])
    clearTimeout(timer)
    slowest = Math.max(slowest, Date.now() - started)
    if (!r) failures.push(`${what}: no reply within ${REPLY_BOUND_MS} ms`)
    else if (r.error !== 0) failures.push(`${what}: error ${r.error}`)
    return r
  }
  while (Date.now() < deadline && failures.length === 0) {
    const block = int(rand, (SIZE - GOOD_AT) / GOOD_BLOCK)
    const offset = GOOD_AT + block * GOOD_BLOCK
    if (rand() < 0.5 || !expected.size) {
      const data = randomBytes(rand, GOOD_BLOCK)
      await timed(`write ${offset}`, good.send(Cmd.WRITE, offset, GOOD_BLOCK, 0, data))
      expected.set(offset, data)
    } else {
      const offsets = [...expected.keys()]
      const at = offsets[int(rand, offsets.length)]!
      const r = await timed(`read ${at}`, good.send(Cmd.READ, at, GOOD_BLOCK))
      if (r?.data && !r.data.equals(expected.get(at)!)) failures.push(`read ${at}: wrong data`)
      verified++
    }
    await sleep(int(rand, 5))
  }
  await Promise.all(workers)
  for (const s of live) s.destroy()

  t.same(failures, [], `the good connection: ${verified} reads verified, slowest reply ${slowest} ms`)
  t.ok(hostile > 50, `${hostile} hostile connections were made`)
  t.same(stuck, [], 'every connection that sent DISC was closed by the server')
  t.equal(server.child.exitCode, null, 'the daemon is still running')
  t.ok(
    await waitUntil(() => fdCount(pid) === fdsBefore, 15_000),
    `the daemon's file descriptors are back to ${fdsBefore} (now ${fdCount(pid)})`,
  )
  const flush = await timed('flush', good.send(Cmd.FLUSH, 0, 0))
  t.equal(flush?.error, 0, 'the good connection still works')
  t.equal(sha256(ro), roHash, 'RO is unchanged')
  t.notMatch(server.stderr(), /TypeError|RangeError|AssertionError|uncaught/i, 'no internal error was logged')
})
