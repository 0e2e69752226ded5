// The NBD stream decoder, property-based: random client streams cut at
// random points, with the reader pausing (taking no messages) at random
// points of every state and reading into a target chosen before the stream
// moved on, as Node's onread does, must give exactly the messages the
// stream was made of.
import { createHash } from 'node:crypto'
import t from 'tap'
import { NbdStreamDecoder, type DecodedMessage } from '../lib/nbd/stream-decoder.js'
import { bytes, Cmd, option, request } from './fixtures/nbd-client.js'
import { prng as seededRandom } from './fixtures/prng.js'

const MAX_PAYLOAD = 64 * 1024
const MAX_OPTION = 4096
const OPT_GO = 7
const NO_HOLE = 1 << 1
const FUA = 1 << 0

/** Seeded, so a failure names the stream that caused it. */
const prng = (seed: number) => {
  const next = seededRandom(seed)
  return { next, int: (lo: number, hi: number): number => lo + Math.floor(next() * (hi - lo + 1)) }
}

const digest = (b: Buffer): string => createHash('sha1').update(b).digest('hex')

/** A message as compared: payloads by digest. */
type Expected =
  | { kind: 'client-flags'; flags: number }
  | { kind: 'option'; code: number; data: string }
  | { kind: 'request'; type: number; flags: number; cookie: number; offset: number; length: number; payload?: string }
  | { kind: 'oversized-write'; cookie: number; length: number }
  | { kind: 'malformed' }

const comparable = (m: DecodedMessage): Expected => {
  switch (m.kind) {
    case 'client-flags':
      return m
    case 'option':
      return { kind: 'option', code: m.code, data: digest(m.data) }
    case 'request': {
      const { type, flags, cookie, offset, length } = m.request
      const out: Expected = { kind: 'request', type, flags, cookie: cookie.lo, offset, length }
      if (m.payload) out.payload = digest(m.payload)
      return out
    }
    case 'oversized-write':
      return { kind: 'oversized-write', cookie: m.request.cookie.lo, length: m.request.length }
    case 'malformed':
      return { kind: 'malformed' }
  }
}

/** A random client stream (built with the test client's encoders) and the messages it holds. */
const makeStream = (rand: ReturnType<typeof prng>) => {
  const parts: Buffer[] = []
  const expected: Expected[] = []
  const flags = rand.int(0, 3)
  parts.push(bytes.u32(flags))
  expected.push({ kind: 'client-flags', flags })
  for (let n = rand.int(0, 4); n > 0; n--) {
    const code = rand.int(1, 12)
    const data = Buffer.alloc(rand.int(0, 300), rand.int(0, 255))
    if (code === OPT_GO) continue
    parts.push(option(code, data))
    expected.push({ kind: 'option', code, data: digest(data) })
  }
  const go = Buffer.alloc(6)
  parts.push(option(OPT_GO, go))
  expected.push({ kind: 'option', code: OPT_GO, data: digest(go) })
  const count = rand.int(1, 40)
  const badAt = rand.next() < 0.25 ? rand.int(0, count - 1) : -1
  for (let i = 0; i < count; i++) {
    if (i === badAt) {
      const junk = Buffer.alloc(28, rand.int(0, 255))
      junk.writeUInt32BE((0x25609513 ^ (1 << rand.int(0, 31))) >>> 0, 0)
      parts.push(junk, Buffer.alloc(rand.int(0, 100), 7))
      expected.push({ kind: 'malformed' })
      break
    }
    const cookie = i + 1
    const offset = rand.int(0, 1 << 20)
    const pick = rand.next()
    if (pick < 0.35) {
      const length = rand.next() < 0.1 ? MAX_PAYLOAD : rand.next() < 0.3 ? rand.int(1, 16) : rand.int(1, MAX_PAYLOAD)
      const payload = Buffer.alloc(length)
      for (let k = 0; k < length; k += 997) payload[k] = rand.int(0, 255)
      const f = rand.next() < 0.3 ? FUA : 0
      parts.push(request(Cmd.WRITE, cookie, offset, length, f), payload)
      expected.push({ kind: 'request', type: Cmd.WRITE, flags: f, cookie, offset, length, payload: digest(payload) })
    } else if (pick < 0.42) {
      const length = rand.int(MAX_PAYLOAD + 1, 3 * MAX_PAYLOAD)
      parts.push(request(Cmd.WRITE, cookie, offset, length), Buffer.alloc(length, 0x5a))
      expected.push({ kind: 'oversized-write', cookie, length })
    } else {
      const [type, f] = (
        [
          [Cmd.READ, 0],
          [Cmd.WRITE_ZEROES, 0],
          [Cmd.WRITE_ZEROES, NO_HOLE],
          [Cmd.WRITE_ZEROES, NO_HOLE | FUA],
          [Cmd.TRIM, 0],
          [Cmd.FLUSH, 0],
          [Cmd.BLOCK_STATUS, 0],
          [Cmd.CACHE, 0],
        ] as const
      )[rand.int(0, 7)]!
      const length = type === Cmd.FLUSH ? 0 : rand.int(1, 1 << 22)
      parts.push(request(type, cookie, offset, length, f))
      expected.push({ kind: 'request', type, flags: f, cookie, offset, length })
    }
  }
  return { stream: Buffer.concat(parts), expected }
}

