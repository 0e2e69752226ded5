import t from 'tap'
import { ByteQueue } from '../lib/nbd/byte-queue.js'

t.test('takes views inside one chunk and copies across chunks', async t => {
  const q = new ByteQueue()
  const a = Buffer.from('hello ')
  q.push(a)
  q.push(Buffer.from('world'))
  q.push(Buffer.alloc(0))
  t.equal(q.length, 11)
  const first = q.take(3)
  t.equal(first.toString(), 'hel')
  t.equal(first.buffer, a.buffer, 'no copy inside one chunk')
  t.equal(q.take(6).toString(), 'lo wor', 'gathered across chunks')
  t.equal(q.take(2).toString(), 'ld')
  t.equal(q.length, 0)
  t.throws(() => q.take(1), RangeError)
})

t.test('byte-at-a-time input gives the same message', async t => {
  const q = new ByteQueue()
  for (const b of Buffer.from('0123456789')) q.push(Buffer.from([b]))
  t.equal(q.take(10).toString(), '0123456789')
  q.push(Buffer.from('xy'))
  q.clear()
  t.equal(q.length, 0)
})

t.test('takeInto copies the next bytes into a place of a target buffer', async t => {
  const q = new ByteQueue()
  q.push(Buffer.from('abc'))
  q.push(Buffer.from('defg'))
  const target = Buffer.alloc(8, '.')
  q.takeInto(target, 2, 5)
  t.equal(target.toString(), '..abcde.')
  t.equal(q.length, 2)
  t.equal(q.take(2).toString(), 'fg')
  t.throws(() => q.takeInto(target, 0, 1), RangeError)
})
