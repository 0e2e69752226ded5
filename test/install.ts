// make install: geom-rowr on PATH as a command that runs from its own copy
// of the program and its runtime dependencies, and a man page.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { repoRoot, requires } from './fixtures/helpers.js'

t.test('make install DESTDIR=... PREFIX=...: the command runs from the installed copy', async t => {
  if (!requires(t, { tools: ['make', 'npm'] })) return
  const dest = t.testdir()
  const prefix = path.join(dest, 'prefix')
  execFileSync('make', ['-s', 'install', `PREFIX=${prefix}`], { cwd: repoRoot, stdio: 'pipe' })
  const command = path.join(prefix, 'bin/geom-rowr')
  t.ok(fs.lstatSync(command).isSymbolicLink())
  t.ok(fs.realpathSync(command).startsWith(path.join(prefix, 'lib/geom-rowr/')), 'it points into the installed copy, not the checkout')
  const { version } = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }
  // From a folder with no checkout around it, on a PATH that has it.
  const env = { ...process.env, PATH: `${path.dirname(command)}:${process.env.PATH}`, GEOM_ROWR_RUNDIR: path.join(dest, 'run') }
  t.equal(execFileSync('geom-rowr', ['--version'], { cwd: dest, env, encoding: 'utf8' }).trim(), `geom-rowr ${version}`)
  t.equal(execFileSync('geom-rowr', ['list', '--json'], { cwd: dest, env, encoding: 'utf8' }).trim(), '[]')
  t.ok(fs.existsSync(path.join(prefix, 'share/man/man8/geom-rowr.8')))
  t.notOk(fs.existsSync(path.join(prefix, 'lib/geom-rowr/node_modules/typescript')), 'no development dependencies')
  execFileSync('make', ['-s', 'uninstall', `PREFIX=${prefix}`], { cwd: repoRoot, stdio: 'pipe' })
  t.notOk(fs.existsSync(command))
  t.notOk(fs.existsSync(path.join(prefix, 'lib/geom-rowr')))
})
