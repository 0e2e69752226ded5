// The command line as a user meets it, without root: create --no-attach,
// serve, list, status, destroy, refusals and what a killed daemon leaves.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { cleanupStale } from '../lib/daemon/stale.js'
import { liveness } from '../lib/daemon/run-state.js'
import { Cmd, connectGo, request } from './fixtures/nbd-client.js'
import { makeImage, rowr, shortDir, startServe, waitUntil } from './fixtures/helpers.js'

const SIZE = 4 << 20

const setup = (t: Test) => {
  const dir = shortDir(t)
  const run = path.join(dir, 'run')
  const ro = makeImage(path.join(dir, 'ro.img'), SIZE)
  const rw = makeImage(path.join(dir, 'rw.img'), SIZE, 'zero')
  const cli = (...args: string[]) => rowr(run, args)
  t.teardown(async () => {
    for (const name of fs.existsSync(run) ? fs.readdirSync(run) : []) {
      if (!name.endsWith('.log')) await cli('destroy', '-f', name)
    }
  })
  return { dir, run, ro, rw, cli }
}

/** Kills a daemon as a crash would, and waits until it is gone. */
const killAndWait = async (pid: number): Promise<void> => {
  process.kill(pid, 'SIGKILL')
  await waitUntil(() => {
    try {
      process.kill(pid, 0)
      return false
    } catch {
      return true
    }
  })
}

/** The device names with state in the run directory. */
const names = (run: string): string[] => (fs.existsSync(run) ? fs.readdirSync(run).filter(n => !n.endsWith('.log')) : [])

