import { AssertionError } from 'node:assert'
import t from 'tap'
import { InFlightList } from '../lib/engine/in-flight.js'

const isPromise = (v: unknown): v is Promise<unknown> => v instanceof Promise

t.test('reads overlap freely; disjoint writes do not wait', async t => {
  const l = new InFlightList()
  const a = l.enter(0, 100, false)
  const b = l.enter(50, 150, false)
  const c = l.enter(200, 300, true)
  t.notOk(isPromise(a) || isPromise(b) || isPromise(c))
  t.equal(l.size, 3)
  t.equal(l.waits, 0)
})

t.test('a write waits for earlier overlapping reads, and a read for an earlier write', async t => {
  const l = new InFlightList()
  const order: string[] = []
  const r1 = l.enter(0, 100, false) as ReturnType<typeof l.enter> & object
  const w = l.enter(50, 60, true)
  t.ok(isPromise(w), 'the write waits')
  const r2 = l.enter(55, 56, false)
  t.ok(isPromise(r2), 'a later read waits for the earlier write, not jumping ahead')
  const r3 = l.enter(60, 70, false)
  t.notOk(isPromise(r3), 'a read next to the write does not wait')
  void (w as Promise<unknown>).then(x => {
    order.push('write')
    l.leave(x as never)
  })
  void (r2 as Promise<unknown>).then(x => {
    order.push('read2')
    l.leave(x as never)
  })
  await new Promise(r => setImmediate(r))
  t.same(order, [], 'nothing runs while the first read is in flight')
  l.leave(r1 as never)
  await new Promise(r => setImmediate(r))
  t.same(order, ['write', 'read2'])
  t.equal(l.waits, 2)
})

t.test('a request waits for all its blockers', async t => {
  const l = new InFlightList()
  const w1 = l.enter(0, 10, true)
  const w2 = l.enter(20, 30, true)
  const r = l.enter(5, 25, false)
  let ran = false
  void (r as Promise<unknown>).then(() => (ran = true))
  l.leave(w1 as never)
  await new Promise(res => setImmediate(res))
  t.notOk(ran, 'still blocked by the second write')
  l.leave(w2 as never)
  await new Promise(res => setImmediate(res))
  t.ok(ran)
})

t.test('leaving twice is a bug that is caught', async t => {
  const l = new InFlightList()
  const a = l.enter(0, 1, true)
  l.leave(a as never)
  t.throws(() => l.leave(a as never), AssertionError)
})

t.test('idle resolves once the last request leaves', async t => {
  const l = new InFlightList()
  await l.idle()
  const a = l.enter(0, 10, true)
  const b = l.enter(20, 30, false)
  let idle = false
  void l.idle().then(() => (idle = true))
  l.leave(a as never)
  await new Promise(res => setImmediate(res))
  t.notOk(idle, 'one request is still in flight')
  l.leave(b as never)
  await new Promise(res => setImmediate(res))
  t.ok(idle)
})
