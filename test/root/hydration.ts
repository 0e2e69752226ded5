// Hydration with RO really taken away, as root: RO is an nbdkit file export
// shown as a file by nbdfuse (a loop device would only get autoclear from
// losetup -d while open). create --hydrate, ext4 mounted and used while it
// copies; once status says done, nbdkit is stopped and the nbdfuse file
// unmounted, so any read of RO would fail; the file system goes on working,
// e2fsck -fn is clean, and the device holds RO plus the changes.
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { makeImage, requires, rowr, run, shortDir, waitUntil } from '../fixtures/helpers.js'
import { ext4Image, leftovers, mount } from '../fixtures/kernel.js'

const NEEDS = { root: true, fuse: true, tools: ['nbdkit', 'nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount'] }

const exited = async (p: ChildProcess | undefined): Promise<void> => {
  if (p && p.exitCode === null && p.signalCode === null) await new Promise(resolve => p.once('exit', resolve))
}

t.test('RO served by nbdkit through nbdfuse: hydrated while ext4 is in use, then taken away; the file system goes on', async t => {
  if (!requires(t, NEEDS)) return
  const dir = shortDir(t)
  const runDir = path.join(dir, 'run')
  const mnt = path.join(dir, 'mnt')
  const fuse = path.join(dir, 'fuse')
  const socket = path.join(dir, 'nbdkit.sock')
  const roFile = path.join(fuse, 'ro')
  fs.mkdirSync(mnt)
  fs.mkdirSync(fuse)
  const cli = (...args: string[]) => rowr(runDir, args)
  let nbdkit: ChildProcess | undefined
  let nbdfuse: ChildProcess | undefined
  t.teardown(async () => {
    await run('umount', ['-l', mnt])
    for (const name of fs.existsSync(runDir) ? fs.readdirSync(runDir) : []) {
      if (!name.endsWith('.log')) await cli('destroy', '-f', name)
    }
    await run('fusermount3', ['-u', fuse])
    nbdkit?.kill('SIGTERM')
    await Promise.all([exited(nbdfuse), exited(nbdkit)])
    for (const l of leftovers(dir)) {
      if (l.startsWith('loop ')) await run('losetup', ['-d', `/dev/${l.split(' ')[1]}`])
      if (l.startsWith('mount ')) await run('umount', ['-l', l.split(' ')[5]!])
    }
  })

  const base = await ext4Image(dir)
  const size = fs.statSync(base).size
  const rw = makeImage(path.join(dir, 'rw.img'), size, 'zero')
  nbdkit = spawn('nbdkit', ['--foreground', '--readonly', '--unix', socket, 'file', base], { stdio: 'ignore' })
  t.ok(await waitUntil(() => fs.existsSync(socket)), 'nbdkit listens')
  nbdfuse = spawn('nbdfuse', ['--readonly', roFile, '--unix', socket], { stdio: 'ignore' })
  t.ok(await waitUntil(() => fs.existsSync(roFile)), 'nbdfuse shows RO as a file')

  const created = await cli('create', '--hydrate', '--hydrate-rate', '16M', '--map', path.join(dir, 'h.map'), 'rowrh', roFile, rw)
  t.equal(created.code, 0, created.stderr)
  const device = created.stdout.trim().split('\n').pop()!
  await mount(t, device, mnt)
  // Used while the copy runs.
  fs.writeFileSync(path.join(mnt, 'during.bin'), Buffer.alloc(3 << 20, 0x44))
  fs.rmSync(path.join(mnt, 'pxeboot'))
  fs.renameSync(path.join(mnt, 'loader.4th'), path.join(mnt, 'lua/loader.4th'))
  t.equal((await run('sync', [])).code, 0)
  const status = async () =>
    JSON.parse((await cli('status', '--json', 'rowrh')).stdout) as { pid: number; roHeld: boolean; hydration: { state: string } }
  t.equal((await status()).hydration.state, 'running', 'the copy runs while the file system is used')
  t.ok(await waitUntil(async () => !(await status()).roHeld, 60_000), 'hydration done and RO released')
  t.equal((await status()).hydration.state, 'done')

  // RO goes away for good: any read of it would now fail.
  t.equal((await run('fusermount3', ['-u', fuse])).code, 0, 'the nbdfuse file is unmounted')
  nbdkit.kill('SIGTERM')
  await Promise.all([exited(nbdfuse), exited(nbdkit)])
  t.notOk(fs.existsSync(roFile), 'RO is gone')

  fs.writeFileSync(path.join(mnt, 'after.txt'), 'written after RO went away\n')
  t.equal((await run('sync', [])).code, 0)
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
  t.equal(
    fs.readFileSync(path.join(mnt, 'lib/engine/sector-map.ts'), 'utf8').length > 0,
    true,
    'an untouched file of RO reads back (from RW)',
  )
  t.same(fs.readFileSync(path.join(mnt, 'during.bin')), Buffer.alloc(3 << 20, 0x44))
  t.equal(fs.readFileSync(path.join(mnt, 'lua/loader.4th'), 'utf8'), 'forth\n')
  t.equal(fs.readFileSync(path.join(mnt, 'after.txt'), 'utf8'), 'written after RO went away\n')
  t.equal((await run('umount', [mnt])).code, 0)
  const fsck = await run('e2fsck', ['-fn', device])
  t.equal(fsck.code, 0, `e2fsck -fn is clean: ${fsck.stdout}`)
  const st = JSON.parse((await cli('status', '--json', 'rowrh')).stdout) as { health: string; errors: { roRead: number } }
  t.same([st.health, st.errors.roRead], ['ok', 0], 'no read of RO failed: none was made')

  // The device is RO plus the changes: the client's ranges read RW's bytes, every other sector RO's.
  const diff = JSON.parse((await cli('diff', '--json', 'rowrh')).stdout) as { ranges: { offset: number; length: number }[] }
  const expected = fs.readFileSync(base)
  const rwBytes = fs.readFileSync(rw)
  for (const r of diff.ranges) rwBytes.copy(expected, r.offset, r.offset, r.offset + r.length)
  const shown = Buffer.alloc(size)
  const fd = fs.openSync(device, 'r')
  try {
    fs.readSync(fd, shown, 0, size, 0)
  } finally {
    fs.closeSync(fd)
  }
  t.ok(shown.equals(expected), 'the device equals RO with the written ranges from RW')
  t.ok(diff.ranges.length > 0, `${diff.ranges.length} written range(s)`)
  t.equal((await cli('destroy', 'rowrh')).code, 0)
  t.same(leftovers(dir), [], 'nothing left behind')
})
