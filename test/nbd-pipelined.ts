// Integrity under pipelining, through `geom-rowr serve` in its own process:
// one connection keeps hundreds of mixed requests in flight over
// overlapping ranges while the client now and then stops reading replies,
// so the server hits both its in-flight limit and its reply backpressure
// with payloads half received. Every reply is checked against a model of
// what an NBD server may answer, and the final image against the model.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { makeImage, shortDir, startServe } from './fixtures/helpers.js'
import { prng } from './fixtures/prng.js'
import { BLOCK, Cmd, Flag, IntegrityModel, PipelinedClient } from './fixtures/pipelined-client.js'

const SIZE = 8 << 20
const BLOCKS = SIZE / BLOCK
const OPS = Number(process.env.GEOM_ROWR_PIPELINED_OPS ?? 2500)
const IN_FLIGHT = 300

const where = (uri: string): string | { host: string; port: number } => {
  const unix = /socket=(.*)$/.exec(uri)
  if (unix) return unix[1]!
  const tcp = /^nbd:\/\/([^:/]+):(\d+)/.exec(uri)!
  return { host: tcp[1]!, port: Number(tcp[2]) }
}

const storm = async (t: Test, transport: 'unix' | 'tcp', sectorSize: number, seed: number) => {
  const dir = shortDir(t)
  const ro = path.join(dir, 'ro.img')
  fs.writeFileSync(ro, IntegrityModel.base(BLOCKS))
  const rw = makeImage(path.join(dir, 'rw.img'), SIZE, 'zero')
  const listen = transport === 'tcp' ? ['--port', '0'] : []
  const server = await startServe(t, path.join(dir, 'run'), ['--sector-size', String(sectorSize), ...listen, ro, rw])
  const client = await PipelinedClient.connect(where(server.uri))
  t.teardown(() => client.close())
  t.equal(client.size, SIZE)

  const rand = prng(seed)
  const model = new IntegrityModel(BLOCKS)
  const failures: string[] = []
  /** Log-uniform block counts from 1 to 2048 (512 B to 1 MiB). */
  const blocks = (): number => Math.min(2048, Math.floor(2 ** (rand() * 11.01)))
  /** Half the requests fall in the first megabyte, so they overlap. */
  const start = (count: number): number => {
    const span = rand() < 0.5 ? Math.min(BLOCKS, 2048) : BLOCKS
    return Math.floor(rand() * Math.max(1, span - count))
  }
  let reads = 0
  let mostUnsent = 0
  const inFlight = new Set<Promise<void>>()
  for (let op = 0; op < OPS; op++) {
    while (client.inFlight >= IN_FLIGHT) await Promise.race(inFlight)
    if (op % 250 === 125) void client.holdReplies(50 + rand() * 200)
    const pick = rand()
    const count = blocks()
    const first = start(count)
    let done: Promise<void>
    if (pick < 0.38) {
      reads++
      const sent = model.sendRead(first, count)
      done = client.send(Cmd.READ, first * BLOCK, count * BLOCK).then(r => {
        if (r.error !== 0) failures.push(`read ${first}+${count}: error ${r.error}`)
        else {
          const wrong = model.checkRead(first, r.data!, sent)
          if (wrong) failures.push(`read ${first}+${count}: ${wrong}`)
        }
      })
    } else if (pick < 0.95) {
      const kind = pick < 0.78 ? 'write' : pick < 0.86 ? 'zero' : 'trim'
      const flags = (rand() < 0.15 ? Flag.FUA : 0) | (kind === 'zero' && rand() < 0.5 ? Flag.NO_HOLE : 0)
      const { id, payload } = model.sendWrite(first, count, kind !== 'write')
      const type = kind === 'write' ? Cmd.WRITE : kind === 'zero' ? Cmd.WRITE_ZEROES : Cmd.TRIM
      done = client.send(type, first * BLOCK, count * BLOCK, flags, payload).then(r => {
        if (r.error !== 0) failures.push(`${kind} ${first}+${count}: error ${r.error}`)
        model.answeredWrite(id, first, count)
      })
    } else {
      done = client.send(Cmd.FLUSH, 0, 0).then(r => {
        if (r.error !== 0) failures.push(`flush: error ${r.error}`)
      })
    }
    mostUnsent = Math.max(mostUnsent, client.unsent)
    const tracked: Promise<void> = done.finally(() => inFlight.delete(tracked))
    inFlight.add(tracked)
    if (failures.length > 5) break
  }
  await Promise.all(inFlight)
  t.same(failures, [], 'every request answered as an NBD server may')
  t.ok(reads > 0 && mostUnsent > 1 << 20, `the server stopped reading at times (${mostUnsent} bytes waited to be sent)`)

  t.equal((await client.send(Cmd.FLUSH, 0, 0)).error, 0)
  const image = Buffer.alloc(SIZE)
  for (let at = 0; at < SIZE; at += 1 << 20) {
    const r = await client.send(Cmd.READ, at, 1 << 20)
    t.equal(r.error, 0)
    r.data!.copy(image, at)
  }
  const final = model.checkFinal(image)
  t.equal(final.wrong, undefined, `the device equals the model (${final.ambiguous} blocks hold one of concurrent writes)`)
  t.match(server.stderr(), /^(?![\s\S]*(closing connection|bad request magic))/, 'the server logged no protocol error')
}

for (const transport of ['unix', 'tcp'] as const) {
  for (const sectorSize of [512, 4096]) {
    t.test(`${OPS} pipelined requests, ${IN_FLIGHT} in flight, over ${transport}, ${sectorSize}-byte sectors`, t =>
      storm(t, transport, sectorSize, sectorSize + (transport === 'tcp' ? 1 : 0)),
    )
  }
}
