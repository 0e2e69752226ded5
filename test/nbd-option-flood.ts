// Negotiation has backpressure: a client that floods NBD_OPT_LIST and reads
// no reply must not make the daemon queue replies without limit. The daemon
// (`geom-rowr serve`, its own process) is measured twice, each time fresh:
// under 64 MiB of options whose replies are read, and under the same 64 MiB
// unread. Neither may pile replies up in the daemon, the unread flood may
// cost at most a fixed amount more, and the daemon keeps serving another
// client meanwhile.
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import t, { type Test } from 'tap'
import { Cmd, connectGo, option, request } from './fixtures/nbd-client.js'
import { makeImage, shortDir, sleep, startServe, waitUntil } from './fixtures/helpers.js'

const FLOOD_BYTES = 64 << 20
const NBD_OPT_LIST = 3
const NBD_OPT_ABORT = 2
/** V8's young generation alone may take this much more at any moment. */
const ALLOWED_EXTRA = 16 << 20

const memory = (pid: number): { rss: number; peak: number } => {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)![1]) * 1024
  return { rss: kb('VmRSS'), peak: kb('VmHWM') }
}

/** 64 MiB of LIST options, and an ABORT to end them. */
const floodBytes = (): Buffer => {
  const one = option(NBD_OPT_LIST)
  const flood = Buffer.alloc(Math.floor(FLOOD_BYTES / one.length) * one.length)
  for (let at = 0; at < flood.length; at += one.length) one.copy(flood, at)
  return Buffer.concat([flood, option(NBD_OPT_ABORT)])
}

/** A raw socket past the greeting, client flags sent. */
const handshake = async (socketPath: string): Promise<net.Socket> => {
  const socket = net.connect(socketPath)
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject)
    let greeting = 0
    const onData = (chunk: Buffer): void => {
      greeting += chunk.length
      if (greeting < 18) return
      socket.off('data', onData)
      socket.pause()
      resolve()
    }
    socket.on('data', onData)
  })
  socket.write(Buffer.from([0, 0, 0, 3]))
  return socket
}

const daemon = async (t: Test) => {
  const dir = shortDir(t)
  const ro = makeImage(path.join(dir, 'ro.img'), 1 << 20)
  const rw = makeImage(path.join(dir, 'rw.img'), 1 << 20, 'zero')
  const server = await startServe(t, path.join(dir, 'run'), [ro, rw])
  const socketPath = /socket=(.*)$/.exec(server.uri)![1]!
  // Let start-up garbage settle before the baseline is taken.
  await sleep(500)
  return { socketPath, pid: server.child.pid!, before: memory(server.child.pid!).rss }
}

/** A second client, meanwhile: its read must be answered promptly. */
const servesOthers = async (t: Test, socketPath: string): Promise<void> => {
  const { r } = await connectGo(socketPath)
  const started = Date.now()
  r.socket.write(request(Cmd.READ, 1, 0, 4096))
  t.equal((await r.simpleReply()).error, 0, 'another client is served during the flood')
  await r.take(4096)
  t.ok(Date.now() - started < 5000, 'and promptly')
  r.socket.destroy()
}

t.test('64 MiB of unread NBD_OPT_LIST costs the daemon no more than 64 MiB of read replies', async t => {
  const flood = floodBytes()

  const read = await daemon(t)
  const reader = await handshake(read.socketPath)
  let replyBytes = 0
  reader.on('data', (c: Buffer) => (replyBytes += c.length))
  reader.resume()
  const readDone = new Promise<void>(resolve => reader.once('close', () => resolve()))
  reader.end(flood)
  await readDone
  const readGrowth = memory(read.pid).peak - read.before
  t.ok(replyBytes > flood.length, `the read flood was answered (${replyBytes} bytes of replies)`)
  // Replies are produced faster than a client takes them; they must wait in
  // the socket, not pile up in the daemon.
  t.ok(readGrowth < FLOOD_BYTES, `read replies did not pile up: the daemon grew by ${(readGrowth / 2 ** 20).toFixed(1)} MiB`)

  const unread = await daemon(t)
  const flooder = await handshake(unread.socketPath)
  flooder.on('error', () => {})
  // In pieces, so what is still unsent tells how much the daemon took.
  for (let at = 0; at < flood.length; at += 64 << 10) flooder.write(flood.subarray(at, at + (64 << 10)))
  // The daemon takes options until its replies back up, then stops reading;
  // give it time to take all it will.
  let last = -1
  await waitUntil(() => {
    const now = flooder.writableLength
    const still = now === last
    last = now
    return still
  }, 10_000)
  await sleep(1000)
  t.ok(
    flooder.writableLength > 0,
    `the daemon stopped reading (${flood.length - flooder.writableLength} bytes taken, ${flooder.writableLength} not)`,
  )
  await servesOthers(t, unread.socketPath)
  const unreadGrowth = memory(unread.pid).peak - unread.before
  t.ok(
    unreadGrowth < readGrowth + ALLOWED_EXTRA,
    `unread flood grew the daemon by ${(unreadGrowth / 2 ** 20).toFixed(1)} MiB, read flood by ${(readGrowth / 2 ** 20).toFixed(1)} MiB`,
  )
  flooder.destroy()
})
