// Errors a user can cause, through the command line: each names the path,
// the problem and the fix, instead of a raw errno text.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import t, { type Test } from 'tap'
import { aboutPath, failureMessage } from '../lib/failure-message.js'
import { makeImage, requires, rowr, shortDir } from './fixtures/helpers.js'

const SIZE = 1 << 20

const setup = (t: Test) => {
  const dir = shortDir(t)
  const run = path.join(dir, 'run')
  const ro = makeImage(path.join(dir, 'ro.img'), SIZE)
  const rw = makeImage(path.join(dir, 'rw.img'), SIZE, 'zero')
  const cli = (...args: string[]) => rowr(run, args)
  return { dir, ro, rw, cli }
}

t.test('a directory as RW', async t => {
  const { dir, ro, cli } = setup(t)
  const r = await cli('serve', ro, dir)
  t.equal(r.code, 1)
  t.match(r.stderr, `geom-rowr: ${dir} is a directory: give a regular file or a disk device (EISDIR from open)`)
})

t.test('a map in a folder that does not exist', async t => {
  const { dir, ro, rw, cli } = setup(t)
  const map = path.join(dir, 'missing/r.map')
  const r = await cli('create', '--no-attach', '--map', map, 'm0', ro, rw)
  t.equal(r.code, 1)
  t.match(
    r.stderr,
    `${map} does not exist (or a folder on its path does not): check the path; a new file's folder must exist first (mkdir -p)`,
  )
  t.notOk(fs.existsSync(path.join(dir, 'run/m0')), 'nothing is left behind')
})

t.test('serve on a port that is taken', async t => {
  const { ro, rw, cli } = setup(t)
  const busy = net.createServer()
  await new Promise<void>(resolve => busy.listen(0, '127.0.0.1', resolve))
  t.teardown(() => busy.close())
  const { port } = busy.address() as net.AddressInfo
  const r = await cli('serve', '--port', String(port), ro, rw)
  t.equal(r.code, 1)
  t.match(r.stderr, `127.0.0.1 port ${port} is already in use (another NBD server?): choose another --port`)
})

t.test('commit into an immutable RO names RO, not the read-write device', async t => {
  if (!requires(t, { root: true, tools: ['chattr'] })) return
  const { dir, ro, rw, cli } = setup(t)
  const map = path.join(dir, 'r.map')
  t.equal((await cli('create', '--no-attach', '--map', map, 'c0', ro, rw)).code, 0)
  t.teardown(() => cli('destroy', '-f', 'c0'))
  execFileSync('chattr', ['+i', ro])
  t.teardown(() => execFileSync('chattr', ['-i', ro]))
  const r = await cli('commit', '-y', 'c0')
  t.equal(r.code, 1)
  t.match(r.stderr, `commit cannot write RO: ${ro} cannot be opened for writing (EPERM)`)
  t.match(r.stderr, 'immutable (lsattr shows it)')
  t.notMatch(r.stderr, 'read-write device')
})

t.test('export into a full file system: the fix, and no partial image left', async t => {
  if (!requires(t, { root: true })) return
  const { dir, ro, rw, cli } = setup(t)
  const small = path.join(dir, 'small')
  fs.mkdirSync(small)
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', small])
  t.teardown(() => execFileSync('umount', [small]))
  t.equal((await cli('create', '--no-attach', 'e0', ro, rw)).code, 0)
  t.teardown(() => cli('destroy', '-f', 'e0'))
  const image = path.join(small, 'out.img')
  const r = await cli('export', 'e0', image)
  t.equal(r.code, 1)
  t.match(r.stderr, `the file system holding ${image} is full: free space there, or choose a file system with room (ENOSPC from write)`)
  t.notOk(fs.existsSync(image))
})

t.test('failureMessage: errors without a known explanation, and a path added to an fd error', async t => {
  const odd = Object.assign(new Error('ESOMETHING: odd'), { code: 'ESOMETHING', syscall: 'frob', path: '/x' })
  t.equal(failureMessage(odd), 'frob /x failed: ESOMETHING: odd')
  t.equal(failureMessage(new Error('plain')), 'plain')
  const fdError = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' })
  t.match(failureMessage(aboutPath(fdError, '/img')), 'the file system holding /img is full')
})