/**
 * Feeds `stream` the way the connection does, with every choice random:
 * how much each read brings, whether the target was chosen before or after
 * the messages were taken, and how many messages are taken between reads
 * (none: paused).
 */
const decodeRandomly = (stream: Buffer, rand: ReturnType<typeof prng>): Expected[] => {
  const out: Expected[] = []
  const decoder = new NbdStreamDecoder({ maxOptionLength: MAX_OPTION, maxPayload: MAX_PAYLOAD }, n => Buffer.alloc(n))
  const take = (limit: number): void => {
    for (let i = 0; i < limit; i++) {
      const m = decoder.next()
      if (!m) return
      out.push(comparable(m))
      if (m.kind === 'option' && m.code === OPT_GO) decoder.startTransmission()
    }
  }
  const chooseTarget = (): Buffer => decoder.payloadSpace ?? Buffer.alloc(rand.int(1, 70_000))
  let target = chooseTarget()
  let pos = 0
  while (pos < stream.length) {
    const n = Math.min(target.length, stream.length - pos, rand.next() < 0.3 ? rand.int(1, 30) : target.length)
    stream.copy(target, 0, pos, pos + n)
    decoder.push(target.subarray(0, n))
    pos += n
    const pauseHere = rand.next() < 0.4
    // Node asks for the next target right after the read's callback, which
    // may or may not have taken messages first.
    if (rand.next() < 0.5) {
      take(pauseHere ? 0 : rand.int(1, 5))
      target = chooseTarget()
    } else {
      target = chooseTarget()
      take(pauseHere ? 0 : rand.int(1, 5))
    }
  }
  take(Infinity)
  return out
}

t.test('random streams, cut and paused at random points, give exactly their messages', async t => {
  const streams = Number(process.env.GEOM_ROWR_DECODER_STREAMS ?? 400)
  let failures = 0
  for (let seed = 1; seed <= streams && failures < 3; seed++) {
    const rand = prng(seed)
    const { stream, expected } = makeStream(rand)
    const whole = new NbdStreamDecoder({ maxOptionLength: MAX_OPTION, maxPayload: MAX_PAYLOAD }, n => Buffer.alloc(n))
    whole.push(Buffer.from(stream))
    const atOnce: Expected[] = []
    for (let m = whole.next(); m; m = whole.next()) {
      atOnce.push(comparable(m))
      if (m.kind === 'option' && m.code === OPT_GO) whole.startTransmission()
    }
    const pieces = decodeRandomly(stream, rand)
    const ok = t.same(atOnce, expected, `seed ${seed}: the whole stream at once`) && t.same(pieces, expected, `seed ${seed}: in pieces`)
    if (!ok) failures++
  }
})

/** A decoder past client flags and NBD_OPT_GO. */
const inTransmission = (): NbdStreamDecoder => {
  const decoder = new NbdStreamDecoder({ maxOptionLength: MAX_OPTION, maxPayload: MAX_PAYLOAD }, n => Buffer.alloc(n))
  decoder.push(Buffer.concat([bytes.u32(3), option(OPT_GO, Buffer.alloc(6))]))
  decoder.next()
  decoder.next()
  decoder.startTransmission()
  return decoder
}

t.test('a payload is read in place when the bytes land where the decoder asked', async t => {
  const decoder = inTransmission()
  decoder.push(Buffer.concat([request(Cmd.WRITE, 1, 0, 4096), Buffer.alloc(100, 1)]))
  t.equal(decoder.next(), undefined, 'the payload is not all here')
  const space = decoder.payloadSpace!
  t.equal(space.length, 4096 - 100)
  space.fill(2)
  decoder.push(space)
  const m = decoder.next()
  t.equal(m?.kind, 'request')
  const payload = (m as { payload: Buffer }).payload
  t.equal(payload.buffer, space.buffer, 'the payload is the buffer the bytes were read into')
  t.same(payload, Buffer.concat([Buffer.alloc(100, 1), Buffer.alloc(3996, 2)]))
})

t.test('an over-long write is skipped as it arrives, never buffered', async t => {
  const decoder = inTransmission()
  const length = 64 * MAX_PAYLOAD
  decoder.push(request(Cmd.WRITE, 1, 0, length))
  t.equal(decoder.next()?.kind, 'oversized-write')
  const piece = Buffer.alloc(MAX_PAYLOAD / 2, 9)
  let most = 0
  for (let sent = 0; sent < length; sent += piece.length) {
    decoder.push(piece)
    most = Math.max(most, decoder.buffered)
    t.equal(decoder.next(), undefined)
  }
  t.equal(most, 0, 'nothing of the payload is kept')
  decoder.push(request(Cmd.FLUSH, 2, 0, 0))
  const m = decoder.next()
  t.match(m, { kind: 'request', request: { type: Cmd.FLUSH, cookie: { lo: 2 } } }, 'the next request follows')
})
