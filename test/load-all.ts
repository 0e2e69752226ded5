// Imports every module, so that a module no test touches still loads and
// still shows up in the coverage report; all but the entry points, which
// run when loaded (the daemon's is started by every test that creates a
// device). A module of types only loads as an empty one.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { repoRoot } from './fixtures/helpers.js'

const sources = (dir: string): string[] =>
  fs
    .readdirSync(path.join(repoRoot, dir), { withFileTypes: true })
    .flatMap(e => (e.isDirectory() ? sources(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []))

const ENTRY_POINTS = new Set(['lib/daemon/main.ts'])
const RUNTIME_EXPORT = /^export (const|let|class|function|async|default|\{)/m

for (const file of [...sources('lib'), ...sources('native-bindings')].filter(f => !ENTRY_POINTS.has(f))) {
  t.test(file, async t => {
    const mod = await import(path.join(repoRoot, file))
    const exportsValues = RUNTIME_EXPORT.test(fs.readFileSync(path.join(repoRoot, file), 'utf8'))
    t.equal(Object.keys(mod).length > 0, exportsValues, exportsValues ? 'exports something' : 'a module of types only')
  })
}
