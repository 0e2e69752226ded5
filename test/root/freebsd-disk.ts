// A FreeBSD disk as RW, through the ggctl simulator's libc (which answers
// FreeBSD's disk ioctls on a Linux loop device and counts them): a flush
// sends DIOCGFLUSH after fdatasync (fdatasync of a device vnode sends no
// BIO_FLUSH), and space goes back with DIOCGDELETE, which is trusted to read
// back as zeros only on an md.
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { makeImage, repoRoot, requires, run, shortDir } from '../fixtures/helpers.js'

const simulator = path.join(repoRoot, 'build/ggsim.so')
process.env.GEOM_ROWR_LIBC = simulator
process.env.GEOM_ROWR_PLATFORM = 'freebsd'
delete process.env.GGSIM_MOUNT

const { BlockDevice } = await import('../../lib/devices/block-device.js')
const { Engine } = await import('../../lib/engine/engine.js')
const { SectorStates } = await import('../../lib/engine/sector-states.js')
const { serveBio } = await import('../../lib/ggate/front-end.js')
const { BioCmd } = await import('../../native-bindings/ggate-abi.js')

const SIZE = 4 << 20

/** DIOCGFLUSH (0) and DIOCGDELETE (1) calls that reached a block device so far. */
const calls = (() => {
  const koffi = createRequire(import.meta.url)('koffi') as { load(p: string): { func(s: string): (which: number) => number } }
  const fn = koffi.load(simulator).func('unsigned long ggsim_disk_calls(int which)')
  return () => ({ flushes: Number(fn(0)), deletes: Number(fn(1)) })
})()

/** A loop device over a file of random bytes; with `md`, reached as /dev/mdN too. */
const disk = async (t: Test, { md = false, fill = 'random' as 'random' | 'zero' } = {}): Promise<string> => {
  const dir = shortDir(t)
  const file = makeImage(path.join(dir, 'disk.img'), SIZE, fill)
  const loop = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim()
  t.teardown(() => run('losetup', ['-d', loop]))
  if (!md) return loop
  let unit = 900
  while (fs.existsSync(`/dev/md${unit}`)) unit++
  fs.symlinkSync(loop, `/dev/md${unit}`)
  t.teardown(() => fs.rmSync(`/dev/md${unit}`))
  return `/dev/md${unit}`
}

const NEEDS = { root: true, tools: ['losetup'] }

t.test('FLUSH and the map barrier send DIOCGFLUSH to a disk RW, until it says it has no cache', async t => {
  if (!requires(t, NEEDS)) return
  const ro = BlockDevice.open(await disk(t), { writable: false })
  const rw = BlockDevice.open(await disk(t), { writable: true })
  t.teardown(() => {
    ro.close()
    rw.close()
  })
  const engine = new Engine({ ro, rw, size: SIZE, sectorSize: 512, map: new SectorStates(SIZE / 512) })
  const before = calls().flushes
  await engine.write(0, Buffer.alloc(4096, 1))
  t.equal(await serveBio(engine, { cmd: BioCmd.FLUSH, offset: 0, length: 0, data: Buffer.alloc(0) }), 0)
  t.equal(calls().flushes, before + 1, 'a FLUSH bio reaches the disk as DIOCGFLUSH')

  process.env.GGSIM_DISK_NO_CACHE = '1'
  t.teardown(() => delete process.env.GGSIM_DISK_NO_CACHE)
  await rw.datasync()
  const asked = calls().flushes
  t.ok(asked > before + 1, 'asked again: EOPNOTSUPP (asked twice, to learn the errno koffi loses)')
  await rw.datasync()
  t.equal(calls().flushes, asked, 'a disk without a write cache is not asked again, and its flush succeeds')
})

t.test('a map on a disk RW is made durable with DIOCGFLUSH', async t => {
  if (!requires(t, NEEDS)) return
  const { MapFile } = await import('../../lib/persist/map-file.js')
  const { mapOnRw } = await import('../../lib/persist/map-store.js')
  const { rwIdentity } = await import('../../lib/persist/rw-binding.js')
  const ro = BlockDevice.open(await disk(t), { writable: false })
  const rw = BlockDevice.open(await disk(t, { fill: 'zero' }), { writable: true })
  const placement = mapOnRw(rw, SIZE - (1 << 20), 512)
  t.teardown(() => {
    placement.close()
    ro.close()
    rw.close()
  })
  const map = new SectorStates((SIZE - (1 << 20)) / 512)
  const before = calls().flushes
  const identity = rwIdentity(rw, SIZE - (1 << 20), { mapInTail: true })
  const opened = await MapFile.open({ ...placement, ro, rw, identity, size: SIZE - (1 << 20), sectorSize: 512, map, force: true })
  t.ok(calls().flushes > before, `the new map's header is flushed to the disk (${calls().flushes - before} DIOCGFLUSH)`)
  await opened.file.closeClean()
})

t.test("revert gives a disk RW's space back with DIOCGDELETE; zero() trusts it only on an md", async t => {
  if (!requires(t, NEEDS)) return
  const plain = BlockDevice.open(await disk(t), { writable: true })
  const md = BlockDevice.open(await disk(t, { md: true }), { writable: true })
  t.teardown(() => {
    plain.close()
    md.close()
  })
  const before = calls().deletes
  t.equal(await plain.release(0, SIZE), true, 'release: a BIO_DELETE over the whole disk')
  t.equal(calls().deletes, before + 1)

  const readBack = async (d: ReturnType<typeof BlockDevice.open>, at: number, length: number) => {
    const buf = Buffer.alloc(length, 0xff)
    await d.read(buf, 0, length, at)
    return buf
  }
  await plain.write(Buffer.alloc(65536, 7), 0, 65536, 0)
  await plain.zero(0, 65536)
  t.equal(calls().deletes, before + 1, "a disk's TRIM may read back anything: zeros are written instead")
  t.same(await readBack(plain, 0, 65536), Buffer.alloc(65536))

  await md.write(Buffer.alloc(65536, 7), 0, 65536, 0)
  await md.zero(0, 65536)
  t.equal(calls().deletes, before + 2, 'an md frees or zeroes what is deleted: DIOCGDELETE')
  t.same(await readBack(md, 0, 65536), Buffer.alloc(65536))
})
