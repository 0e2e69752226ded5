// The FreeBSD front end end to end on Linux: geom-rowr runs its GEOM Gate
// code path against the ggctl simulator (test/fixtures/simulated-freebsd.ts),
// which shows the provider as a file in a FUSE mount; a loop device and
// ext4 sit on that file.
import fs from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { cli, makeImage, repoRoot, requires, run, sha256, waitUntil } from '../fixtures/helpers.js'
import { ext4Image, leftovers, mount } from '../fixtures/kernel.js'
import { mounted, simulatedFreeBsd } from '../fixtures/simulated-freebsd.js'

const NEEDS = { root: true, fuse: true, tools: ['losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'fio'] }

const status = async (rowr: (...a: string[]) => Promise<{ stdout: string }>, name: string) =>
  JSON.parse((await rowr('status', '--json', name)).stdout)

t.test("the original module's procedure through GEOM Gate: ext4 on the provider, change, fsck, destroy", async t => {
  if (!requires(t, NEEDS)) return
  const { dir, runDir, sim, mnt, rowr, loop, unloop } = simulatedFreeBsd(t)
  const base = await ext4Image(dir)
  const baseHash = sha256(base)
  const rw = makeImage(path.join(dir, 'rw.img'), fs.statSync(base).size, 'zero')

  const created = await rowr('create', 'rowr0', base, rw)
  t.equal(created.code, 0, created.stderr)
  t.equal(created.stdout.trim(), path.join(sim, 'rowr0'), 'under the simulator the device is $GGSIM_MOUNT/NAME')
  const provider = created.stdout.trim()
  t.equal(fs.statSync(provider).size, fs.statSync(base).size, "the provider has RO's media size")

  const device = await loop(provider)
  await mount(t, device, mnt)
  t.equal(
    fs.readFileSync(path.join(mnt, 'lib/engine/sector-map.ts'), 'utf8'),
    fs.readFileSync(path.join(repoRoot, 'lib/engine/sector-map.ts'), 'utf8'),
    'the files of the read-only image are there',
  )
  fs.cpSync(path.join(repoRoot, 'node_modules/tap'), path.join(mnt, 'tree'), { recursive: true, dereference: true })
  fs.renameSync(path.join(mnt, 'loader.4th'), path.join(mnt, 'lua/loader.4th'))
  fs.rmSync(path.join(mnt, 'pxeboot'))
  fs.rmSync(path.join(mnt, 'yargs/locales'), { recursive: true })
  fs.writeFileSync(path.join(mnt, 'big.bin'), Buffer.alloc(3 << 20, 7))

  const busy = await rowr('destroy', 'rowr0')
  t.equal(busy.code, 1, 'destroy refuses while the provider is open')
  // The loop device holds the provider's file: what an open of /dev/rowr0 is on FreeBSD.
  t.match(
    busy.stderr,
    `rowr0 (${provider}) is open (held open through /dev/rowr0 (r1w1e0)): unmount it (umount ${provider}) first; destroy -f stops it even so, and a file system on it then loses what it has not written yet`,
  )

  t.equal((await run('umount', [mnt])).code, 0)
  const fsck = await run('e2fsck', ['-fn', device])
  t.equal(fsck.code, 0, `e2fsck -fn is clean: ${fsck.stdout}`)
  await mount(t, device, mnt)
  t.equal(fs.readFileSync(path.join(mnt, 'lua/loader.4th'), 'utf8'), 'forth\n')
  t.notOk(fs.existsSync(path.join(mnt, 'pxeboot')))
  t.same(fs.readFileSync(path.join(mnt, 'big.bin')), Buffer.alloc(3 << 20, 7))
  t.equal((await run('umount', [mnt])).code, 0)
  await unloop(device)

  const s = await status(rowr, 'rowr0')
  t.match(s, { device: provider, ggate: { failed: 0 } })
  t.ok(
    s.ggate.bios.write > 0 && s.ggate.bios.read > 0 && s.ggate.bios.flush > 0,
    `bios came through GEOM Gate: ${JSON.stringify(s.ggate.bios)}`,
  )
  t.ok(s.writtenBytes >= 3 << 20, 'the changes are on RW')
  t.equal((await rowr('reset', 'rowr0')).code, 0, 'reset')
  const cleared = await status(rowr, 'rowr0')
  t.match(
    cleared,
    { health: 'ok', writtenBytes: s.writtenBytes, ggate: { failed: 0, bufferGrows: 0, bios: { read: 0, write: 0, flush: 0 } } },
    'reset clears the GEOM Gate counters too',
  )

  // The kernel's FUSE release may land just after losetup -d: poll.
  let destroyed = await rowr('destroy', 'rowr0')
  await waitUntil(async () => destroyed.code === 0 || (destroyed = await rowr('destroy', 'rowr0')).code === 0)
  t.equal(destroyed.code, 0, destroyed.stderr)
  t.equal(sha256(base), baseHash, 'the read-only image is unchanged')
  t.ok(await waitUntil(() => !mounted(sim)), 'the simulated kernel went away with the daemon')
  t.same(leftovers(dir), [], 'no loop device, mount or daemon is left')
  t.same(
    fs.readdirSync(runDir).filter(n => !n.endsWith('.log')),
    [],
    'no run state is left',
  )
})

t.test('concurrent bios, and writes larger than the first START buffer', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, rowr } = simulatedFreeBsd(t)
  const size = 32 << 20
  const base = makeImage(path.join(dir, 'ro.img'), size)
  const rw = makeImage(path.join(dir, 'rw.img'), size, 'zero')
  const created = await rowr('create', 'cc0', base, rw)
  t.equal(created.code, 0, created.stderr)
  const provider = created.stdout.trim()

  // Four writers at once on disjoint 8 MiB regions, each verifying what it wrote.
  const fio = await run('fio', [
    '--name=concurrent',
    `--filename=${provider}`,
    '--ioengine=libaio',
    '--direct=1',
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=8',
    '--numjobs=4',
    '--size=8M',
    '--offset_increment=8M',
    '--io_size=2M',
    '--verify=crc32c',
    '--verify_fatal=1',
    '--verify_state_save=0',
    '--group_reporting',
  ])
  t.equal(fio.code, 0, `fio wrote and verified: ${fio.stderr}`)

  // 1 MiB writes: eight times the 128 KiB a worker starts with. dd's
  // buffers are page-aligned, so the kernel hands FUSE each one whole.
  const chunk = Buffer.alloc(1 << 20)
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i)
  const pattern = path.join(dir, 'pattern')
  fs.writeFileSync(pattern, chunk)
  for (const mib of [0, 5, 31]) {
    const dd = await run('dd', [`if=${pattern}`, `of=${provider}`, 'bs=1M', `seek=${mib}`, 'oflag=direct', 'conv=notrunc,fsync'])
    t.equal(dd.code, 0, dd.stderr)
  }
  const back = path.join(dir, 'back')
  for (const mib of [0, 5, 31]) {
    const dd = await run('dd', [`if=${provider}`, `of=${back}`, 'bs=1M', `skip=${mib}`, 'count=1', 'iflag=direct'])
    t.equal(dd.code, 0, dd.stderr)
    t.same(fs.readFileSync(back), chunk, `the 1 MiB write at ${mib} MiB reads back`)
  }

  const s = await status(rowr, 'cc0')
  t.ok(s.ggate.bufferGrows > 0, `START reported ENOMEM and the buffers grew (${s.ggate.bufferGrows} times)`)
  t.ok(s.ggate.peakInFlight > 1, `several bios were served at once (peak ${s.ggate.peakInFlight})`)
  t.equal(s.ggate.failed, 0)
  t.equal((await rowr('destroy', 'cc0')).code, 0)
  t.same(fs.readFileSync(rw).subarray(31 << 20), chunk, 'the data is on RW')
})

