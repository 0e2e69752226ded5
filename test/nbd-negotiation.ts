import t from 'tap'
import { Negotiation } from '../lib/nbd/negotiation.js'
import { greeting } from '../lib/nbd/replies.js'
import { bytes, metaQuery, nameAndInfos, OPTION_REPLY_MAGIC, Rep } from './fixtures/nbd-client.js'

const exp = {
  name: 'rowr0',
  description: 'a test export',
  size: 1 << 20,
  minimumBlock: 512,
  preferredBlock: 4096,
  maximumPayload: 32 << 20,
}

/** Splits a server reply into its fields, checking the magic. */
const parse = (b: Buffer) => {
  if (!b.subarray(0, 8).equals(OPTION_REPLY_MAGIC)) throw new Error('bad magic')
  const length = b.readUInt32BE(16)
  if (b.length !== 20 + length) throw new Error('length field disagrees with the reply')
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), data: b.subarray(20) }
}

const { ACK, SERVER, INFO, META_CONTEXT, ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_UNKNOWN } = Rep

t.test('the greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES', async t => {
  t.same(greeting(), Buffer.concat([Buffer.from('NBDMAGIC'), Buffer.from('IHAVEOPT'), bytes.u16(3)]))
})

t.test('client flags: known ones accepted, unknown ones end the session', async t => {
  const n = new Negotiation(exp)
  t.equal(n.clientFlags(1), true)
  t.equal(n.noZeroes, false)
  t.equal(n.clientFlags(3), true)
  t.equal(n.noZeroes, true)
  t.equal(n.clientFlags(4), false)
})

t.test('EXPORT_NAME: size, flags and the 124 zeros unless NO_ZEROES', async t => {
  const n = new Negotiation(exp)
  n.clientFlags(1)
  const out = n.option(1, Buffer.from('rowr0'))
  t.equal(out.next, 'transmission')
  t.equal(out.replies[0]!.length, 8 + 2 + 124)
  t.equal(Number(out.replies[0]!.readBigUInt64BE(0)), 1 << 20)
  t.equal(
    out.replies[0]!.readUInt16BE(8),
    (1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 10),
    'HAS_FLAGS SEND_FLUSH SEND_FUA SEND_TRIM SEND_WRITE_ZEROES CAN_MULTI_CONN SEND_CACHE, no DF',
  )
  t.ok(out.replies[0]!.subarray(10).equals(Buffer.alloc(124)))
  const m = new Negotiation(exp)
  m.clientFlags(3)
  t.equal(m.option(1, Buffer.alloc(0)).replies[0]!.length, 10, 'the empty name is the default export')
  t.same(new Negotiation(exp).option(1, Buffer.from('other')), { replies: [], next: 'close' }, 'an unknown name closes')
})

t.test('LIST names the export; with data it is invalid', async t => {
  const n = new Negotiation(exp)
  const out = n.option(3, Buffer.alloc(0))
  t.equal(out.replies.length, 2)
  const server = parse(out.replies[0]!)
  t.equal(server.type, SERVER)
  t.equal(server.data.readUInt32BE(0), 5)
  t.equal(server.data.subarray(4).toString(), 'rowr0')
  t.equal(parse(out.replies[1]!).type, ACK)
  t.equal(parse(n.option(3, Buffer.from('x')).replies[0]!).type, ERR_INVALID)
})

t.test('INFO and GO: export info, requested block sizes, name and description', async t => {
  const n = new Negotiation(exp)
  const info = n.option(6, nameAndInfos('rowr0', [3, 1, 2, 3, 99]))
  t.equal(info.next, 'options', 'INFO stays in haggling')
  const replies = info.replies.map(parse)
  t.same(
    replies.map(r => r.type),
    [INFO, INFO, INFO, INFO, ACK],
    'export, block size, name, description; duplicates and unknowns ignored',
  )
  const [e, bs, name, desc] = replies
  t.equal(e!.data.readUInt16BE(0), 0)
  t.equal(Number(e!.data.readBigUInt64BE(2)), 1 << 20)
  t.same(
    [bs!.data.readUInt16BE(0), bs!.data.readUInt32BE(2), bs!.data.readUInt32BE(6), bs!.data.readUInt32BE(10)],
    [3, 512, 4096, 32 << 20],
  )
  t.equal(name!.data.subarray(2).toString(), 'rowr0')
  t.equal(desc!.data.subarray(2).toString(), 'a test export')
  const go = n.option(7, nameAndInfos('', []))
  t.equal(go.next, 'transmission')
  t.same(
    go.replies.map(b => parse(b).type),
    [INFO, ACK],
    'no block size unless asked',
  )
  const unknown = new Negotiation(exp).option(7, nameAndInfos('nope', []))
  t.equal(unknown.next, 'options')
  t.equal(parse(unknown.replies[0]!).type, ERR_UNKNOWN)
  t.match(parse(unknown.replies[0]!).data.toString(), /no export named "nope"/)
})

