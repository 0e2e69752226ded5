// Exclusive use as root (issue 11), with real loop devices and mounts:
// nothing mounted or used by someone else is taken as RW, a RO mounted
// read-write is refused, a disk RO of one device is refused as another's
// RW, and commit refuses while the device is mounted unless -f. Each
// refusal names what holds the device and leaves nothing behind.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { makeImage, requires, run, sha256 } from '../fixtures/helpers.js'
import { ext4Image, kernelLab, mount } from '../fixtures/kernel.js'

const NEEDS = { root: true, fuse: true, tools: ['nbdfuse', 'losetup', 'fusermount3', 'mkfs.ext4', 'e2fsck', 'mount', 'qemu-io'] }

const setup = (t: Test) => {
  const { dir, runDir, mnt, g, loop } = kernelLab(t)
  /** No run state (logs aside), and nothing of ours in the kernel but `keep`. */
  const nothingLeft = (...names: string[]): void => {
    const state = fs.existsSync(runDir) ? fs.readdirSync(runDir).filter(n => !n.endsWith('.log')) : []
    t.same(state.sort(), names.sort(), `run state only of ${names.join(', ') || 'no device'}`)
  }
  return { dir, runDir, mnt, g, loop, nothingLeft }
}

t.test('a mounted loop device is refused as RW, and so is the file behind it', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const base = makeImage(path.join(s.dir, 'ro.img'), 32 << 20)
  const victim = await ext4Image(s.dir, '32M')
  const device = await s.loop(victim)
  await mount(t, device, s.mnt)
  fs.writeFileSync(path.join(s.mnt, 'kept.txt'), 'kept\n')

  const asDisk = await s.g('create', 'h4', base, device)
  t.equal(asDisk.code, 1)
  t.match(
    asDisk.stderr,
    `${device} is mounted on ${s.mnt}; a RW is overwritten by its device, so it must hold nothing else: choose another RW`,
  )
  t.match(asDisk.stderr, `only if nothing on it is needed: umount ${s.mnt}, and run this again`)
  s.nothingLeft()

  const asFile = await s.g('create', 'h5', base, victim)
  t.equal(asFile.code, 1)
  t.match(asFile.stderr, `${victim} backs ${device}, mounted on ${s.mnt}; a RW is overwritten by its device`)
  t.match(asFile.stderr, `umount ${s.mnt} && losetup -d ${device}`)
  s.nothingLeft()

  t.equal((await run('umount', [s.mnt])).code, 0)
  const fsck = await run('e2fsck', ['-fn', victim])
  t.equal(fsck.code, 0, `what was mounted is intact: ${fsck.stdout}`)
  await mount(t, device, s.mnt)
  t.equal(fs.readFileSync(path.join(s.mnt, 'kept.txt'), 'utf8'), 'kept\n')
  t.equal((await run('umount', [s.mnt])).code, 0)
  // Unmounted, the same loop device is a RW like any other: nothing stayed claimed.
  const created = await s.g('create', '--no-attach', 'h4', base, device)
  t.equal(created.code, 0, created.stderr)
  t.equal((await s.g('destroy', 'h4')).code, 0)
  s.nothingLeft()
})

t.test('a RO mounted read-write is refused, as a disk and as the file behind a loop device', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const image = await ext4Image(s.dir, '32M')
  const rw = makeImage(path.join(s.dir, 'rw.img'), 32 << 20, 'zero')
  const device = await s.loop(image)
  await mount(t, device, s.mnt)
  const disk = await s.g('create', '--no-attach', 'r1', device, rw)
  t.equal(disk.code, 1)
  t.match(
    disk.stderr,
    `${device} is mounted read-write on ${s.mnt}; a RO must not change while a device reads it: unmount it (umount ${s.mnt}) or make it read-only (mount -o remount,ro ${s.mnt}) first`,
  )
  const file = await s.g('create', '--no-attach', 'r1', image, rw)
  t.equal(file.code, 1)
  t.match(file.stderr, `${image} backs ${device}, mounted read-write on ${s.mnt}; a RO must not change`)
  s.nothingLeft()
  // Read-only, it may be shared.
  t.equal((await run('mount', ['-o', 'remount,ro', s.mnt])).code, 0)
  const shared = await s.g('create', '--no-attach', 'r1', image, rw)
  t.equal(shared.code, 0, shared.stderr)
})

t.test("a disk RO of a running device is refused as another device's RW", async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const ro = await s.loop(makeImage(path.join(s.dir, 'ro.img'), 8 << 20))
  const roHash = sha256(ro)
  const rw = makeImage(path.join(s.dir, 'rw.img'), 8 << 20, 'zero')
  t.equal((await s.g('create', '--no-attach', 'd1', ro, rw)).code, 0)
  const other = makeImage(path.join(s.dir, 'other.img'), 8 << 20)
  const refused = await s.g('create', '--no-attach', 'd2', other, ro)
  t.equal(refused.code, 1)
  t.match(refused.stderr, `${ro} belongs to running device d1 as its RO; it cannot also be this device's RW`)
  t.equal(sha256(ro), roHash)
  // And a disk RW of a running device, which its exclusive open holds.
  const rwDisk = await s.loop(makeImage(path.join(s.dir, 'rw2.img'), 8 << 20, 'zero'))
  t.equal((await s.g('create', '--no-attach', 'd3', other, rwDisk)).code, 0)
  const twice = await s.g('create', '--no-attach', 'd4', makeImage(path.join(s.dir, 'o2.img'), 8 << 20), rwDisk)
  t.equal(twice.code, 1)
  t.match(twice.stderr, `${rwDisk} belongs to running device d3 as its RW`)
  s.nothingLeft('d1', 'd3')
})

t.test('commit refuses while the device is mounted, unless -f', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const base = await ext4Image(s.dir, '32M')
  const hash = sha256(base)
  const rw = makeImage(path.join(s.dir, 'rw.img'), 32 << 20, 'zero')
  const created = await s.g('create', 'c1', base, rw)
  t.equal(created.code, 0, created.stderr)
  const device = created.stdout.trim().split('\n').pop()!
  await mount(t, device, s.mnt)
  fs.writeFileSync(path.join(s.mnt, 'new.txt'), 'x\n')
  const busy = await s.g('commit', '-y', 'c1')
  t.equal(busy.code, 1)
  t.match(busy.stderr, `c1 (${device}) is in use: it is mounted or held open; unmount it (umount ${device}), or use commit -f`)
  t.equal(sha256(base), hash, 'RO is unchanged')
  t.equal((await run('umount', [s.mnt])).code, 0)
  const done = await s.g('commit', '-y', 'c1')
  t.equal(done.code, 0, done.stderr)
  t.not(sha256(base), hash, 'unmounted, commit writes RO')
})
