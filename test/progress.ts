// The progress bar: drawn on a terminal, silent otherwise.
import t from 'tap'
import { progressBar } from '../lib/cli/progress.js'

const stream = (isTTY: boolean) => {
  const out: string[] = []
  return { out, s: { isTTY, write: (chunk: string) => out.push(chunk) > 0 } as unknown as NodeJS.WriteStream }
}

t.test('on a terminal: a bar with the percentage and MiB, redrawn in place, ended by a newline', async t => {
  const { out, s } = stream(true)
  const bar = progressBar('rowr0: export', s)
  bar.update(0, 4 << 20)
  bar.update(4 << 20, 4 << 20)
  bar.end()
  t.match(out[0], /^\rrowr0: export \[-{30}\]   0% 0\.0\/4\.0 MiB$/)
  t.match(out.at(-2), /^\rrowr0: export \[#{30}\] 100% 4\.0\/4\.0 MiB$/, 'the last update is always drawn')
  t.equal(out.at(-1), '\n')
})

t.test('not a terminal: nothing at all', async t => {
  const { out, s } = stream(false)
  const bar = progressBar('rowr0: export', s)
  bar.update(1, 2)
  bar.end()
  t.same(out, [])
})