t.test('destroy -f while the provider is held: pending bios fail, the daemon exits cleanly', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, runDir, sim, rowr, loop } = simulatedFreeBsd(t)
  const base = makeImage(path.join(dir, 'ro.img'), 16 << 20)
  const rw = makeImage(path.join(dir, 'rw.img'), 16 << 20, 'zero')
  const created = await rowr('create', 'f0', base, rw)
  t.equal(created.code, 0, created.stderr)
  const provider = created.stdout.trim()
  const device = await loop(provider)
  const pid = JSON.parse(fs.readFileSync(path.join(runDir, 'f0/state.json'), 'utf8')).pid as number

  const busy = await rowr('destroy', 'f0')
  t.equal(busy.code, 1)
  t.match(busy.stderr, 'is open (held open through /dev/f0 (r1w1e0)): unmount it')
  const read = await run('dd', [`if=${device}`, 'of=/dev/null', 'bs=64k', 'iflag=direct'])
  t.equal(read.code, 0, 'the provider still serves after the refused destroy')

  const forced = await rowr('destroy', '-f', 'f0')
  t.equal(forced.code, 0, forced.stderr)
  t.ok(await waitUntil(() => !fs.existsSync(`/proc/${pid}`)), 'the daemon exited')
  t.notOk(fs.existsSync(path.join(runDir, 'f0.log')), 'a daemon that ended cleanly takes its log with it')
  const after = await run('dd', [`if=${device}`, 'of=/dev/null', 'bs=64k', 'count=1', 'iflag=direct'])
  t.not(after.code, 0, "the loop device's reads fail once the provider is gone")
  t.notOk(mounted(sim), 'the simulated kernel is gone')
  t.same(
    fs.readdirSync(runDir).filter(n => !n.endsWith('.log')),
    [],
    'no run state is left',
  )
})

