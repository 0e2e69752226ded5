// A signal never takes an open kernel device away: at shutdown init sends
// SIGTERM to every process while the root file system is still mounted on
// it. The daemon flushes, says so and keeps serving; once nothing holds the
// device, the same signal stops it. On Linux (nbdfuse + loop) and through
// the ggctl simulator (GEOM Gate's code path).
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { alive, cli, makeImage, repoRoot, requires, run, shortDir, waitUntil } from '../fixtures/helpers.js'
import { ext4Image, leftovers, mount } from '../fixtures/kernel.js'

const simulator = path.join(repoRoot, 'build/ggsim.so')

type Platform = 'linux' | 'freebsd-sim'

const NEEDS: Record<Platform, Parameters<typeof requires>[1]> = {
  linux: { root: true, fuse: true, tools: ['nbdfuse', 'losetup', 'mkfs.ext4', 'mount'] },
  'freebsd-sim': { root: true, fuse: true, tools: ['losetup', 'mkfs.ext4', 'mount'] },
}

const setup = (t: Test, platform: Platform) => {
  const dir = shortDir(t)
  const runDir = path.join(dir, 'run')
  const sim = path.join(dir, 'ggsim')
  const mnt = path.join(dir, 'mnt')
  fs.mkdirSync(mnt)
  const env: Record<string, string> =
    platform === 'linux'
      ? { GEOM_ROWR_RUNDIR: runDir }
      : { GEOM_ROWR_RUNDIR: runDir, GEOM_ROWR_PLATFORM: 'freebsd', GEOM_ROWR_LIBC: simulator, GGSIM_MOUNT: sim }
  const rowr = (...args: string[]) => run(process.execPath, [cli, ...args], env)
  const loops: string[] = []
  t.teardown(async () => {
    await run('umount', ['-l', mnt])
    for (const device of loops) await run('losetup', ['-d', device])
    for (const name of fs.existsSync(runDir) ? fs.readdirSync(runDir) : []) {
      if (!name.endsWith('.log')) await rowr('destroy', '-f', name)
    }
    for (const l of leftovers(dir)) {
      if (l.startsWith('mount ')) await run('umount', ['-l', l.split(' ')[5]!])
    }
  })
  /** The block device to mount: the daemon's own, or a loop device on the simulated provider's file. */
  const blockDevice = async (device: string): Promise<string> => {
    if (platform === 'linux') return device
    const r = await run('losetup', ['--find', '--show', '--direct-io=on', device])
    t.equal(r.code, 0, r.stderr)
    loops.push(r.stdout.trim())
    return r.stdout.trim()
  }
  const unblock = async (device: string): Promise<void> => {
    if (platform === 'linux') return
    t.equal((await run('losetup', ['-d', device])).code, 0)
    loops.splice(loops.indexOf(device), 1)
  }
  return { dir, runDir, mnt, rowr, blockDevice, unblock }
}

for (const platform of ['linux', 'freebsd-sim'] as const) {
  t.test(`${platform}: SIGTERM and SIGHUP leave a mounted device working; with nothing on it SIGTERM stops it`, async t => {
    if (!requires(t, NEEDS[platform])) return
    const { dir, runDir, mnt, rowr, blockDevice, unblock } = setup(t, platform)
    const base = await ext4Image(dir)
    const rw = makeImage(path.join(dir, 'rw.img'), fs.statSync(base).size, 'zero')
    const created = await rowr('create', 'sig0', base, rw)
    t.equal(created.code, 0, created.stderr)
    const device = created.stdout.trim().split('\n').pop()!
    const pid = JSON.parse(fs.readFileSync(path.join(runDir, 'sig0/state.json'), 'utf8')).pid as number
    const log = () => fs.readFileSync(path.join(runDir, 'sig0.log'), 'utf8')
    const block = await blockDevice(device)
    await mount(t, block, mnt)
    fs.writeFileSync(path.join(mnt, 'before.txt'), 'written before the signal\n')

    for (const [n, signal] of (['SIGTERM', 'SIGHUP'] as const).entries()) {
      process.kill(pid, signal)
      const said = () =>
        log()
          .split('\n')
          .filter(l => l.includes(`${signal}: ${device} is open (mounted?), so sig0 keeps serving it`)).length
      t.ok(await waitUntil(() => said() > 0), `${signal}: the daemon says it keeps serving: ${log()}`)
      t.ok(alive(pid), `${signal}: the daemon is still there`)
      const file = path.join(mnt, `after-${n}.bin`)
      fs.writeFileSync(file, Buffer.alloc(1 << 20, n + 1))
      t.equal((await run('sync', ['-f', file])).code, 0, `${signal}: the file system still takes writes and flushes`)
      t.ok(fs.readFileSync(rw).includes(Buffer.alloc(64 << 10, n + 1)), `${signal}: the data reached RW through the device`)
    }
    t.equal(fs.readFileSync(path.join(mnt, 'before.txt'), 'utf8'), 'written before the signal\n')
    t.notMatch(log(), /stopping/, 'nothing was torn down')

    t.equal((await run('umount', [mnt])).code, 0)
    await unblock(block)
    process.kill(pid, 'SIGTERM')
    t.ok(await waitUntil(() => !alive(pid)), 'with nothing on it, SIGTERM stops the daemon')
    t.match(log(), /SIGTERM: stopping/)
    t.notOk(fs.existsSync(path.join(runDir, 'sig0')), 'its state is gone')
    t.same(
      leftovers(dir).filter(l => !l.includes(path.join(dir, 'mnt'))),
      [],
      'no loop device, mount or process left',
    )
  })
}
