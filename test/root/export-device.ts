// export --to-device writes the whole device onto an existing disk (real
// loop devices here), on a running device and on a stopped one; without the
// option a disk is refused, and with it anything in use is: a mounted disk,
// the device's own RO, RW or map, a loop device over RO's file, another
// running device's RW, a disk too small. A refusal writes nothing.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { cli, makeImage, requires, run, sha256, waitUntil } from '../fixtures/helpers.js'
import { ext4Image, kernelLab, mount } from '../fixtures/kernel.js'

const NEEDS = { root: true, tools: ['losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'qemu-io'] }
const SIZE = 8 << 20

const setup = (t: Test) => {
  const { dir, runDir, mnt, g, loop } = kernelLab(t)
  const ro = makeImage(path.join(dir, 'ro.img'), SIZE)
  const rw = makeImage(path.join(dir, 'rw.img'), SIZE, 'zero')
  const map = path.join(dir, 'rw.map')
  /** The device with a few writes, one of them zeros over RO's random bytes; its NBD URI. */
  const create = async (name: string, rwPath = rw): Promise<void> => {
    const r = await g('create', '--no-attach', '--map', map, name, ro, rwPath)
    t.equal(r.code, 0, r.stderr)
    const uri = r.stdout.trim()
    const w = await run('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0x5a 4096 65536', '-c', 'write -z 1048576 131072', '-c', 'flush'])
    t.equal(w.code, 0, w.stderr)
  }
  /** What the device shows. */
  const expected = (): Buffer => {
    const image = fs.readFileSync(ro)
    image.fill(0x5a, 4096, 4096 + 65536)
    image.fill(0, 1 << 20, (1 << 20) + 131072)
    return image
  }
  /** A loop device over a file of `size` bytes of 0xee: a disk whose every byte export must write. */
  const disk = async (name: string, size = SIZE): Promise<string> => {
    const file = path.join(dir, name)
    fs.writeFileSync(file, Buffer.alloc(size, 0xee))
    return loop(file)
  }
  const head = (device: string, size = SIZE): Buffer => {
    const fd = fs.openSync(device, 'r')
    try {
      const b = Buffer.alloc(size)
      fs.readSync(fd, b, 0, size, 0)
      return b
    } finally {
      fs.closeSync(fd)
    }
  }
  const offline = ['--ro', ro, '--rw', rw, '--map', map]
  return { dir, runDir, mnt, g, loop, ro, rw, map, create, expected, disk, head, offline }
}

t.test('onto a free loop device, byte for byte, running and stopped; past its end nothing is touched', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  await s.create('x1')
  const target = await s.disk('big.img', SIZE + (1 << 20))

  const running = await s.g('export', '--to-device', '--json', 'x1', target)
  t.equal(running.code, 0, running.stderr)
  t.same(JSON.parse(running.stdout), { file: target, bytes: SIZE, dataBytes: SIZE, device: true })
  t.ok(s.head(target).equals(s.expected()), 'the disk holds the device, zeros included')
  t.ok(
    s
      .head(target, SIZE + (1 << 20))
      .subarray(SIZE)
      .equals(Buffer.alloc(1 << 20, 0xee)),
    "the disk's tail is as it was",
  )

  t.equal((await s.g('destroy', 'x1')).code, 0)
  const other = await s.disk('other.img')
  const stopped = await s.g('export', '--to-device', ...s.offline, other)
  t.equal(stopped.code, 0, stopped.stderr)
  t.match(stopped.stdout, `${s.rw}: exported ${SIZE} bytes onto ${other}, every byte written`)
  t.ok(s.head(other).equals(s.expected()), "the stopped device's export is the same")
})

t.test('a disk without --to-device, and --to-device without a disk, are refused', async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  await s.create('x2')
  const target = await s.disk('t.img')
  const before = sha256(target)
  const plain = await s.g('export', 'x2', target)
  t.equal(plain.code, 1)
  t.match(
    plain.stderr,
    `${target} is a disk device, and export writes a new image file, never over an existing one: to write the device onto all of ${target} (overwriting it), give --to-device`,
  )
  const file = path.join(s.dir, 'plain.img')
  fs.writeFileSync(file, 'keep')
  const onFile = await s.g('export', '--to-device', 'x2', file)
  t.equal(onFile.code, 1)
  t.match(
    onFile.stderr,
    `${file} is not a disk device, and --to-device writes onto an existing disk device: give a disk device, or drop --to-device`,
  )
  t.equal(fs.readFileSync(file, 'utf8'), 'keep')
  const missing = await s.g('export', '--to-device', 'x2', path.join(s.dir, 'none'))
  t.equal(missing.code, 1)
  t.match(missing.stderr, 'does not exist, and --to-device writes onto an existing disk device')
  t.notOk(fs.existsSync(path.join(s.dir, 'none')))
  t.equal(sha256(target), before, 'nothing was written')
})