t.test('usage errors exit 2 and say what is wrong', async t => {
  const { cli, ro, rw } = setup(t)
  const cases: [string[], RegExp][] = [
    [[], /give a command/],
    [['frobnicate'], /unknown command frobnicate; the commands are create, serve/],
    [['create', 'q', ro, rw, 'extra'], /create: unexpected argument extra/],
    // An undeclared option would take NAME as its value; it is named instead.
    [['create', '--flatten', 'q', ro, rw], /create: unknown option --flatten/],
    [
      ['create', '--hydrate-rate', 'fast', 'q', ro, rw],
      /--hydrate-rate fast is not a rate: give bytes per second as N, NK, NM or NG \(0: no limit\)/,
    ],
    [['create', '--hydrate-share', '0', 'q', ro, rw], /--hydrate-share 0 is not a share: give a percentage above 0, at most 100/],
    [['hydrate', '--pause', '--wait', 'q'], /--pause excludes --wait/],
    [['hydrate', '--copy-on-read', 'maybe', 'q'], /Invalid values/],
    [['create', 'q', 'none', rw], /RO none \(a fully hydrated device resumed without its RO\) needs the device's map file: --map FILE/],
    [['status', '-x'], /status: unknown option -x/],
    [['serve', '--port', 'abc', ro, rw], /--port abc is not a TCP port/],
    [['create', 'rowr0'], /Not enough non-option arguments/],
    [['create', 'bad name', ro, rw], /invalid device name "bad name"/],
    [['create', '--sector-size', '1000', 'r0', ro, rw], /sector size 1000 is invalid/],
    [['serve', '--socket', '/tmp/x', '--port', '1', ro, rw], /mutually exclusive/],
    [['serve', '--port', '70000', ro, rw], /not a TCP port/],
    [['destroy'], /Not enough non-option arguments/],
  ]
  for (const [args, message] of cases) {
    const r = await cli(...args)
    t.equal(r.code, 2, `${args.join(' ')} exits 2`)
    t.match(r.stderr, message)
  }
  const help = await cli('--help')
  t.equal(help.code, 0)
  t.match(help.stdout, /create <name> <ro> <rw>/)
  const version = await cli('--version')
  t.equal(version.code, 0)
  const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  t.equal(version.stdout, `geom-rowr ${pkg.version}\n`, "--version prints the package's version")
})

t.test('destroy takes several names; list --json is what status --json gives', async t => {
  const { run, cli, ro, rw, dir } = setup(t)
  const rw2 = makeImage(path.join(dir, 'rw2.img'), SIZE, 'zero')
  t.equal((await cli('create', '--no-attach', 'd1', ro, rw)).code, 0)
  t.equal((await cli('create', '--no-attach', 'd2', ro, rw2)).code, 0)
  const listed = JSON.parse((await cli('list', '--json')).stdout) as { name: string }[]
  const statuses = JSON.parse((await cli('status', '--json')).stdout) as { name: string }[]
  t.same(listed.map(s => s.name).sort(), ['d1', 'd2'])
  t.same(
    listed.map(s => s.name),
    statuses.map(s => s.name),
    'the same devices as status --json',
  )
  const partly = await cli('destroy', 'd1', 'nothere', 'd2')
  t.equal(partly.code, 1, 'a name that fails makes the command fail')
  t.match(partly.stderr, /no device named nothere/)
  t.match(partly.stderr, /not destroyed: nothere/)
  t.same(names(run), [], 'but the others were destroyed')
})

t.test('refusals exit 1 with the devices named, and leave nothing behind', async t => {
  const { dir, run, cli, ro } = setup(t)
  const small = makeImage(path.join(dir, 'small.img'), SIZE / 2, 'zero')
  const cases: [string[], RegExp][] = [
    [
      ['create', '--no-attach', 'r0', ro, small],
      new RegExp(`mediasize mismatch: ${ro} is ${SIZE} bytes, ${small} is ${SIZE / 2} bytes.*truncate -s ${SIZE} ${small}`),
    ],
    [['create', '--no-attach', 'r0', ro, ro], /are the same file/],
    [['create', '--no-attach', 'r0', path.join(dir, 'missing.img'), small], /missing.img does not exist/],
    [['destroy', 'nothere'], /no device named nothere/],
    [['status', 'nothere'], /no device named nothere/],
  ]
  for (const [args, message] of cases) {
    const r = await cli(...args)
    t.equal(r.code, 1, args.join(' '))
    t.match(r.stderr, message)
    t.same(names(run), [], 'no state left')
  }
  t.equal(fs.existsSync('/var/tmp/geom-rowr-r0.rw'), false)
})

t.test('create --no-attach, list, status, destroy', async t => {
  const { run, cli, ro, rw } = setup(t)
  const created = await cli('create', '--no-attach', 'rowr7', ro, rw)
  t.equal(created.code, 0, created.stderr)
  const uri = created.stdout.trim().split('\n').pop()!
  t.equal(uri, `nbd+unix:///?socket=${run}/rowr7/nbd.sock`, 'the last line is the NBD URI')
  const again = await cli('create', '--no-attach', 'rowr7', ro, rw)
  t.equal(again.code, 1)
  t.match(again.stderr, /rowr7 is already in use \(daemon pid \d+/)
  const list = await cli('list')
  t.match(list.stdout, /^NAME\s+DEVICE\s+MEDIASIZE\s+RO\s+RW\nrowr7\s+nbd\+unix/)
  const status = JSON.parse((await cli('status', '--json', 'rowr7')).stdout)
  t.match(status, { name: 'rowr7', ro, rw, mediasize: SIZE, sectorsize: 512, device: null, nbd: uri, writtenBytes: 0 })
  const all = JSON.parse((await cli('status', '--json')).stdout)
  t.ok(Array.isArray(all) && all.length === 1, 'an array without a NAME')
  const text = await cli('status')
  t.match(text.stdout, /rowr7\n\s+state:\s+ok\n\s+device:\s+\(none: NBD only\)/)

  const client = await connectGo(`${run}/rowr7/nbd.sock`)
  client.r.socket.write(Buffer.concat([request(Cmd.WRITE, 1, 0, 4096), Buffer.alloc(4096, 7)]))
  t.same(await client.r.simpleReply(), { error: 0, cookie: 1 })
  t.equal(JSON.parse((await cli('status', '--json', 'rowr7')).stdout).stats.inlineWrites, 1, 'a 4K write ran inline')
  t.match((await cli('status', 'rowr7')).stdout, /inline writes:\s+1 RW writes on the event loop, \d+ of them stalled it/)
  const busy = await cli('destroy', 'rowr7')
  t.equal(busy.code, 1)
  t.match(busy.stderr, /rowr7 has 1 NBD client connection\(s\); disconnect them first; destroy -f stops it even so/)
  client.r.socket.destroy()
  await waitUntil(async () => JSON.parse((await cli('status', '--json', 'rowr7')).stdout).connections === 0)
  const destroyed = await cli('destroy', 'rowr7')
  t.equal(destroyed.code, 0, destroyed.stderr)
  t.same(names(run), [])
  t.equal((await cli('list')).stdout, '', 'nothing listed')
})

t.test("create --systemd-mark: the daemon's argv[0] begins with '@'; list, status and destroy know it", async t => {
  const { run, cli, ro, rw, dir } = setup(t)
  const plain = await cli('create', '--no-attach', 'p0', ro, makeImage(path.join(dir, 'rw-p0.img'), SIZE, 'zero'))
  t.equal(plain.code, 0, plain.stderr)
  const argv0 = (name: string): string => {
    const pid = JSON.parse(fs.readFileSync(`${run}/${name}/state.json`, 'utf8')).pid as number
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0]!
  }
  t.equal(argv0('p0'), 'geom-rowr', 'without it, argv[0] is geom-rowr')
  const marked = await cli('create', '--no-attach', '--systemd-mark', 'm0', ro, rw)
  t.equal(marked.code, 0, marked.stderr)
  t.equal(argv0('m0'), '@geom-rowr', "systemd's root storage daemon mark")
  t.match((await cli('list')).stdout, /\nm0\s+nbd\+unix/)
  t.equal(JSON.parse((await cli('status', '--json', 'm0')).stdout).name, 'm0')
  const destroyed = await cli('destroy', 'm0', 'p0')
  t.equal(destroyed.code, 0, destroyed.stderr)
  t.same(names(run), [])
  const foreground = await cli('create', '-v', '--systemd-mark', 'm1', ro, rw)
  t.equal(foreground.code, 2, 'with -v it is a usage error')
  t.match(foreground.stderr, /--systemd-mark marks the background daemon; with -v, start geom-rowr with an argv\[0\] that begins with '@'/)
})

t.test('destroy -f ends connected clients', async t => {
  const { run, cli, ro, rw } = setup(t)
  t.equal((await cli('create', '--no-attach', 'r1', ro, rw)).code, 0)
  const client = await connectGo(`${run}/r1/nbd.sock`)
  const r = await cli('destroy', '-f', 'r1')
  t.equal(r.code, 0, r.stderr)
  t.ok(await client.r.closed(), 'the client was disconnected')
  t.same(names(run), [])
})

t.test("RW auto: a sparse file of RO's size, removed on destroy", async t => {
  const { cli, ro } = setup(t)
  const name = `auto${process.pid}`
  const file = `/var/tmp/geom-rowr-${name}.rw`
  t.teardown(() => fs.rmSync(file, { force: true }))
  const r = await cli('create', '--no-attach', name, ro, 'auto')
  t.equal(r.code, 0, r.stderr)
  t.match(r.stderr, `read-write device: ${file} (sparse, ${SIZE} bytes; removed on destroy)`, 'says where RW went')
  t.equal(fs.statSync(file).size, SIZE)
  t.equal(fs.statSync(file).blocks, 0, 'sparse')
  t.equal((await cli('destroy', name)).code, 0)
  t.equal(fs.existsSync(file), false)
})

t.test('a killed daemon is cleaned up with a message and its NAME is free again', async t => {
  const { run, cli, ro, rw } = setup(t)
  t.equal((await cli('create', '--no-attach', 'r2', ro, rw)).code, 0)
  const pid = JSON.parse(fs.readFileSync(`${run}/r2/state.json`, 'utf8')).pid as number
  await killAndWait(pid)
  const list = await cli('list')
  t.equal(list.code, 0)
  t.match(list.stderr, new RegExp(`r2: cleaned up after a daemon that is gone: its daemon \\(pid ${pid}\\) is gone`))
  t.same(names(run), [])
  t.equal((await cli('create', '--no-attach', 'r2', ro, rw)).code, 0, 'the name can be used again')
  const pid2 = JSON.parse(fs.readFileSync(`${run}/r2/state.json`, 'utf8')).pid as number
  await killAndWait(pid2)
  const recreate = await cli('create', '--no-attach', 'r2', ro, rw)
  t.equal(recreate.code, 0, 'create itself clears stale state')
  t.match(recreate.stderr, /r2: cleaned up after a daemon that is gone/)
})

t.test('a cleanup that comes late takes nothing from the device created since, nor from another cleanup', async t => {
  const { run, cli, ro } = setup(t)
  const name = `late${process.pid}`
  const autoRw = `/var/tmp/geom-rowr-${name}.rw`
  t.teardown(() => fs.rmSync(autoRw, { force: true }))
  t.equal((await cli('create', '--no-attach', name, ro, 'auto')).code, 0)
  await killAndWait(JSON.parse(fs.readFileSync(`${run}/${name}/state.json`, 'utf8')).pid as number)
  process.env.GEOM_ROWR_RUNDIR = run
  t.teardown(() => delete process.env.GEOM_ROWR_RUNDIR)
  // What a command saw before the others below ran: a dead daemon.
  const seen = liveness(name)
  if (seen.kind !== 'stale') throw new Error(`${name} is ${seen.kind}, not stale`)
  const logged: string[] = []
  const log = (m: string) => void logged.push(m)

  // Two commands clean up what they both saw, at once: one does it, once.
  await Promise.all([cleanupStale(name, seen, log), cleanupStale(name, seen, log)])
  t.equal(logged.length, 1, `one cleanup ran: ${logged.join(' | ')}`)
  t.match(logged[0], `removed ${autoRw}`)
  t.same(names(run), [])

  // A new device takes NAME and makes its automatic RW at the same path...
  t.equal((await cli('create', '--no-attach', name, ro, 'auto')).code, 0, 'NAME taken again')
  const pid = JSON.parse(fs.readFileSync(`${run}/${name}/state.json`, 'utf8')).pid as number
  // ...and a cleanup that still goes by the old look comes last.
  await cleanupStale(name, seen, log)
  t.equal(logged.length, 1, 'the late cleanup did nothing')
  t.ok(fs.existsSync(autoRw), "the new device's automatic RW is still there")
  const status = await cli('status', name)
  t.equal(status.code, 0, `the new device still runs: ${status.stderr}`)
  t.match(status.stdout, String(pid))
})

t.test('serve stops on SIGINT with status 130 and removes its state', async t => {
  const { run, ro, rw } = setup(t)
  const s = await startServe(t, run, ['--name', 'fg', ro, rw])
  t.same(names(run), ['fg'])
  const exited = new Promise<number | null>(resolve => s.child.once('exit', code => resolve(code)))
  s.child.kill('SIGINT')
  t.equal(await exited, 130)
  t.same(names(run), [])
})

t.test('serve picks the first free rowrN and can be destroyed by name', async t => {
  const { run, cli, ro, rw } = setup(t)
  const s = await startServe(t, run, [ro, rw])
  t.equal(s.uri, `nbd+unix:///?socket=${run}/rowr0/nbd.sock`)
  const exited = new Promise<number | null>(resolve => s.child.once('exit', code => resolve(code)))
  t.equal((await cli('destroy', 'rowr0')).code, 0)
  t.equal(await exited, 0, 'destroy ends serve with status 0')
})

t.test('a daemon that does not answer: status and create say so, only destroy -f clears it', async t => {
  const { run, cli, ro, rw } = setup(t)
  t.equal((await cli('create', '--no-attach', 'hung0', ro, rw)).code, 0)
  const pid = JSON.parse(fs.readFileSync(`${run}/hung0/state.json`, 'utf8')).pid as number
  process.kill(pid, 'SIGSTOP')
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // already gone
    }
  })
  const status = await cli('status', 'hung0')
  t.equal(status.code, 1)
  t.match(status.stderr, `the daemon of hung0 (pid ${pid}) does not answer; geom-rowr destroy -f hung0 kills it and cleans up`)
  const create = await cli('create', '--no-attach', 'hung0', ro, rw)
  t.equal(create.code, 1)
  t.match(create.stderr, /held by daemon pid \d+, which does not answer/)
  const destroy = await cli('destroy', 'hung0')
  t.equal(destroy.code, 1)
  t.match(destroy.stderr, /does not answer; use destroy -f to kill it and clean up/)
  const forced = await cli('destroy', '-f', 'hung0')
  t.equal(forced.code, 0, forced.stderr)
  t.match(forced.stderr, /hung0: cleaned up after a daemon that is gone: its daemon \(pid \d+\) did not answer and was killed/)
  t.same(names(run), [])
})
