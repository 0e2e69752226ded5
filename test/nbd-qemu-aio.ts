// Pipelining through QEMU's own NBD client: qemu-io queues 1000 aio 1 MiB
// reads and 1000 aio 4 KiB writes interleaved on one connection, so large
// read replies back up while write payloads are half received. Every write
// must succeed, every read must see its pattern, and the device must end as
// the writes made it. (Before the stream decoder, a payload split by a pause
// took the next requests' bytes as its data.)
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { requires, run, shortDir, startServe } from './fixtures/helpers.js'

const SIZE = 64 << 20
/** Reads stay in the first half, which nobody writes: it reads as RO's pattern. */
const READ_SPAN = 32 << 20
const WRITES_AT = 32 << 20
const RO_PATTERN = 0x5a
const ROUNDS = Number(process.env.GEOM_ROWR_QEMU_AIO_ROUNDS ?? 1000)

t.test('qemu-io: 1000 aio 1 MiB reads and 1000 aio 4 KiB writes, none failed, every pattern right', async t => {
  if (!requires(t, { tools: ['qemu-io', 'qemu-img'] })) return
  const dir = shortDir(t)
  const ro = path.join(dir, 'ro.img')
  fs.writeFileSync(ro, Buffer.alloc(SIZE, RO_PATTERN))
  const rw = path.join(dir, 'rw.img')
  fs.writeFileSync(rw, '')
  fs.truncateSync(rw, SIZE)
  const server = await startServe(t, path.join(dir, 'run'), [ro, rw])

  const expected = Buffer.alloc(SIZE, RO_PATTERN)
  const commands: string[] = []
  for (let i = 0; i < ROUNDS; i++) {
    // Spread over the read half so the page cache does not make every read alike.
    const readAt = ((i * 7919) % (READ_SPAN >> 20)) << 20
    commands.push('-c', `aio_read -P ${RO_PATTERN} ${readAt} 1M`)
    // Each write its own 4 KiB with its own pattern (1..250), so a write
    // that took another's bytes cannot go unseen.
    const pattern = (i % 250) + 1
    const writeAt = WRITES_AT + i * 4096
    commands.push('-c', `aio_write -P ${pattern} ${writeAt} 4k`)
    expected.fill(pattern, writeAt, writeAt + 4096)
  }
  commands.push('-c', 'aio_flush')

  const io = await run('qemu-io', ['-f', 'raw', server.uri, ...commands])
  const output = io.stdout + io.stderr
  const failed = output.split('\n').filter(l => /failed/i.test(l))
  const mismatches = failed.filter(l => /Pattern verification/i.test(l))
  t.equal(io.code, 0, 'qemu-io exits 0')
  t.equal(failed.length - mismatches.length, 0, `no failed requests${failed.length ? `: ${failed.slice(0, 3).join('; ')}` : ''}`)
  t.equal(mismatches.length, 0, 'no pattern mismatches')
  const done = output.split('\n').filter(l => /^(read|wrote) \d+\/\d+ bytes/.test(l)).length
  t.equal(done, 2 * ROUNDS, 'qemu-io reports every request completed')

  const want = path.join(dir, 'expected.img')
  fs.writeFileSync(want, expected)
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', want, server.uri])
  t.equal(compare.code, 0, `the device is what the writes made it: ${compare.stdout}${compare.stderr}`)
  t.notOk(/bad request magic|protocol error/i.test(server.stderr()), 'the server saw no framing error')
})
