// End to end as root: the original kernel module's test procedure, on Linux
// (ext4 instead of UFS), through a real kernel block device. Every test
// leaves no loop device, mount, FUSE mount, daemon or file behind.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { makeImage, repoRoot, requires, rowr, run, sha256, shortDir, startServe, waitUntil } from '../fixtures/helpers.js'
import { ext4Image, leftovers, mount } from '../fixtures/kernel.js'

const NEEDS = { root: true, fuse: true, tools: ['nbdfuse', 'losetup', 'fusermount3', 'mkfs.ext4', 'e2fsck', 'mount'] }

/** A work directory whose every trace is removed, even when a test fails. */
const workdir = (t: Test) => {
  const dir = shortDir(t)
  // Reached through a symbolic link, as /var/run is one to /run (the kernel
  // reports mounts and loop backing files by their real paths), and not
  // there yet, as on a fresh machine.
  fs.mkdirSync(path.join(dir, 'real'))
  fs.symlinkSync('real', path.join(dir, 'link'))
  const runDir = path.join(dir, 'link', 'run')
  const mnt = path.join(dir, 'mnt')
  fs.mkdirSync(mnt)
  const cli = (...args: string[]) => rowr(runDir, args)
  t.teardown(async () => {
    await run('umount', ['-l', mnt])
    for (const name of fs.existsSync(runDir) ? fs.readdirSync(runDir) : []) {
      if (!name.endsWith('.log')) await cli('destroy', '-f', name)
    }
    for (const l of leftovers(dir)) {
      if (l.startsWith('loop ')) await run('losetup', ['-d', `/dev/${l.split(' ')[1]}`])
      if (l.startsWith('mount ')) await run('umount', ['-l', l.split(' ')[5]!])
      if (l.startsWith('process ')) process.kill(Number(l.split(' ')[1]!.replace(':', '')), 'SIGKILL')
    }
  })
  return { dir, runDir, mnt, cli }
}

t.test("the original module's procedure: create, mount, change, fsck, remount, destroy", async t => {
  if (!requires(t, NEEDS)) return
  const { dir, runDir, mnt, cli } = workdir(t)
  const base = await ext4Image(dir)
  const baseHash = sha256(base)
  const rw = makeImage(path.join(dir, 'rw.img'), fs.statSync(base).size, 'zero')

  const created = await cli('create', 'rowr0', base, rw)
  t.equal(created.code, 0, created.stderr)
  const device = created.stdout.trim().split('\n').pop()!
  t.match(device, /^\/dev\/loop\d+$/, 'the last line of stdout is the block device')

  await mount(t, device, mnt)
  t.equal(
    fs.readFileSync(path.join(mnt, 'lib/engine/sector-map.ts'), 'utf8'),
    fs.readFileSync(path.join(repoRoot, 'lib/engine/sector-map.ts'), 'utf8'),
    'the files of the read-only image are there',
  )
  fs.renameSync(path.join(mnt, 'loader.4th'), path.join(mnt, 'lua/loader.4th'))
  fs.rmSync(path.join(mnt, 'pxeboot'))
  fs.rmSync(path.join(mnt, 'yargs/locales'), { recursive: true })
  fs.writeFileSync(path.join(mnt, 'new.txt'), 'written through geom-rowr\n')
  fs.writeFileSync(path.join(mnt, 'big.bin'), Buffer.alloc(5 << 20, 7))

  const busy = await cli('destroy', 'rowr0')
  t.equal(busy.code, 1, 'destroy refuses while mounted')
  t.match(
    busy.stderr,
    new RegExp(
      `rowr0 \\(${device}\\) is in use: it is mounted or held open; unmount it \\(umount ${device}\\) first; destroy -f stops it even so, and a file system on it then loses what it has not written yet`,
    ),
  )

  t.equal((await run('umount', [mnt])).code, 0)
  const fsck = await run('e2fsck', ['-fn', device])
  t.equal(fsck.code, 0, `e2fsck -fn is clean: ${fsck.stdout}`)

  await mount(t, device, mnt)
  t.equal(fs.readFileSync(path.join(mnt, 'new.txt'), 'utf8'), 'written through geom-rowr\n')
  t.equal(fs.readFileSync(path.join(mnt, 'lua/loader.4th'), 'utf8'), 'forth\n')
  t.notOk(fs.existsSync(path.join(mnt, 'pxeboot')))
  t.notOk(fs.existsSync(path.join(mnt, 'yargs/locales')))
  t.same(fs.readFileSync(path.join(mnt, 'big.bin')), Buffer.alloc(5 << 20, 7))
  t.equal((await run('umount', [mnt])).code, 0)

  const status = JSON.parse((await cli('status', '--json', 'rowr0')).stdout)
  t.equal(status.device, device)
  t.ok(status.writtenBytes >= 5 << 20, `changes are on RW (${status.writtenBytes} bytes)`)
  t.ok(status.stats.readBytesFromRo > 0, 'unchanged data came from RO')

  const destroyed = await cli('destroy', 'rowr0')
  t.equal(destroyed.code, 0, destroyed.stderr)
  t.equal(sha256(base), baseHash, 'the read-only image is unchanged')
  t.same(leftovers(dir), [], 'no loop device, mount or process is left')
  t.same(
    fs.readdirSync(runDir).filter(n => !n.endsWith('.log')),
    [],
    'no run state is left',
  )
})

