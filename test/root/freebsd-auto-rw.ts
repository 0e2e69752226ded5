// RW `auto` on FreeBSD is a swap-backed md(4). Run here through the
// platform switch (GEOM_ROWR_PLATFORM=freebsd) with a stub mdconfig that
// records its calls and makes /dev/mdN a link to a sparse file, which is
// what geom-rowr then opens and writes.
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { cli, makeImage, requires, run, shortDir, waitUntil } from '../fixtures/helpers.js'

const SIZE = 4 << 20

const MDCONFIG = `#!/bin/sh
echo "mdconfig $*" >> "$MD_CALLS"
case "$1" in
-a)
  size=$(echo "$*" | sed -n 's/.*-s \\([0-9]*\\)b.*/\\1/p')
  unit=90
  while [ -e "/dev/md$unit" ]; do unit=$((unit + 1)); done
  truncate -s "$size" "$MD_DIR/md$unit.img"
  ln -s "$MD_DIR/md$unit.img" "/dev/md$unit"
  echo "md$unit" ;;
-d) rm -f "/dev/md$3" ;;
esac
`

const freebsd = (t: Test, roSize = SIZE) => {
  const dir = shortDir(t)
  const stubs = path.join(dir, 'stubs')
  fs.mkdirSync(stubs)
  fs.writeFileSync(path.join(stubs, 'mdconfig'), MDCONFIG, { mode: 0o755 })
  // mdconfig's swap mds are whole pages; FreeBSD's page size, as sysctl says it.
  fs.writeFileSync(path.join(stubs, 'sysctl'), '#!/bin/sh\n[ "$*" = "-n hw.pagesize" ] && echo 4096\n', { mode: 0o755 })
  const calls = path.join(dir, 'calls')
  fs.writeFileSync(calls, '')
  const runDir = path.join(dir, 'run')
  const env = {
    GEOM_ROWR_PLATFORM: 'freebsd',
    GEOM_ROWR_RUNDIR: runDir,
    PATH: `${stubs}:${process.env.PATH}`,
    MD_CALLS: calls,
    MD_DIR: dir,
  }
  t.teardown(() => {
    for (const e of fs.readdirSync('/dev').filter(n => /^md\d+$/.test(n))) {
      const link = path.join('/dev', e)
      if (fs.lstatSync(link).isSymbolicLink() && fs.readlinkSync(link).startsWith(dir)) fs.rmSync(link)
    }
  })
  const ro = makeImage(path.join(dir, 'ro.img'), roSize)
  return {
    dir,
    ro,
    runDir,
    cli: (...args: string[]) => run(process.execPath, [cli, ...args], env),
    calls: () => fs.readFileSync(calls, 'utf8').trim().split('\n').filter(Boolean),
  }
}

t.test("create makes a swap-backed md of RO's exact size; destroy detaches it", async t => {
  if (!requires(t, { root: true, tools: ['qemu-io'] })) return
  const f = freebsd(t)
  const created = await f.cli('create', '--no-attach', 'fb0', f.ro, 'auto')
  t.equal(created.code, 0, created.stderr)
  t.same(f.calls(), [`mdconfig -a -t swap -s ${SIZE}b`])
  const md = fs.readdirSync('/dev').find(n => /^md\d+$/.test(n) && fs.readlinkSync(`/dev/${n}`).startsWith(f.dir))!
  t.match(created.stderr, `read-write device: /dev/${md} (swap-backed md, ${SIZE} bytes; detached on destroy)`)
  const status = JSON.parse((await f.cli('status', '--json', 'fb0')).stdout)
  t.match(status, { rw: `/dev/${md}`, rwAuto: true, mediasize: SIZE })
  const io = await run('qemu-io', ['-f', 'raw', status.nbd, '-c', 'write -P 0x5e 4096 4096', '-c', 'flush'])
  t.equal(io.code, 0, io.stderr)
  t.same(fs.readFileSync(`/dev/${md}`).subarray(4096, 8192), Buffer.alloc(4096, 0x5e), 'writes land in the md')
  const destroyed = await f.cli('destroy', 'fb0')
  t.equal(destroyed.code, 0, destroyed.stderr)
  t.same(f.calls().slice(1), [`mdconfig -d -u ${md.slice(2)}`])
  t.notOk(fs.existsSync(`/dev/${md}`), 'the md is gone')
})

