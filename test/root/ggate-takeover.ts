// A GEOM Gate provider outlives its daemon, as in FreeBSD: the simulated
// kernel runs in a process of its own (test/ggsim). A daemon that ends on
// an uncaught error ends at once; without a map it destroys its provider
// first, with one it leaves the provider to a new daemon, which takes it
// over by CANCEL (create of the same NAME and map) while the file system on
// it waits. Stale cleanup never destroys a provider that is open. Signals
// never reach the threads that sleep in START.
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import t from 'tap'
import { alive, makeImage, repoRoot, requires, run, waitUntil } from '../fixtures/helpers.js'
import { ext4Image, leftovers, mount } from '../fixtures/kernel.js'
import { mounted, simulatedFreeBsd } from '../fixtures/simulated-freebsd.js'

const NEEDS = { root: true, fuse: true, tools: ['losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'dd'] }

/** How long a daemon may take to be gone once it has failed: far longer than it needs, far shorter than forever. */
const EXIT_MS = 5_000

/** The daemon gets an uncaught error once `trigger` exists (test/fixtures/fatal-error.js). */
const fatalErrorEnv = (trigger: string): Record<string, string> => ({
  NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(path.join(repoRoot, 'test/fixtures/fatal-error.js')).href}`,
  GEOM_ROWR_TEST_FATAL: trigger,
})

t.test('an uncaught error in a daemon without a map: it exits at once and its provider is destroyed', async t => {
  if (!requires(t, NEEDS)) return
  const trigger = path.join('/tmp', `rowr-fatal-${process.pid}-0`)
  t.teardown(() => fs.rmSync(trigger, { force: true }))
  const { dir, runDir, sim, rowr, loop, daemonPid } = simulatedFreeBsd(t, fatalErrorEnv(trigger))
  const base = makeImage(path.join(dir, 'ro.img'), 8 << 20)
  const rw = makeImage(path.join(dir, 'rw.img'), 8 << 20, 'zero')
  const created = await rowr('create', 'x0', base, rw)
  t.equal(created.code, 0, created.stderr)
  const provider = created.stdout.trim()
  const pid = daemonPid('x0')
  const device = await loop(provider)

  fs.writeFileSync(trigger, '')
  const gone = await waitUntil(() => !alive(pid), EXIT_MS)
  t.ok(gone, 'the daemon is gone')
  // A daemon that hangs in its exit would leave the reads below waiting forever.
  if (!gone) return
  t.match(fs.readFileSync(path.join(runDir, 'x0.log'), 'utf8'), 'an uncaught error, injected by test/fixtures/fatal-error.js')
  t.notOk(fs.existsSync(provider), 'its provider was destroyed on the way out')
  const read = await run('dd', [`if=${device}`, 'of=/dev/null', 'bs=64k', 'count=1', 'iflag=direct'])
  t.not(read.code, 0, 'its users get I/O errors rather than a hang')

  const list = await rowr('list')
  t.equal(list.code, 0, list.stderr)
  t.match(list.stderr, 'x0: cleaned up after a daemon that is gone')
  t.same(
    fs.readdirSync(runDir).filter(n => !n.endsWith('.log')),
    [],
  )
  t.ok(await waitUntil(() => !mounted(sim)), 'the simulated kernel went away with its last provider')
})

t.test(
  'an uncaught error in a daemon with a map: it exits at once, and create takes the provider over under the mounted file system',
  async t => {
    if (!requires(t, NEEDS)) return
    const trigger = path.join('/tmp', `rowr-fatal-${process.pid}-1`)
    t.teardown(() => fs.rmSync(trigger, { force: true }))
    const { dir, runDir, mnt, rowr, loop, unloop, daemonPid } = simulatedFreeBsd(t, fatalErrorEnv(trigger))
    const base = await ext4Image(dir)
    const rw = makeImage(path.join(dir, 'rw.img'), fs.statSync(base).size, 'zero')
    const map = path.join(dir, 'rw.map')
    const created = await rowr('create', '--map', map, 'm0', base, rw)
    t.equal(created.code, 0, created.stderr)
    const provider = created.stdout.trim()
    const pid = daemonPid('m0')
    const device = await loop(provider)
    await mount(t, device, mnt)
    fs.writeFileSync(path.join(mnt, 'flushed.txt'), 'written and flushed before the error\n')
    t.equal((await run('sync', ['-f', path.join(mnt, 'flushed.txt')])).code, 0)
    // Written straight to the device, acknowledged, never flushed: only the
    // takeover log tells the next daemon that these sectors are on RW now.
    const pattern = path.join(dir, 'pattern')
    fs.writeFileSync(pattern, Buffer.alloc(1 << 20, 0x5a))
    const direct = await run('dd', [`if=${pattern}`, `of=${path.join(mnt, 'direct.bin')}`, 'bs=1M', 'oflag=direct'])
    t.equal(direct.code, 0, direct.stderr)

    fs.writeFileSync(trigger, '')
    const gone = await waitUntil(() => !alive(pid), EXIT_MS)
    t.ok(gone, 'the daemon is gone')
    // A daemon that hangs in its exit would leave the reads below waiting forever.
    if (!gone) return
    const log = fs.readFileSync(path.join(runDir, 'm0.log'), 'utf8')
    t.match(log, 'uncaught: Error: an uncaught error, injected by test/fixtures/fatal-error.js')
    t.match(log, 'exiting: m0 is left for a new daemon to take over')
    t.ok(fs.existsSync(provider), 'the provider stays')

    // The file system's I/O waits for a daemon, neither failing nor lost.
    const held = spawn('sh', ['-c', `echo held > ${mnt}/held.txt && sync -f ${mnt}/held.txt`], { stdio: 'ignore' })
    const heldDone = new Promise<number | null>(resolve => held.on('exit', code => resolve(code)))
    const list = await rowr('list')
    t.equal(list.code, 0, list.stderr)
    t.match(list.stdout, `${provider} (waiting for its daemon)`)
    t.match(
      list.stderr,
      `m0: its daemon (pid ${pid}) is gone, and ${provider} waits for a new one (its I/O is held, nothing is lost); start one with: geom-rowr create --map ${map} --sector-size 512 m0 ${base} ${rw}`,
    )
    t.equal(held.exitCode, null, 'the write and its sync wait')

    fs.rmSync(trigger)
    const again = await rowr('create', '--map', map, 'm0', base, rw)
    t.equal(again.code, 0, again.stderr)
    t.equal(again.stdout.trim(), provider, 'the same provider')
    t.match(fs.readFileSync(path.join(runDir, 'm0.log'), 'utf8'), `taking over ${provider} from daemon pid ${pid}, which is gone`)
    t.equal(await heldDone, 0, 'the held write and sync completed through the new daemon')
    const back = path.join(dir, 'back')
    const reread = await run('dd', [`if=${path.join(mnt, 'direct.bin')}`, `of=${back}`, 'bs=1M', 'iflag=direct'])
    t.equal(reread.code, 0, reread.stderr)
    t.ok(fs.readFileSync(back).equals(fs.readFileSync(pattern)), 'writes acknowledged before the error, never flushed, read back from RW')
    t.equal(fs.readFileSync(path.join(mnt, 'flushed.txt'), 'utf8'), 'written and flushed before the error\n')
    t.equal(fs.readFileSync(path.join(mnt, 'held.txt'), 'utf8'), 'held\n')

    t.equal((await run('umount', [mnt])).code, 0)
    const fsck = await run('e2fsck', ['-fn', device])
    t.equal(fsck.code, 0, `e2fsck -fn is clean: ${fsck.stdout}`)
    await unloop(device)
    let destroyed = await rowr('destroy', 'm0')
    await waitUntil(async () => destroyed.code === 0 || (destroyed = await rowr('destroy', 'm0')).code === 0)
    t.equal(destroyed.code, 0, destroyed.stderr)
    t.same(leftovers(dir), [], 'no loop device, mount or process is left')
  },
)

t.test('stale cleanup leaves an open provider without a map to destroy -f, and cleans up one that is not open', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, runDir, sim, env, rowr, loop, unloop, daemonPid } = simulatedFreeBsd(t)
  const base = makeImage(path.join(dir, 'ro.img'), 8 << 20)
  const made: Record<string, { provider: string; pid: number; device: string }> = {}
  for (const name of ['h0', 'h1']) {
    const created = await rowr('create', name, base, makeImage(path.join(dir, `${name}.img`), 8 << 20, 'zero'))
    t.equal(created.code, 0, created.stderr)
    const provider = created.stdout.trim()
    made[name] = { provider, pid: daemonPid(name), device: await loop(provider) }
    process.kill(made[name].pid, 'SIGKILL')
    t.ok(await waitUntil(() => !alive(made[name]!.pid)), `${name}'s daemon is killed`)
  }
  const { provider, pid, device } = made.h0!
  const message =
    `h0: its daemon (pid ${pid}) is gone, and ${provider} is still open (held open through /dev/h0 (r1w1e0)), so it was left in place; ` +
    'without a map no new daemon can serve it, and its I/O waits: end the wait with geom-rowr destroy -f h0 (its users get I/O errors)'

  const list = await rowr('list')
  t.equal(list.code, 0, list.stderr)
  t.match(list.stdout, `h0    ${provider} (open, its daemon is gone)`)
  t.match(list.stderr, message, 'list says why and what to do')
  t.ok(fs.existsSync(provider), 'list did not destroy it')
  const create = await rowr('create', 'h0', base, makeImage(path.join(dir, 'h0-new.img'), 8 << 20, 'zero'))
  t.equal(create.code, 1)
  t.match(create.stderr, message, 'create refuses the NAME')
  const destroy = await rowr('destroy', 'h0')
  t.equal(destroy.code, 1)
  t.match(destroy.stderr, message, 'destroy without -f refuses')
  t.ok(fs.existsSync(provider), 'still there')

  // Opened after the probe and before the cleanup: DESTROY without force refuses.
  const saved = Object.fromEntries(Object.keys(env).map(k => [k, process.env[k]]))
  const restore = (): void => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  }
  Object.assign(process.env, env)
  t.teardown(restore)
  const { cleanupStale } = await import('../../lib/daemon/stale.js')
  const { readState } = await import('../../lib/daemon/run-state.js')
  await t.rejects(
    cleanupStale('h0', { kind: 'stale', state: readState('h0'), reason: 'its daemon is gone' }, () => undefined),
    {
      code: 'EBUSY',
      message: `h0 (${provider}) is open (held open through /dev/h0 (r1w1e0)): nothing serves its I/O, which waits; end the wait with geom-rowr destroy -f h0 (its users get I/O errors)`,
    },
  )
  restore()
  t.ok(fs.existsSync(provider), 'the cleanup left it')

  await unloop(device)
  t.ok(await waitUntil(async () => !(await rowr('list')).stdout.includes('h0 ')), 'closed, the next list cleans it up')
  t.notOk(fs.existsSync(provider), 'and destroys the provider')

  const forced = await rowr('destroy', '-f', 'h1')
  t.equal(forced.code, 0, forced.stderr)
  t.match(forced.stderr, 'h1: cleaned up after a daemon that is gone')
  t.notOk(fs.existsSync(made.h1!.provider), 'destroy -f takes an open one away')
  await unloop(made.h1!.device)
  t.same(
    fs.readdirSync(runDir).filter(n => !n.endsWith('.log')),
    [],
  )
  t.ok(await waitUntil(() => !mounted(sim)), 'the simulated kernel went away with its last provider')
})

