// The progress bar: drawn on a terminal with rate and time left, silent otherwise.
import t from 'tap'
import { clock, progressBar } from '../lib/cli/progress.js'

const MiB = 2 ** 20

const terminal = (isTTY: boolean) => {
  const out: string[] = []
  let ms = 0
  return {
    out,
    tick: (by: number) => (ms += by),
    options: { stream: { isTTY, write: (chunk: string) => out.push(chunk) > 0 } as unknown as NodeJS.WriteStream, now: () => ms },
  }
}

t.test('on a terminal: share, bytes, redrawn in place, ended by a newline', async t => {
  const { out, options } = terminal(true)
  const bar = progressBar('rowr0: export', options)
  bar.update(0, 4 * MiB)
  bar.update(4 * MiB, 4 * MiB)
  bar.end()
  t.match(out[0], /^\rrowr0: export \[-{30}\] {3}0% 0 B\/4\.0 MiB\x1b\[K$/)
  t.match(out.at(-2), /^\rrowr0: export \[#{30}\] 100% 4\.0 MiB\/4\.0 MiB/, 'the last update is always drawn')
  t.equal(out.at(-1), '\n')
})

t.test('the rate over the last seconds, and the time left at that rate', async t => {
  const { out, tick, options } = terminal(true)
  const bar = progressBar('rowr0: export', options)
  bar.update(0, 1000 * MiB)
  for (let i = 1; i <= 10; i++) {
    tick(1000)
    bar.update(i * 10 * MiB, 1000 * MiB)
  }
  t.match(out.at(-1), / 10\.0 MiB\/s ETA 1:30\x1b\[K$/, '10 MiB/s, 900 MiB left')
  // The rate follows a change within the window, not the average since the start.
  for (let i = 1; i <= 5; i++) {
    tick(1000)
    bar.update(100 * MiB + i * 100 * MiB, 1000 * MiB)
  }
  t.match(out.at(-1), / 100\.0 MiB\/s ETA 0:04\x1b\[K$/, '100 MiB/s, 400 MiB left')
})

t.test('no rate until half a second has passed; none drawn between redraws', async t => {
  const { out, tick, options } = terminal(true)
  const bar = progressBar('x', options)
  bar.update(0, 100)
  tick(50)
  bar.update(10, 100)
  t.equal(out.length, 1, 'not redrawn within 100 ms')
  tick(100)
  bar.update(20, 100)
  t.notMatch(out.at(-1), /\/s/)
})

t.test('a step is named: the final sync does not look like a hang', async t => {
  const { out, options } = terminal(true)
  const bar = progressBar('rowr0: export', options)
  bar.update(4 * MiB, 4 * MiB)
  bar.step('syncing')
  t.match(out.at(-1), /100% 4\.0 MiB\/4\.0 MiB syncing\.\.\.\x1b\[K$/)
})

t.test('not a terminal: nothing at all', async t => {
  const { out, options } = terminal(false)
  const bar = progressBar('rowr0: export', options)
  bar.update(1, 2)
  bar.step('syncing')
  bar.end()
  t.same(out, [])
})

t.test('clock', async t => {
  t.equal(clock(0), '0:00')
  t.equal(clock(59.6), '1:00')
  t.equal(clock(3599), '59:59')
  t.equal(clock(3600 * 2 + 61), '2:01:01')
})
