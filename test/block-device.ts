import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { BlockDevice, openError } from '../lib/devices/block-device.js'
import { openDevicePair, resizeHint } from '../lib/devices/device-pair.js'
import { resolveDevicePath, resolveRwPath } from '../lib/devices/device-path.js'
import { makeImage } from './fixtures/helpers.js'

const images = (t: Test, roSize: number, rwSize: number) => {
  const dir = t.testdir()
  return {
    dir,
    ro: makeImage(path.join(dir, 'ro.img'), roSize, 'zero'),
    rw: makeImage(path.join(dir, 'rw.img'), rwSize, 'zero'),
  }
}

t.test('a regular file: size from fstat, 512-byte sectors, read-only open', async t => {
  const { ro } = images(t, 4096, 4096)
  const d = BlockDevice.open(ro, { writable: false })
  t.teardown(() => d.close())
  t.equal(d.size, 4096)
  t.equal(d.sectorSize, 512)
  t.equal(d.identity.kind, 'file')
  await t.rejects(d.write(Buffer.alloc(512), 0, 512, 0), { code: 'EBADF' }, 'RO is open read-only')
})

t.test('reading past the end is a short read error, not silent zeros', async t => {
  const { ro } = images(t, 1000, 1000)
  const d = BlockDevice.open(ro, { writable: false })
  t.teardown(() => d.close())
  await t.rejects(d.read(Buffer.alloc(512), 0, 512, 900), { code: 'EIO', message: /short read at byte 1000/ })
})

t.test('zero() on a file makes zeros whether or not holes can be punched', async t => {
  const { rw } = images(t, 1 << 20, 1 << 20)
  fs.writeFileSync(rw, Buffer.alloc(1 << 20, 0xff))
  const d = BlockDevice.open(rw, { writable: true })
  t.teardown(() => d.close())
  await d.zero(4096, 8192)
  const back = fs.readFileSync(rw)
  t.same(back.subarray(4096, 12288), Buffer.alloc(8192))
  t.equal(back[4095], 0xff)
  t.equal(back[12288], 0xff)
})

t.test('a pair of the same size opens', async t => {
  const { ro, rw } = images(t, 1 << 20, 1 << 20)
  const p = openDevicePair(ro, rw)
  t.teardown(() => {
    p.ro.close()
    p.rw.close()
  })
  t.equal(p.mediaSize, 1 << 20)
  t.equal(p.sectorSize, 512)
  t.same(p.warnings, [])
})

t.test('refusals name the devices and the fix', async t => {
  const { dir, ro, rw } = images(t, 1 << 20, 1 << 19)
  t.throws(() => openDevicePair(ro, rw), {
    code: 'EMEDIASIZE',
    message: `mediasize mismatch: ${ro} is 1048576 bytes, ${rw} is 524288 bytes; the read-write device must be at least as large: truncate -s 1048576 ${rw}`,
  })
  t.throws(() => openDevicePair(ro, rw, { resizeHint: (p, n) => `mdconfig -a -t swap -s ${n}b (for ${p})` }), {
    message: /mdconfig -a -t swap -s 1048576b/,
  })
  t.throws(() => openDevicePair(ro, ro), { code: 'ESAMEDEV', message: new RegExp(`${ro} and ${ro} are the same file`) })
  const link = path.join(dir, 'hardlink.img')
  fs.linkSync(ro, link)
  t.throws(() => openDevicePair(ro, link), { code: 'ESAMEDEV' }, 'a hard link is the same file')
  t.throws(() => openDevicePair(path.join(dir, 'nope'), rw), { code: 'ENOENT', message: /nope does not exist/ })
  t.throws(() => openDevicePair(ro, path.join(dir, 'nope')), { code: 'ENOENT' })
  t.throws(() => openDevicePair(dir, rw), { code: 'ENOTDEV', message: /neither a regular file nor a disk device/ })
  const odd = makeImage(path.join(dir, 'odd.img'), 1000, 'zero')
  t.throws(() => openDevicePair(odd, rw), { code: 'ESECTORSIZE', message: /not a non-zero multiple of the 512-byte sector size/ })
  t.throws(() => openDevicePair(ro, rw, { sectorSize: 3000 }), { code: 'ESECTORSIZE', message: /power of two/ })
  t.throws(() => openDevicePair(ro, rw, { sectorSize: 256 }), { code: 'ESECTORSIZE' })
  t.throws(() => openDevicePair(ro, rw, { sectorSize: 131072 }), { code: 'ESECTORSIZE' })
})