t.test('RW auto, destroy -f while mounted: users get I/O errors, nothing is left', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, mnt, cli } = workdir(t)
  const base = await ext4Image(dir, '32M')
  const name = `force${process.pid}`
  const autoFile = `/var/tmp/geom-rowr-${name}.rw`
  t.teardown(() => fs.rmSync(autoFile, { force: true }))
  const created = await cli('create', name, base, 'auto')
  t.equal(created.code, 0, created.stderr)
  const device = created.stdout.trim()
  t.equal(fs.statSync(autoFile).size, fs.statSync(base).size, "auto RW has RO's size")
  await mount(t, device, mnt)
  fs.writeFileSync(path.join(mnt, 'x'), 'x')
  const forced = await cli('destroy', '-f', name)
  t.equal(forced.code, 0, forced.stderr)
  t.equal(fs.existsSync(autoFile), false, 'auto RW is removed')
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3')
  const reread = await run('cat', [path.join(mnt, 'lib/errors.ts')])
  t.not(reread.code, 0, 'reading the forced-away device fails')
  t.equal((await run('umount', ['-l', mnt])).code, 0)
  t.ok(await waitUntil(() => leftovers(dir).length === 0, 15_000), `nothing left: ${leftovers(dir).join('; ')}`)
})

t.test('a daemon killed with its device attached is cleaned up, and the NAME is free', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, runDir, cli } = workdir(t)
  const base = makeImage(path.join(dir, 'ro.img'), 8 << 20)
  const rw = makeImage(path.join(dir, 'rw.img'), 8 << 20, 'zero')
  t.equal((await cli('create', 'k0', base, rw)).code, 0)
  const state = JSON.parse(fs.readFileSync(`${runDir}/k0/state.json`, 'utf8'))
  process.kill(state.pid, 'SIGKILL')
  await waitUntil(() => !fs.existsSync(`/proc/${state.pid}`))
  const list = await cli('list')
  t.match(
    list.stderr,
    new RegExp(`k0: cleaned up after a daemon that is gone: its daemon \\(pid ${state.pid}\\) is gone; detached ${state.device}`),
  )
  t.same(leftovers(dir), [])
  const again = await cli('create', 'k0', base, rw)
  t.equal(again.code, 0, again.stderr)
  t.equal((await cli('destroy', 'k0')).code, 0)
  t.same(leftovers(dir), [])
})

t.test('disk devices: sizes and sector sizes come from the kernel', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, runDir } = workdir(t)
  const roFile = makeImage(path.join(dir, 'ro.img'), 8 << 20)
  const rwFile = makeImage(path.join(dir, 'rw.img'), 8 << 20, 'zero')
  const loop = async (file: string, sector: number): Promise<string> => {
    const r = await run('losetup', ['--find', '--show', '--sector-size', String(sector), file])
    t.equal(r.code, 0, r.stderr)
    const device = r.stdout.trim()
    t.teardown(() => run('losetup', ['-d', device]))
    return device
  }
  const roDev = await loop(roFile, 4096)
  const rwDev = await loop(rwFile, 512)
  const s = await startServe(t, runDir, ['--name', 'disk0', path.basename(roDev), rwDev])
  const info = JSON.parse((await run('nbdinfo', ['--json', s.uri])).stdout).exports[0]
  t.equal(info['export-size'], 8 << 20, 'BLKGETSIZE64')
  t.equal(info.block_size_minimum, 4096, 'the larger of the two sector sizes (BLKSSZGET)')
  const copy = path.join(dir, 'copy.img')
  t.equal((await run('nbdcopy', [s.uri, copy])).code, 0)
  t.equal(sha256(copy), sha256(roFile), 'reads through the loop devices')
})