t.test("a killed daemon's md is detached by the cleanup", async t => {
  if (!requires(t, { root: true })) return
  const f = freebsd(t)
  t.equal((await f.cli('create', '--no-attach', 'fb1', f.ro, 'auto')).code, 0)
  const state = JSON.parse(fs.readFileSync(`${f.runDir}/fb1/state.json`, 'utf8'))
  process.kill(state.pid, 'SIGKILL')
  await waitUntil(() => !fs.existsSync(`/proc/${state.pid}`))
  const list = await f.cli('list')
  t.match(list.stderr, new RegExp(`fb1: cleaned up after a daemon that is gone: .*removed ${state.rw}`))
  t.equal(f.calls().at(-1), `mdconfig -d -u ${state.rw.replace('/dev/md', '')}`)
  t.notOk(fs.existsSync(state.rw))
})

t.test('without geom_gate loaded, create says how to load it and leaves nothing behind', async t => {
  if (!requires(t, { root: true })) return
  const f = freebsd(t)
  const r = await f.cli('create', 'fb2', f.ro, 'auto')
  t.equal(r.code, 1)
  t.match(r.stderr, '/dev/ggctl does not exist: the geom_gate module is not loaded; load it with kldload geom_gate')
  const calls = f.calls()
  t.equal(calls.length, 2, 'the automatic md was made, then detached again')
  t.match(calls[1], /^mdconfig -d -u \d+$/)
  t.notOk(fs.existsSync(`${f.runDir}/fb2`), 'no run state is left')
})

// An ISO with an odd number of 2048-byte sectors: mdconfig would fail EDOM
// for its exact size.
const ODD = SIZE + 2048

t.test("RW auto for a size that is not whole pages: the md is rounded up, the device keeps RO's size", async t => {
  if (!requires(t, { root: true })) return
  const f = freebsd(t, ODD)
  const created = await f.cli('create', '--no-attach', 'fb3', f.ro, 'auto')
  t.equal(created.code, 0, created.stderr)
  t.same(f.calls(), [`mdconfig -a -t swap -s ${SIZE + 4096}b`], 'whole pages')
  t.notMatch(created.stderr, /larger than/, "no warning for the md's tail")
  const status = JSON.parse((await f.cli('status', '--json', 'fb3')).stdout)
  t.equal(status.mediasize, ODD, "the device is RO's size")
  t.equal((await f.cli('destroy', 'fb3')).code, 0)
})

t.test('a RW md too small for RO gets a hint with a size mdconfig accepts', async t => {
  if (!requires(t, { root: true })) return
  const f = freebsd(t, ODD)
  let unit = 950
  while (fs.existsSync(`/dev/md${unit}`)) unit++
  const small = makeImage(path.join(f.dir, 'small.img'), SIZE, 'zero')
  fs.symlinkSync(small, `/dev/md${unit}`)
  t.teardown(() => fs.rmSync(`/dev/md${unit}`, { force: true }))
  const r = await f.cli('create', '--no-attach', 'fb4', f.ro, `/dev/md${unit}`)
  t.equal(r.code, 1)
  t.match(
    r.stderr,
    `make a new md of that size (mdconfig -a -t swap -s ${SIZE + 4096}b prints its name) and give it as RW; /dev/md${unit} is left as it is`,
  )
  t.notMatch(r.stderr, 'mdconfig -d', 'the md that is too small is not to be detached: it may hold data')
})