t.test('a refused pair leaves no file descriptor open', async t => {
  const { ro, rw } = images(t, 1 << 20, 1 << 19)
  const before = fs.readdirSync('/proc/self/fd').length
  for (let i = 0; i < 20; i++) t.throws(() => openDevicePair(ro, rw))
  t.equal(fs.readdirSync('/proc/self/fd').length, before)
})

t.test("a larger RW is accepted with a warning and only RO's size is used", async t => {
  const { ro, rw } = images(t, 1 << 20, 2 << 20)
  const p = openDevicePair(ro, rw)
  t.teardown(() => {
    p.ro.close()
    p.rw.close()
  })
  t.equal(p.mediaSize, 1 << 20)
  t.match(
    p.warnings[0],
    /larger than .*its first 1048576 bytes hold the device's data, and past them only a map's device ID or the map itself/,
  )
})

t.test('a chosen sector size must divide the device size', async t => {
  const { ro, rw } = images(t, 4096 + 512, 8192)
  t.throws(() => openDevicePair(ro, rw, { sectorSize: 4096 }), { code: 'ESECTORSIZE', message: /truncate -s 8192/ })
  const p = openDevicePair(ro, rw, { sectorSize: 512 })
  p.ro.close()
  p.rw.close()
})

t.test('RW that cannot be written is refused', async t => {
  const { ro, rw } = images(t, 4096, 4096)
  const root = process.getuid?.() === 0
  // Root may write any file whatever its mode; an immutable file it may not.
  if (root) execFileSync('chattr', ['+i', rw])
  else fs.chmodSync(rw, 0o444)
  try {
    t.throws(() => openDevicePair(ro, rw), { code: 'ENOTWRITABLE', message: /cannot be opened for writing/ })
  } finally {
    if (root) execFileSync('chattr', ['-i', rw])
  }
})

t.test('device arguments as geom(8) takes them', async t => {
  const dir = t.testdir({ img: '' })
  t.equal(resolveDevicePath('null'), '/dev/null', 'a bare name in /dev')
  t.equal(resolveDevicePath(path.join(dir, 'img')), path.join(dir, 'img'))
  t.equal(resolveDevicePath('some/relative'), path.resolve('some/relative'))
  t.equal(resolveRwPath('auto'), 'auto', 'RW may be the word auto')
  t.equal(resolveRwPath('null'), '/dev/null')
})

t.test('readNow reads cached bytes, and refuses what it cannot do without blocking', async t => {
  const { ro } = images(t, 1 << 20, 1 << 20)
  fs.writeFileSync(ro, Buffer.alloc(1 << 20, 0x3c))
  const d = BlockDevice.open(ro, { writable: false })
  t.teardown(() => d.close())
  const buf = Buffer.alloc(4096 + 100)
  t.equal(d.readNow(buf, 100, 4096, 8192), true, 'a file just written is cached')
  t.same(buf.subarray(100), Buffer.alloc(4096, 0x3c), 'into the right place of the buffer')
  t.same(buf.subarray(0, 100), Buffer.alloc(100), 'and nowhere else')
  t.equal(d.readNow(Buffer.alloc(512), 0, 512, 1 << 20), false, 'past the end: not served')
})

