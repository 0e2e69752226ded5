// The log a daemon leaves its successor: every range marked since the map's
// last commit is there after a crash (the object simply dropped, its file
// never closed), and a commit removes only what it covered.
import fs from 'node:fs'
import t from 'tap'
import type { BlockIo } from '../lib/devices/block-device.js'
import type { MapJournal } from '../lib/engine/engine.js'
import { TakeoverLog, readTakeoverLog, removeTakeoverLog } from '../lib/persist/takeover-log.js'

/** A journal that does nothing but what `over` says. */
const quietJournal = (over: Partial<MapJournal> = {}): MapJournal => ({
  marked: () => undefined,
  copied: () => undefined,
  recordsCopies: true,
  commit: async () => undefined,
  clear: async () => undefined,
  startCommit: async () => undefined,
  finishCommit: async () => undefined,
  ...over,
})

/** A journal that records calls and lets a test decide when a commit ends. */
const fakeJournal = () => {
  const marked: [number, number][] = []
  let release: (() => void) | undefined
  const journal = quietJournal({
    marked: (start, count) => void marked.push([start, count]),
    commit: () => new Promise<void>(resolve => (release = resolve)),
  })
  return { journal, marked, finishCommit: () => release?.() }
}

t.test('ranges marked since the last commit are in the log after a crash', async t => {
  const dir = t.testdir()
  const f = fakeJournal()
  const log = new TakeoverLog(dir, f.journal)
  log.marked(0, 8)
  log.marked(2 ** 40, 1)
  t.same(
    f.marked,
    [
      [0, 8],
      [2 ** 40, 1],
    ],
    'passed on to the map',
  )
  t.same(
    readTakeoverLog(dir),
    [
      [0, 8],
      [2 ** 40, 1],
    ],
    'and on disk before marked() returns',
  )
})

t.test('a commit removes what it covered and keeps what was marked while it ran', async t => {
  const dir = t.testdir()
  const f = fakeJournal()
  const log = new TakeoverLog(dir, f.journal)
  log.marked(10, 2)
  const committing = log.commit(async () => undefined)
  log.marked(20, 3)
  t.same(
    readTakeoverLog(dir),
    [
      [10, 2],
      [20, 3],
    ],
    'both while the commit runs',
  )
  f.finishCommit()
  await committing
  t.same(readTakeoverLog(dir), [[20, 3]], 'only the range the commit may have missed')
  log.close()
})

t.test('a failed commit keeps the log', async t => {
  const dir = t.testdir()
  const log = new TakeoverLog(dir, quietJournal({ commit: () => Promise.reject(new Error('EIO')) }))
  log.marked(1, 1)
  await t.rejects(log.commit(async () => undefined))
  t.same(readTakeoverLog(dir), [[1, 1]])
  log.close()
})

t.test("a successor starts after the dead daemon's logs and its first commit removes them", async t => {
  const dir = t.testdir()
  new TakeoverLog(dir, fakeJournal().journal).marked(5, 5)
  // A record cut short by the crash: never acknowledged, ignored.
  fs.appendFileSync(`${dir}/marked-since-flush.0`, Buffer.alloc(7))
  t.same(readTakeoverLog(dir), [[5, 5]])
  const log = new TakeoverLog(dir, quietJournal())
  t.same(readTakeoverLog(dir), [[5, 5]], 'the old log stays until a commit covers it')
  await log.commit(async () => undefined)
  t.same(readTakeoverLog(dir), [], 'gone after the first commit')
  log.close()
  removeTakeoverLog(dir)
  t.same(fs.readdirSync(dir), [])
})

t.test('an emptied map (revert, or the end of a commit into RO) takes the logged ranges with it', async t => {
  for (const [how, empty] of [
    ['revert', (log: TakeoverLog) => log.clear()],
    ['commit into RO', (log: TakeoverLog) => log.finishCommit({} as BlockIo)],
  ] as const) {
    const dir = t.testdir()
    const cleared: string[] = []
    const log = new TakeoverLog(
      dir,
      quietJournal({ clear: async () => void cleared.push('clear'), finishCommit: async () => void cleared.push('finishCommit') }),
    )
    log.marked(7, 3)
    await empty(log)
    t.equal(cleared.length, 1, `${how}: the map was emptied`)
    t.same(readTakeoverLog(dir), [], `${how}: a successor does not mark the forgotten ranges again`)
    log.marked(9, 1)
    t.same(readTakeoverLog(dir), [[9, 1]], `${how}: ranges marked afterwards are logged`)
    log.close()
  }
})