t.test('malformed option data is answered with ERR_INVALID, never a crash', async t => {
  const n = new Negotiation(exp)
  const cases: [string, number, Buffer][] = [
    ['GO with a name longer than its data', 7, Buffer.concat([bytes.u32(100), Buffer.from('ab')])],
    ['GO with trailing bytes', 7, Buffer.concat([nameAndInfos('', []), Buffer.from('x')])],
    ['GO cut short in the info list', 7, Buffer.concat([bytes.u32(0), bytes.u16(2), bytes.u16(3)])],
    ['INFO with no data', 6, Buffer.alloc(0)],
    ['STRUCTURED_REPLY with data', 8, Buffer.from('x')],
    ['a name over 4096 bytes', 7, Buffer.concat([bytes.u32(5000), Buffer.alloc(5000), bytes.u16(0)])],
  ]
  for (const [what, code, data] of cases) {
    const out = n.option(code, data)
    t.equal(out.next, 'options', what)
    t.equal(parse(out.replies[0]!).type, ERR_INVALID, what)
  }
})

t.test('unknown options, STARTTLS and ABORT', async t => {
  const n = new Negotiation(exp)
  t.equal(parse(n.option(42, Buffer.from('whatever')).replies[0]!).type, ERR_UNSUP)
  t.equal(parse(n.option(5, Buffer.alloc(0)).replies[0]!).type, ERR_POLICY)
  const abort = n.option(2, Buffer.alloc(0))
  t.equal(abort.next, 'close')
  t.equal(parse(abort.replies[0]!).type, ACK)
})

t.test('metadata contexts need structured replies, then list and set', async t => {
  const n = new Negotiation(exp)
  t.equal(parse(n.option(9, metaQuery('', [])).replies[0]!).type, ERR_INVALID, 'not before STRUCTURED_REPLY')
  t.equal(parse(n.option(8, Buffer.alloc(0)).replies[0]!).type, ACK)
  t.equal(n.structuredReplies, true)
  const listAll = n.option(9, metaQuery('', [])).replies.map(parse)
  t.same(
    listAll.map(r => r.type),
    [META_CONTEXT, META_CONTEXT, ACK],
  )
  t.same(
    listAll.slice(0, 2).map(r => r.data.subarray(4).toString()),
    ['base:allocation', 'geom-rowr:written'],
  )
  t.same(
    listAll.slice(0, 2).map(r => r.data.readUInt32BE(0)),
    [0, 0],
    'LIST ids are zero',
  )
  const base = n.option(9, metaQuery('rowr0', ['base:'])).replies.map(parse)
  t.same(
    base.map(r => r.data.subarray(4).toString()),
    ['base:allocation', ''],
    'a namespace query',
  )
  const set = n.option(10, metaQuery('', ['geom-rowr:written', 'qemu:dirty-bitmap:x'])).replies.map(parse)
  t.same(
    set.map(r => r.type),
    [META_CONTEXT, ACK],
  )
  t.equal(set[0]!.data.readUInt32BE(0), 2)
  t.same([...n.metaContexts.values()], ['geom-rowr:written'])
  n.option(10, metaQuery('', []))
  t.equal(n.metaContexts.size, 0, 'SET with no queries selects nothing')
  t.equal(parse(n.option(10, metaQuery('other', ['base:'])).replies[0]!).type, ERR_UNKNOWN)
  t.equal(n.transmissionFlags() & (1 << 7), 1 << 7, 'DF only with structured replies')
})