t.test('RW that cannot be written is refused, with nothing left', async t => {
  if (!requires(t, { ...NEEDS, tools: [...NEEDS.tools, 'chattr'] })) return
  const { dir, runDir, cli } = workdir(t)
  const base = makeImage(path.join(dir, 'ro.img'), 1 << 20)
  const rw = makeImage(path.join(dir, 'rw.img'), 1 << 20, 'zero')
  const immutable = await run('chattr', ['+i', rw])
  if (immutable.code !== 0) {
    // Not a machine fault: the file system of the test directory decides.
    t.plan(0, `skipped: this file system has no immutable files: ${immutable.stderr}`)
    return
  }
  t.teardown(() => run('chattr', ['-i', rw]))
  const r = await cli('create', 'ro0', base, rw)
  t.equal(r.code, 1)
  t.match(r.stderr, new RegExp(`${rw} cannot be opened for writing \\(EPERM\\)`))
  t.same(
    fs.readdirSync(runDir).filter(n => !n.endsWith('.log')),
    [],
  )
  t.same(leftovers(dir), [])
})

t.test('create refuses a sector size a Linux block device cannot take', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, runDir, cli } = workdir(t)
  const base = makeImage(path.join(dir, 'ro.img'), 1 << 20)
  const rw = makeImage(path.join(dir, 'rw.img'), 1 << 20, 'zero')
  const r = await cli('create', '--sector-size', '8192', 'big0', base, rw)
  t.equal(r.code, 1)
  t.match(r.stderr, /larger than the 4096 bytes a Linux block device allows; use --sector-size 4096 or smaller, or --no-attach/)
  t.same(
    fs.readdirSync(runDir).filter(n => !n.endsWith('.log')),
    [],
  )
})

t.test('resume: ext4 written through the device survives destroy and create with --map', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, mnt, cli } = workdir(t)
  const base = await ext4Image(dir, '32M')
  const baseHash = sha256(base)
  const rw = makeImage(path.join(dir, 'rw.img'), fs.statSync(base).size, 'zero')
  const map = path.join(dir, 'rw.map')

  const first = await cli('create', '--map', map, 'res0', base, rw)
  t.equal(first.code, 0, first.stderr)
  await mount(t, first.stdout.trim(), mnt)
  fs.writeFileSync(path.join(mnt, 'kept.txt'), 'written before destroy\n')
  fs.cpSync(path.join(repoRoot, 'lib/engine'), path.join(mnt, 'engine-copy'), { recursive: true })
  fs.rmSync(path.join(mnt, 'pxeboot'))
  t.equal((await run('umount', [mnt])).code, 0)
  t.equal((await cli('destroy', 'res0')).code, 0)

  const second = await cli('create', '--map', map, 'res0', base, rw)
  t.equal(second.code, 0, second.stderr)
  const device = second.stdout.trim()
  const fsck = await run('e2fsck', ['-fn', device])
  t.equal(fsck.code, 0, `e2fsck -fn is clean after the resume: ${fsck.stdout}`)
  await mount(t, device, mnt)
  t.equal(fs.readFileSync(path.join(mnt, 'kept.txt'), 'utf8'), 'written before destroy\n')
  t.equal(
    fs.readFileSync(path.join(mnt, 'engine-copy/sector-map.ts'), 'utf8'),
    fs.readFileSync(path.join(repoRoot, 'lib/engine/sector-map.ts'), 'utf8'),
  )
  t.notOk(fs.existsSync(path.join(mnt, 'pxeboot')))
  t.equal((await run('umount', [mnt])).code, 0)
  t.equal((await cli('destroy', 'res0')).code, 0)
  t.equal(sha256(base), baseHash, 'the read-only image is unchanged')
  t.same(leftovers(dir), [])
})