t.test('a name GEOM Gate already has is refused, with nothing half-created', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, runDir, env, rowr } = simulatedFreeBsd(t)
  const base = makeImage(path.join(dir, 'ro.img'), 1 << 20)
  const rw = makeImage(path.join(dir, 'rw.img'), 1 << 20, 'zero')
  const taken = await rowr('create', 'null', base, rw)
  t.equal(taken.code, 1)
  t.match(taken.stderr, '/dev/null already exists (another GEOM provider has that name); choose another NAME')
  t.same(fs.existsSync(runDir) ? fs.readdirSync(runDir).filter(n => !n.endsWith('.log')) : [], [])

  // A provider of that name made by someone else (here a geom-rowr of
  // another run directory): the refusal never suggests taking it away.
  const otherEnv = { ...env, GEOM_ROWR_RUNDIR: path.join(dir, 'other-run') }
  const other = (...args: string[]) => run(process.execPath, [cli, ...args], otherEnv)
  const theirs = await other('create', 'g1', base, makeImage(path.join(dir, 'rw-theirs.img'), 1 << 20, 'zero'))
  t.equal(theirs.code, 0, theirs.stderr)
  const clash = await rowr('create', 'g1', base, rw)
  t.equal(clash.code, 1)
  t.match(clash.stderr, 'a GEOM Gate provider named g1 already exists: choose another NAME')
  t.notMatch(clash.stderr, /destroy -f|ggatec destroy/, 'no hint that would take the other provider away')
  t.same(
    fs.readdirSync(runDir).filter(n => !n.endsWith('.log')),
    [],
  )
  t.equal((await other('status', '--json', 'g1')).code, 0, 'the other provider still serves')
  t.equal((await other('destroy', 'g1')).code, 0)
})

t.test('revert, commit and destroy see who has the provider open, from kern.geom.confxml', async t => {
  if (!requires(t, NEEDS)) return
  const { dir, rowr, loop, unloop } = simulatedFreeBsd(t)
  const base = makeImage(path.join(dir, 'ro.img'), 8 << 20)
  const rw = makeImage(path.join(dir, 'rw.img'), 8 << 20, 'zero')
  const created = await rowr('create', 'b0', base, rw)
  t.equal(created.code, 0, created.stderr)
  const provider = created.stdout.trim()
  const write = async (fill: number): Promise<void> => {
    fs.writeFileSync(path.join(dir, 'fill'), Buffer.alloc(64 << 10, fill))
    const dd = await run('dd', [`if=${path.join(dir, 'fill')}`, `of=${provider}`, 'bs=64k', 'seek=2', 'oflag=direct', 'conv=notrunc,fsync'])
    t.equal(dd.code, 0, dd.stderr)
  }

  // dd has closed the provider again: nothing has it open.
  await write(1)
  const reverted = await rowr('revert', 'b0')
  t.equal(reverted.code, 0, `revert of a provider nobody has open: ${reverted.stderr}`)

  const device = await loop(provider)
  await write(2)
  const uses = `b0 (${provider}) is in use: held open through /dev/b0 (r1w1e0); unmount it (umount ${provider}) or close it`
  const refusedRevert = await rowr('revert', 'b0')
  t.equal(refusedRevert.code, 1)
  t.match(refusedRevert.stderr, `${uses}, or use revert -f`, 'revert names who has it open')
  const refusedCommit = await rowr('commit', '-y', 'b0')
  t.equal(refusedCommit.code, 1)
  t.match(refusedCommit.stderr, `${uses}, or use commit -f`)
  const refusedDestroy = await rowr('destroy', 'b0')
  t.equal(refusedDestroy.code, 1)
  t.match(
    refusedDestroy.stderr,
    `b0 (${provider}) is open (held open through /dev/b0 (r1w1e0)): unmount it (umount ${provider}) first; destroy -f stops it even so, and a file system on it then loses what it has not written yet`,
  )
  t.equal(
    fs
      .readFileSync(base)
      .subarray(2 << 16, 3 << 16)
      .equals(Buffer.alloc(64 << 10, 2)),
    false,
    'RO is untouched',
  )

  await unloop(device)
  // The kernel's FUSE release may land just after losetup -d: poll.
  let committed = await rowr('commit', '-y', 'b0')
  await waitUntil(async () => committed.code === 0 || (committed = await rowr('commit', '-y', 'b0')).code === 0)
  t.equal(committed.code, 0, committed.stderr)
  t.same(fs.readFileSync(base).subarray(2 << 16, 3 << 16), Buffer.alloc(64 << 10, 2), 'commit wrote RO once nothing had the provider open')
  t.equal((await rowr('destroy', 'b0')).code, 0)
})