t.test('the resize hint loses nothing: a new md(4) beside the old one (recreating it would wipe it), a file grown', async t => {
  t.equal(
    resizeHint('/dev/md1', 536870912),
    'make a new md of that size (mdconfig -a -t swap -s 536870912b prints its name) and give it as RW; /dev/md1 is left as it is',
  )
  t.notMatch(resizeHint('/dev/md1', 536870912), 'mdconfig -d', "never detaches the md that holds RW's data")
  t.equal(resizeHint('/srv/rw.img', 4096), 'truncate -s 4096 /srv/rw.img')
  // truncate on a disk fails, or a loop device would need its backing file grown and re-read: neither is a fix to print.
  t.equal(
    resizeHint('/dev/vdb', 4096),
    'give a device of at least 4096 bytes as RW, or a file (truncate -s 4096 FILE makes an empty one); /dev/vdb is left as it is',
  )
})

t.test('small writes to RW land before write() returns; large ones go through the thread pool', async t => {
  const { rw } = images(t, 1 << 20, 1 << 20)
  const d = BlockDevice.open(rw, { writable: true })
  t.teardown(() => d.close())
  const small = d.write(Buffer.alloc(4096, 0x5a), 0, 4096, 8192)
  t.same(fs.readFileSync(rw).subarray(8192, 12288), Buffer.alloc(4096, 0x5a), 'on the file before any await')
  await small
  t.equal(d.inlineWrites?.inline, 1)
  await d.write(Buffer.alloc(256 * 1024, 0xa5), 0, 256 * 1024, 65536)
  t.equal(d.inlineWrites?.inline, 1, 'a 256 KiB write is not inline')
  t.same(fs.readFileSync(rw).subarray(65536, 65536 + 256 * 1024), Buffer.alloc(256 * 1024, 0xa5))
  const ro = BlockDevice.open(rw, { writable: false })
  t.equal(ro.inlineWrites, undefined, 'RO never writes')
  ro.close()
})

t.test('an inline write that fails rejects like a pooled one', async t => {
  const { rw } = images(t, 1 << 20, 1 << 20)
  const d = BlockDevice.open(rw, { writable: true })
  d.close()
  await t.rejects(d.write(Buffer.alloc(512), 0, 512, 0), { code: 'EBADF' })
  await t.rejects(d.write(Buffer.alloc(1 << 20), 0, 1 << 20, 0), { code: 'EBADF' })
})

t.test('no write runs inline while a hole is being punched (it would wait for the punch)', async t => {
  const { rw } = images(t, 1 << 20, 1 << 20)
  const d = BlockDevice.open(rw, { writable: true })
  t.teardown(() => d.close())
  const punching = d.zero(0, 1 << 19)
  await d.write(Buffer.alloc(512, 1), 0, 512, 1 << 19)
  t.equal(d.inlineWrites?.inline, 0)
  await punching
  await d.write(Buffer.alloc(512, 1), 0, 512, 1 << 19)
  t.equal(d.inlineWrites?.inline, 1)
})

t.test('FreeBSD: EPERM opening a disk RW for writing means GEOM found it in use (mounted): said so, with the fix', async t => {
  const eperm = Object.assign(new Error('EPERM: operation not permitted'), { code: 'EPERM' })
  process.env.GEOM_ROWR_PLATFORM = 'freebsd'
  t.teardown(() => delete process.env.GEOM_ROWR_PLATFORM)
  const refusal = openError('/dev/null', true, eperm)
  t.match(refusal, {
    code: 'EINUSE',
    message: '/dev/null cannot be opened for writing (EPERM): it is in use (mounted?)',
  })
  t.match(refusal.message, 'see where with: mount | grep /dev/null; unmount it first (umount MOUNTPOINT), or choose another RW')
  t.match(openError('/dev/null', false, eperm), { message: 'EPERM: operation not permitted' }, 'reading is not refused that way')
  process.env.GEOM_ROWR_PLATFORM = 'linux'
  t.match(openError('/dev/null', true, eperm), { code: 'ENOTWRITABLE' }, 'on Linux EPERM is a permission problem')
})
