import t from 'tap'
import { INLINE_WRITE_MAX, InlineWrites } from '../lib/devices/inline-writes.js'

const MS = 1_000_000n

/** A clock the test moves by hand; a write "takes" as long as it advances it. */
const manualClock = () => {
  const clock = { now: 0n, nanos: () => clock.now }
  return clock
}

t.test('small writes run inline; large ones never do', async t => {
  const w = new InlineWrites(manualClock())
  t.equal(w.allows(4096), true)
  t.equal(w.allows(INLINE_WRITE_MAX), true)
  t.equal(w.allows(INLINE_WRITE_MAX + 512), false)
  let ran = 0
  w.run(() => ran++)
  t.equal(ran, 1)
  t.equal(w.inline, 1)
  t.equal(w.stalls, 0)
})

t.test('a stalled write sends writes to the pool, for longer each time the stalls return', async t => {
  const clock = manualClock()
  const w = new InlineWrites(clock)
  const stall = () => w.run(() => void (clock.now += 3n * MS))
  w.run(() => void (clock.now += 1n * MS))
  t.equal(w.stalls, 0, 'a 1 ms write is not a stall')
  t.equal(w.allows(4096), true)

  const pauses: number[] = []
  for (let i = 0; i < 9; i++) {
    stall()
    const from = clock.now
    while (!w.allows(4096)) clock.now += 100n * MS
    pauses.push(Number((clock.now - from) / MS))
  }
  t.same(pauses, [1000, 2000, 4000, 8000, 16000, 32000, 64000, 64000, 64000], 'doubling, up to 64 s')
  t.equal(w.stalls, 9)

  clock.now += 200_000n * MS
  stall()
  const from = clock.now
  while (!w.allows(4096)) clock.now += 100n * MS
  t.equal(Number((clock.now - from) / MS), 1000, 'after a quiet spell the pause starts small again')
})

t.test('a write that fails is still timed, and its error reaches the caller', async t => {
  const clock = manualClock()
  const w = new InlineWrites(clock)
  t.throws(
    () =>
      w.run(() => {
        clock.now += 5n * MS
        throw Object.assign(new Error('no space'), { code: 'ENOSPC' })
      }),
    { code: 'ENOSPC' },
  )
  t.equal(w.stalls, 1)
  t.equal(w.allows(512), false)
})
