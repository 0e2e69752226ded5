// On FreeBSD, as root: the original geom_rowr module's test procedure, step
// for step, with geom-rowr over GEOM Gate in place of the kernel module.
// Elsewhere every test here says it was skipped and why (under CI too: no
// FreeBSD machine is reachable from Linux CI, and the ggctl simulator runs
// the same code path there, in test/root/ggate-sim.ts).
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { cli, run, sha256, shortDir } from '../fixtures/helpers.js'

const IMAGE_MIB = 512

const onFreeBsdAsRoot = (t: Test): boolean => {
  if (process.platform === 'freebsd' && process.getuid?.() === 0) return true
  const why = process.platform !== 'freebsd' ? `this is ${process.platform}, not FreeBSD` : 'not root'
  t.plan(0, `skipped: runs only on FreeBSD as root (${why})`)
  return false
}

const sh = async (t: Test, command: string, args: string[]): Promise<string> => {
  const r = await run(command, args)
  t.equal(r.code, 0, `${command} ${args.join(' ')}: ${r.stderr}`)
  return r.stdout.trim()
}

/** md devices made here, detached at the end whatever happens. */
const mds = (t: Test) => {
  const made: string[] = []
  t.teardown(async () => {
    for (const md of made.reverse()) await run('mdconfig', ['-d', '-u', md.replace(/^md/, ''), '-o', 'force'])
  })
  return async (args: string[]): Promise<string> => {
    const md = await sh(t, 'mdconfig', ['-a', ...args])
    made.push(md)
    return md
  }
}

/** test.img: newfs, holding a copy of /boot, as the module's README makes it. */
const bootImage = async (t: Test, dir: string, mnt: string): Promise<string> => {
  const image = path.join(dir, 'test.img')
  await sh(t, 'dd', ['if=/dev/zero', `of=${image}`, 'bs=1m', `count=${IMAGE_MIB}`])
  const md = await sh(t, 'mdconfig', ['-a', '-t', 'vnode', '-f', image])
  try {
    await sh(t, 'newfs', [`/dev/${md}`])
    await sh(t, 'mount', [`/dev/${md}`, mnt])
    await sh(t, 'cp', ['-R', '/boot/', mnt])
    await sh(t, 'umount', [mnt])
  } finally {
    await run('mdconfig', ['-d', '-u', md.replace(/^md/, '')])
  }
  return image
}

t.test("the module's procedure: create rowr0 md0 md1, mount, mv, rm, fsck_ffs, destroy", async t => {
  if (!onFreeBsdAsRoot(t)) return
  const dir = shortDir(t)
  const mnt = path.join(dir, 'mnt')
  fs.mkdirSync(mnt)
  t.teardown(async () => {
    await run('umount', ['-f', mnt])
    await run(process.execPath, [cli, 'destroy', '-f', 'rowr0'])
  })
  const image = await bootImage(t, dir, mnt)
  const imageHash = sha256(image)
  if ((await run('kldstat', ['-m', 'g_gate'])).code !== 0) await sh(t, 'kldload', ['geom_gate'])
  const md = mds(t)
  const ro = await md(['-t', 'vnode', '-o', 'readonly', '-f', image])
  const rw = await md(['-t', 'swap', '-s', `${IMAGE_MIB}M`])

  const created = await run(process.execPath, [cli, 'create', 'rowr0', ro, rw])
  t.equal(created.code, 0, created.stderr)
  t.equal(created.stdout.trim(), '/dev/rowr0')
  await sh(t, 'mount', ['/dev/rowr0', mnt])
  t.ok(fs.existsSync(path.join(mnt, 'pxeboot')), 'the files are already there')
  const forth = fs.readdirSync(mnt).filter(n => n.endsWith('.4th'))
  t.ok(forth.length > 0, 'the .4th files are there')
  await sh(t, 'sh', ['-c', `mv ${mnt}/*.4th ${mnt}/lua; rm ${mnt}/pxeboot`])
  const busy = await run(process.execPath, [cli, 'destroy', 'rowr0'])
  t.equal(busy.code, 1)
  t.match(busy.stderr, 'rowr0 (/dev/rowr0) is open: unmount it')
  await sh(t, 'umount', [mnt])
  await sh(t, 'fsck_ffs', ['-n', '/dev/rowr0'])
  await sh(t, 'mount', ['/dev/rowr0', mnt])
  t.notOk(fs.existsSync(path.join(mnt, 'pxeboot')), 'pxeboot is gone')
  t.ok(fs.existsSync(path.join(mnt, 'lua', forth[0]!)), 'the .4th files moved to lua/')
  await sh(t, 'umount', [mnt])
  const destroyed = await run(process.execPath, [cli, 'destroy', 'rowr0'])
  t.equal(destroyed.code, 0, destroyed.stderr)
  t.notOk(fs.existsSync('/dev/rowr0'), 'the provider is gone')
  t.equal(sha256(image), imageHash, 'the read-only image is unchanged')
})

t.test('a swap-backed md of the wrong size: mediasize mismatch, with the mdconfig fix', async t => {
  if (!onFreeBsdAsRoot(t)) return
  const dir = shortDir(t)
  const image = path.join(dir, 'small.img')
  await sh(t, 'truncate', ['-s', `${IMAGE_MIB}M`, image])
  const md = mds(t)
  const ro = await md(['-t', 'vnode', '-o', 'readonly', '-f', image])
  const rw = await md(['-t', 'swap', '-s', `${IMAGE_MIB / 2}M`])
  const r = await run(process.execPath, [cli, 'create', 'rowr1', ro, rw])
  t.equal(r.code, 1)
  t.match(
    r.stderr,
    `mediasize mismatch: /dev/${ro} is ${IMAGE_MIB << 20} bytes, /dev/${rw} is ${IMAGE_MIB << 19} bytes; ` +
      `the read-write device must be at least as large: make a new md of that size (mdconfig -a -t swap -s ${IMAGE_MIB << 20}b prints its name) ` +
      `and give it as RW; /dev/${rw} is left as it is`,
  )
  t.notOk(fs.existsSync('/dev/rowr1'), 'nothing was created')
})