t.test("refused: mounted, too small, the device's own RW, a loop over its RO, another device's RW", async t => {
  if (!requires(t, NEEDS)) return
  const s = setup(t)
  const rwDisk = await s.loop(s.rw)
  await s.create('x3', rwDisk)
  const roHash = sha256(s.ro)
  const refused = async (args: string[], message: string): Promise<void> => {
    const r = await s.g('export', '--to-device', ...args)
    t.equal(r.code, 1, `refused: ${args.join(' ')}`)
    t.match(r.stderr, message)
  }
  const expectRefused = async (args: string[], message: string, victim: string): Promise<void> => {
    const before = sha256(victim)
    await refused(args, message)
    t.equal(sha256(victim), before, `${victim} is unchanged`)
  }

  // A mounted file system changes its device by itself (journal, lazy
  // inode-table init): that it was not overwritten, e2fsck says.
  const ext4 = await s.loop(await ext4Image(s.dir, '32M'))
  await mount(t, ext4, s.mnt)
  await refused(
    ['x3', ext4],
    `${ext4} is mounted on ${s.mnt}; export --to-device overwrites all of it, so it must be in use by nothing: choose another device; only if nothing on it is needed: umount ${s.mnt}, and run this again`,
  )
  t.equal((await run('umount', [s.mnt])).code, 0)
  const fsck = await run('e2fsck', ['-fn', ext4])
  t.equal(fsck.code, 0, `the mounted file system is intact: ${fsck.stdout}`)

  const small = await s.disk('small.img', SIZE - (1 << 20))
  await expectRefused(
    ['x3', small],
    `${small} holds ${SIZE - (1 << 20)} bytes, fewer than the device's ${SIZE}: choose a disk device of at least ${SIZE} bytes`,
    small,
  )

  await expectRefused(
    ['x3', rwDisk],
    `${rwDisk} is this device's RW; export never writes a device onto its own RO, RW or map: choose another device to export onto`,
    s.rw,
  )

  const overRo = await s.loop(s.ro)
  await expectRefused(
    ['x3', overRo],
    `${overRo} shares its bytes with its backing file ${s.ro}, which is this device's RO; export never writes a device onto its own RO, RW or map: choose another device to export onto (to write the device's changes into RO, use geom-rowr commit)`,
    s.ro,
  )

  // Another device's RW, from a stopped device's export.
  const ro2 = makeImage(path.join(s.dir, 'ro2.img'), SIZE)
  const rw2 = makeImage(path.join(s.dir, 'rw2.img'), SIZE, 'zero')
  t.equal((await s.g('destroy', 'x3')).code, 0)
  const otherRw = await s.loop(rw2)
  const other = await s.g('create', '--no-attach', 'x4', ro2, otherRw)
  t.equal(other.code, 0, other.stderr)
  await expectRefused(
    [...s.offline.map(a => (a === s.rw ? rwDisk : a)), otherRw],
    `${otherRw} belongs to running device x4 as its RW; export never writes onto a geom-rowr device's RO, RW or map: choose another device to export onto`,
    rw2,
  )

  // Stopped, its own RW and map are still its own.
  await expectRefused([...s.offline.map(a => (a === s.rw ? rwDisk : a)), rwDisk], `${rwDisk} is this device's RW`, s.rw)
  t.equal(sha256(s.ro), roHash, 'RO was never written')
})

t.test("the final sync is drawn while the running device's daemon syncs the disk", async t => {
  if (!requires(t, { ...NEEDS, fuse: true, tools: [...NEEDS.tools, 'nbdkit', 'nbdfuse', 'fusermount3', 'script'] })) return
  const s = setup(t)
  await s.create('x5')
  // A disk whose writes each take 200 ms to land: export's writes stay in
  // its page cache, and the sync that writes them back takes seconds.
  const socket = path.join(s.dir, 'slow.sock')
  const fuse = path.join(s.dir, 'fuse')
  fs.mkdirSync(fuse)
  const nbdkit = spawn('nbdkit', ['--foreground', '--unix', socket, '--filter=delay', 'memory', String(SIZE), 'delay-write=200ms'], {
    stdio: 'ignore',
  })
  const nbdfuse = new Promise<ReturnType<typeof spawn>>(
    resolve =>
      void waitUntil(() => fs.existsSync(socket)).then(() =>
        resolve(spawn('nbdfuse', [path.join(fuse, 'disk'), '--unix', socket], { stdio: 'ignore' })),
      ),
  )
  let slow: string | undefined
  t.teardown(async () => {
    // The loop device first: while it holds the FUSE file, the unmount fails.
    if (slow) await run('losetup', ['-d', slow])
    await run('fusermount3', ['-u', fuse])
    const f = await nbdfuse
    if (f.exitCode === null) await new Promise(resolve => f.once('exit', resolve))
    nbdkit.kill('SIGTERM')
    if (nbdkit.exitCode === null) await new Promise(resolve => nbdkit.once('exit', resolve))
  })
  await nbdfuse
  t.ok(await waitUntil(() => fs.existsSync(path.join(fuse, 'disk'))), 'the slow disk is a file')
  const attached = await run('losetup', ['--find', '--show', path.join(fuse, 'disk')])
  t.equal(attached.code, 0, attached.stderr)
  slow = attached.stdout.trim()

  const command = [process.execPath, cli, 'export', '--to-device', 'x5', slow].map(a => `'${a}'`).join(' ')
  const drawn = await run('script', ['-q', '-e', '-c', command, '/dev/null'], { GEOM_ROWR_RUNDIR: s.runDir })
  t.equal(drawn.code, 0, drawn.code === 0 ? 'exported on a terminal' : drawn.stdout)
  t.match(drawn.stdout, /100% 8\.0 MiB\/8\.0 MiB syncing\.\.\./, 'the bar names the sync the daemon is in')
  t.ok(s.head(slow).equals(s.expected()), 'and the disk holds the device')
})