t.test(
  "hydrated with RW a provider: MODIFY sends the provider's reads to RW in the kernel; a file RW keeps them in the daemon",
  async t => {
    if (!requires(t, NEEDS)) return
    const { dir, rowr, loop } = simulatedFreeBsd(t)
    const base = makeImage(path.join(dir, 'ro.img'), 8 << 20)
    // A loop device stands for an md: a disk, which GEOM would have as a provider.
    const rw = await loop(makeImage(path.join(dir, 'rw.img'), 8 << 20, 'zero'))
    const created = await rowr('create', '--hydrate', 'h0', base, rw)
    t.equal(created.code, 0, created.stderr)
    const provider = created.stdout.trim()
    t.ok(await waitUntil(async () => (await status(rowr, 'h0')).roHeld === false, 30_000), 'hydrated, RO released')
    t.ok(await waitUntil(async () => (await status(rowr, 'h0')).ggate.readProvider !== null), 'direct reads enabled')
    const before = await status(rowr, 'h0')
    t.equal(before.ggate.readProvider, path.basename(rw), 'the read provider is RW')

    const chunk = Buffer.alloc(1 << 20, 0x3e)
    const pattern = path.join(dir, 'pattern')
    fs.writeFileSync(pattern, chunk)
    const dd = await run('dd', [`if=${pattern}`, `of=${provider}`, 'bs=1M', 'seek=2', 'oflag=direct', 'conv=notrunc,fsync'])
    t.equal(dd.code, 0, dd.stderr)
    const back = path.join(dir, 'back')
    const read = await run('dd', [`if=${provider}`, `of=${back}`, 'bs=1M', 'iflag=direct'])
    t.equal(read.code, 0, read.stderr)
    const expected = fs.readFileSync(base)
    chunk.copy(expected, 2 << 20)
    t.ok(fs.readFileSync(back).equals(expected), 'the provider reads RO plus the write')
    const after = await status(rowr, 'h0')
    t.equal(after.ggate.bios.read, before.ggate.bios.read, 'no read came to the daemon: the kernel read RW itself')
    t.ok(after.ggate.bios.write > before.ggate.bios.write, 'writes still do')
    t.equal((await rowr('destroy', 'h0')).code, 0)

    const fileRw = makeImage(path.join(dir, 'rw-file.img'), 8 << 20, 'zero')
    const second = await rowr('create', '--hydrate', 'h1', base, fileRw)
    t.equal(second.code, 0, second.stderr)
    t.ok(await waitUntil(async () => (await status(rowr, 'h1')).roHeld === false, 30_000), 'hydrated')
    const reads = (await status(rowr, 'h1')).ggate.bios.read
    t.equal((await run('dd', [`if=${second.stdout.trim()}`, 'of=/dev/null', 'bs=1M', 'count=1', 'iflag=direct'])).code, 0)
    const s = await status(rowr, 'h1')
    t.equal(s.ggate.readProvider, null, 'a file RW is no provider: no MODIFY')
    t.ok(s.ggate.bios.read > reads, 'its reads still come to the daemon')
  },
)
