// Imports every module, so that a module no test touches still loads and
// still shows up in the coverage report.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { repoRoot } from './fixtures/helpers.js'

const sources = (dir: string): string[] =>
  fs.readdirSync(path.join(repoRoot, dir), { withFileTypes: true }).flatMap(e =>
    e.isDirectory() ? sources(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : [],
  )

for (const file of [...sources('lib'), ...sources('native-bindings')]) {
  t.test(file, async t => {
    const mod = await import(path.join(repoRoot, file))
    t.ok(Object.keys(mod).length > 0, 'exports something')
  })
}
