// Crashes: a client writes and flushes through NBD while the daemon is
// killed with SIGKILL at random moments; a new daemon resumes from the map.
// Every write acknowledged before the last completed FLUSH reads back,
// nothing else changed, and RO is untouched. 100 rounds on the same files.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { Cmd, connectGo, request, type Reader } from './fixtures/nbd-client.js'
import { makeImage, sha256, shortDir, startServe, sleep } from './fixtures/helpers.js'

const BLOCK = 4096
const BLOCKS = 512
const ROUNDS = Number(process.env.GEOM_ROWR_CRASH_ROUNDS ?? 100)

/** Block b as write number `tag` leaves it. */
const content = (b: number, tag: number): Buffer => {
  const buf = Buffer.alloc(BLOCK, tag & 0xff)
  buf.writeUInt32LE(tag, 0)
  buf.writeUInt32LE(b, 4)
  return buf
}

interface Pending {
  readonly cmd: number
  readonly block: number
  readonly tag: number
  readonly sentAt: number
}

t.test(`${ROUNDS} SIGKILLs while writing and flushing: every flushed write survives`, async t => {
  const dir = shortDir(t)
  const runDir = path.join(dir, 'run')
  const ro = makeImage(path.join(dir, 'ro.img'), BLOCK * BLOCKS)
  const roBytes = fs.readFileSync(ro)
  const roHash = sha256(ro)
  const rw = makeImage(path.join(dir, 'rw.img'), BLOCK * BLOCKS, 'zero')
  const mapFile = path.join(dir, 'rw.map')
  const socket = path.join(dir, 'nbd.sock')

  /** What each block must read: its durable value, or one written since. */
  const durable = new Map<number, number>()
  const since = new Map<number, Set<number>>()
  let tag = 0
  let failures = 0
  /** Checks of a block whose last flushed value was a write (not RO). */
  let flushedChecks = 0
  const random = (n: number): number => Math.floor(Math.random() * n)

  for (let round = 0; round < ROUNDS && failures === 0; round++) {
    const serve = await startServe(t, runDir, ['--name', 'crash', '--socket', socket, '--map', mapFile, ro, rw])
    const { r } = await connectGo(socket)

    // Check the resumed device against the model, then make what it shows durable.
    const check = await readAll(r)
    for (let b = 0; b < BLOCKS; b++) {
      const got = check[b]!
      const allowed = new Set([durable.get(b) ?? -1, ...(since.get(b) ?? [])])
      if ((durable.get(b) ?? -1) >= 0) flushedChecks++
      const value = got.equals(roBytes.subarray(b * BLOCK, (b + 1) * BLOCK)) ? -1 : got.readUInt32LE(4) === b ? got.readUInt32LE(0) : -2
      if (value === -2 || !allowed.has(value) || (value >= 0 && !got.equals(content(b, value)))) {
        failures++
        t.fail(
          `round ${round}: block ${b} reads ${value === -1 ? 'RO' : value === -2 ? 'garbage' : `write ${value}`}, allowed ${[...allowed].join('/')}`,
        )
      }
      if (value !== -2) durable.set(b, value)
      since.delete(b)
    }
    await flush(r)

    // Write and flush until killed. Events are numbered in the order this
    // process sees them: a flush covers the writes acknowledged before it was sent.
    let event = 0
    let cookie = 0
    const pending = new Map<number, Pending>()
    const writes = new Map<number, { block: number; tag: number; ackedAt: number }>()
    const promote = (c: number): void => {
      const w = writes.get(c)!
      writes.delete(c)
      durable.set(w.block, w.tag)
      // Earlier writes to the block can no longer show; later ones still may.
      since.set(w.block, new Set([...(since.get(w.block) ?? [])].filter(x => x > w.tag)))
    }
    const replies = (async () => {
      try {
        for (;;) {
          const reply = await r.simpleReply()
          const p = pending.get(reply.cookie)!
          pending.delete(reply.cookie)
          if (reply.error !== 0) throw new Error(`request failed: ${reply.error}`)
          const at = ++event
          if (p.cmd === Cmd.WRITE) writes.get(reply.cookie)!.ackedAt = at
          else for (const [c, w] of writes) if (w.ackedAt >= 0 && w.ackedAt < p.sentAt) promote(c)
        }
      } catch {
        // the daemon is gone
      }
    })()
    const killAfter = 5 + random(60)
    const started = Date.now()
    while (Date.now() - started < killAfter) {
      for (let i = 0; i < 8; i++) {
        const c = ++cookie
        const b = random(BLOCKS)
        const v = ++tag
        pending.set(c, { cmd: Cmd.WRITE, block: b, tag: v, sentAt: ++event })
        writes.set(c, { block: b, tag: v, ackedAt: -1 })
        if (!since.has(b)) since.set(b, new Set())
        since.get(b)!.add(v)
        r.socket.write(Buffer.concat([request(Cmd.WRITE, c, b * BLOCK, BLOCK), content(b, v)]))
      }
      if (random(3) === 0) {
        const c = ++cookie
        pending.set(c, { cmd: Cmd.FLUSH, block: -1, tag: -1, sentAt: ++event })
        r.socket.write(request(Cmd.FLUSH, c, 0, 0))
      }
      await sleep(1)
    }
    serve.child.kill('SIGKILL')
    await new Promise(resolve => serve.child.once('exit', resolve))
    r.socket.destroy()
    await replies
  }
  t.equal(failures, 0, 'every round resumed with the flushed writes')
  t.ok(flushedChecks > ROUNDS, `flushed writes were there to check (${flushedChecks} block checks)`)
  t.equal(sha256(ro), roHash, 'RO is unchanged')
})

const readAll = async (r: Reader): Promise<Buffer[]> => {
  const out: Buffer[] = []
  for (let b = 0; b < BLOCKS; b += 64) {
    r.socket.write(request(Cmd.READ, b, b * BLOCK, 64 * BLOCK))
    const reply = await r.simpleReply()
    if (reply.error !== 0) throw new Error(`read failed: ${reply.error}`)
    const data = await r.take(64 * BLOCK)
    for (let i = 0; i < 64; i++) out.push(Buffer.from(data.subarray(i * BLOCK, (i + 1) * BLOCK)))
  }
  return out
}

const flush = async (r: Reader): Promise<void> => {
  r.socket.write(request(Cmd.FLUSH, 0, 0, 0))
  const reply = await r.simpleReply()
  if (reply.error !== 0) throw new Error(`flush failed: ${reply.error}`)
}