t.test('a signal for a thread asleep in START does not take it out of the request loop', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, runDir, rowr, loop, daemonPid } = simulatedFreeBsd(t)
  const base = makeImage(path.join(dir, 'ro.img'), 8 << 20)
  const created = await rowr('create', 's0', base, makeImage(path.join(dir, 'rw.img'), 8 << 20, 'zero'))
  t.equal(created.code, 0, created.stderr)
  const pid = daemonPid('s0')
  // Open, so that the daemon's own SIGHUP handler keeps serving.
  const device = await loop(created.stdout.trim())

  // The threads asleep in START (the simulator's libc waits for the
  // kernel's answer in poll(2), ppoll on arm64), each sent SIGHUP on its
  // own (tgkill), as FreeBSD may hand a process's signal to any thread that
  // does not block it.
  const pollCall = process.arch === 'arm64' ? '73' : '7'
  const asleep = () =>
    fs
      .readdirSync(`/proc/${pid}/task`)
      .filter(tid => fs.readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').split(' ')[0] === pollCall)
  t.ok(await waitUntil(() => asleep().length === 4), `four threads sleep in START: ${asleep().join(' ')}`)
  const tgkill = (createRequire(import.meta.url)('koffi') as { load(p: string): { func(s: string): (...a: number[]) => number } })
    .load('libc.so.6')
    .func('int tgkill(int tgid, int tid, int sig)')
  for (const tid of asleep()) t.equal(tgkill(pid, Number(tid), 1), 0, `SIGHUP to thread ${tid}`)
  await new Promise(resolve => setTimeout(resolve, 500))

  const status = JSON.parse((await rowr('status', '--json', 's0')).stdout)
  t.equal(status.ggate?.workers, 4, 'every worker is still in the request loop')
  const read = await run('dd', [`if=${device}`, 'of=/dev/null', 'bs=64k', 'count=16', 'iflag=direct'])
  t.equal(read.code, 0, 'the provider serves')
  t.ok(alive(pid))
  t.notMatch(fs.readFileSync(path.join(runDir, 's0.log'), 'utf8'), /went away/)
})
