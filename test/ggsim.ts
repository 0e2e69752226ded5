// The ggctl simulator's GEOM Gate semantics (docs/ggate-abi.md),
// driven through lib/ggate/ggctl.ts with the simulator loaded in place of
// libc, and bios queued through its test entry point as the kernel would.
// No FUSE mount here (GGSIM_MOUNT unset, the kernel's socket in
// GGSIM_SOCKET): test/root/ggate-sim.ts does that.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import t, { type Test } from 'tap'
import { repoRoot, requires, run } from './fixtures/helpers.js'

const simulator = path.join(repoRoot, 'build/ggsim.so')
process.env.GEOM_ROWR_LIBC = simulator
delete process.env.GGSIM_MOUNT
const kernelDir = fs.mkdtempSync('/tmp/ggsim-test-')
process.env.GGSIM_SOCKET = path.join(kernelDir, 'kernel.sock')
t.teardown(() => fs.rmSync(kernelDir, { recursive: true, force: true }))

const { GGateControl, GGateError, GGateIo, checkReadOffset } = await import('../lib/ggate/ggctl.js')
const { BioCmd, FreeBsdErrno, ggateAbi } = await import('../native-bindings/ggate-abi.js')
const { libc } = await import('../native-bindings/libc.js')
const { parseGeomMesh } = await import('../lib/devices/geom-mesh.js')

interface KoffiFn {
  async(...args: unknown[]): void
}
const submitFn = (): KoffiFn => {
  const koffi = createRequire(import.meta.url)('koffi') as { load(p: string): { func(s: string): KoffiFn } }
  return koffi.load(simulator).func('int ggsim_submit(int unit, uint32_t cmd, int64_t offset, int64_t length, void *data)')
}

/** Queues a bio from a pool thread, as a kernel consumer would; resolves to its errno. */
const submit = (unit: number, cmd: number, offset: number, data: Buffer | null, length = data?.length ?? 0): Promise<number> =>
  new Promise((resolve, reject) =>
    submitFn().async(unit, cmd, offset, length, data, (err: Error | null, errno: number) => (err ? reject(err) : resolve(errno))),
  )

const failsWith = (t: Test, fn: () => unknown, errno: number, what: string): void => {
  try {
    fn()
    t.fail(`${what}: expected errno ${errno}`)
  } catch (e) {
    t.ok(e instanceof GGateError, `${what}: a GGateError`)
    t.equal((e as InstanceType<typeof GGateError>).errno, errno, what)
  }
}

const sizes = { mediaSize: 1 << 20, sectorSize: 512, info: 'test' }

t.test('the simulator is built and root may open /dev/ggctl', async t => {
  if (!requires(t, { root: true })) return
  t.ok(fs.existsSync(simulator), 'make ggsim built build/ggsim.so')
  const control = GGateControl.open()
  t.ok(control.fd > 2)
  control.close()
})

t.test('CREATE validates like g_gate.c and refuses a name in use', async t => {
  if (!requires(t, { root: true })) return
  const control = GGateControl.open()
  t.teardown(() => control.close())
  failsWith(t, () => control.create({ ...sizes, name: 'v0', mediaSize: 0 }), FreeBsdErrno.EINVAL, 'mediasize 0')
  failsWith(t, () => control.create({ ...sizes, name: 'v0', sectorSize: 0 }), FreeBsdErrno.EINVAL, 'sectorsize 0')
  failsWith(t, () => control.create({ ...sizes, name: 'v0', sectorSize: 1536 }), FreeBsdErrno.EINVAL, 'sectorsize not a power of two')
  failsWith(t, () => control.create({ ...sizes, name: 'v0', mediaSize: 1000 }), FreeBsdErrno.EINVAL, 'mediasize not a multiple')
  failsWith(t, () => control.create({ ...sizes, name: '' }), FreeBsdErrno.EINVAL, 'NAME_GIVEN with an empty name')

  // Version 2: the kernel prints "Version mismatch" and fails EINVAL.
  const old = Buffer.alloc(ggateAbi().sizeof('g_gate_ctl_create'))
  old.writeUInt32LE(2, 0)
  t.equal(libc().ioctl(control.fd, ggateAbi().ioctl.CREATE, old), -1)
  t.equal(libc().errno(), FreeBsdErrno.EINVAL, 'a version mismatch fails EINVAL')
  // An ioctl number with another struct size is not a ggctl command.
  t.equal(libc().ioctl(control.fd, ggateAbi().ioctl.CREATE + 0x10000, old), -1)
  t.equal(libc().errno(), FreeBsdErrno.ENOTTY, 'an unknown command fails ENOTTY')

  const unit = control.create({ ...sizes, name: 'v0' })
  t.ok(unit >= 0, 'the kernel wrote back the unit it chose')
  failsWith(t, () => control.create({ ...sizes, name: 'v0' }), FreeBsdErrno.EEXIST, 'the same name again')
  control.destroy('v0', { force: false })
  failsWith(t, () => control.destroy('v0', { force: false }), FreeBsdErrno.ENXIO, 'DESTROY of a name that is gone')
  t.equal(control.create({ ...sizes, name: 'v0' }), unit, 'the name and unit are free again')
  control.destroy('v0', { force: false })

  // A long non-ASCII path in the info: more bytes than the 2048-byte field.
  const info = `geom-rowr /média/${'é€'.repeat(600)}.img + /dev/md0`
  t.ok(control.create({ ...sizes, name: 'v1', info }) >= 0, 'the info is cut to its field, not refused')
  control.destroy('v1', { force: false })
})

t.test('START and DONE: READ, WRITE with ENOMEM growth, EAGAIN, unknown seq, DESTROY', async t => {
  if (!requires(t, { root: true })) return
  const control = GGateControl.open()
  t.teardown(() => control.close())
  const unit = control.create({ ...sizes, name: 'io0' })
  const io = new GGateIo(control, unit, Buffer.alloc(64 * 1024))

  const readInto = Buffer.alloc(4096)
  const read = submit(unit, BioCmd.READ, 8192, readInto)
  const r = io.start()
  t.same(r, { kind: 'bio', cmd: BioCmd.READ, offset: 8192, length: 4096 })
  io.data.fill(0xa5, 0, 4096)
  t.equal(io.done(0), true)
  t.equal(await read, 0)
  t.same(readInto, Buffer.alloc(4096, 0xa5), 'DONE copied the READ data back')

  const payload = Buffer.alloc(256 * 1024, 0x3c)
  const write = submit(unit, BioCmd.WRITE, 0, payload)
  t.same(io.start(), { kind: 'grow', needed: payload.length }, 'a WRITE larger than the buffer: ENOMEM with the size needed')
  io.useBuffer(Buffer.alloc(payload.length))
  t.same(io.start(), { kind: 'bio', cmd: BioCmd.WRITE, offset: 0, length: payload.length }, 'the same bio, once the buffer is large enough')
  t.same(io.data, payload, 'START copied the WRITE data in')
  t.equal(io.done(FreeBsdErrno.EAGAIN), true, 'EAGAIN puts the bio back')
  t.same(io.start(), { kind: 'bio', cmd: BioCmd.WRITE, offset: 0, length: payload.length }, 'and START hands it over again')
  t.equal(io.done(FreeBsdErrno.ENOSPC), true)
  t.equal(await write, FreeBsdErrno.ENOSPC, 'the errno handed to DONE fails the bio')
  t.equal(io.done(0), true, 'a DONE for a seq that is no longer out is ignored')

  const flush = submit(unit, BioCmd.FLUSH, 0, null)
  t.match(io.start(), { kind: 'bio', cmd: BioCmd.FLUSH, length: 0 })
  t.equal(io.done(0), true)
  t.equal(await flush, 0)

  // CANCEL (seq 0: all) returns taken bios to the input queue.
  const again = submit(unit, BioCmd.READ, 4096, Buffer.alloc(512))
  t.match(io.start(), { kind: 'bio', offset: 4096 })
  const cancel = Buffer.alloc(ggateAbi().sizeof('g_gate_ctl_cancel'))
  cancel.writeUInt32LE(3, 0)
  cancel.writeInt32LE(unit, 4)
  t.equal(libc().ioctl(control.fd, ggateAbi().ioctl.CANCEL, cancel), 0)
  t.match(io.start(), { kind: 'bio', cmd: BioCmd.READ, offset: 4096 }, 'the cancelled bio comes again')

  // DESTROY with force fails what is queued or taken with ENXIO.
  const queued = submit(unit, BioCmd.READ, 0, Buffer.alloc(512))
  await new Promise(resolve => setTimeout(resolve, 50))
  control.destroy('io0', { force: true })
  t.equal(await again, FreeBsdErrno.ENXIO, 'a taken bio fails ENXIO')
  t.equal(await queued, FreeBsdErrno.ENXIO, 'a queued bio fails ENXIO')
  t.equal(io.done(0), false, 'DONE on a destroyed unit: ENOENT')
  failsWith(t, () => io.start(), FreeBsdErrno.ENXIO, 'START on a destroyed unit')
  t.equal(await submit(unit, BioCmd.READ, 0, Buffer.alloc(512)), FreeBsdErrno.ENXIO, 'no provider, no bios')
})

/** The fixture process on /dev/ggctl; lines of its output, as they come. */
const ggctlProcess = (t: Test, ...args: string[]) => {
  const child = spawn(process.execPath, [path.join(repoRoot, 'test/fixtures/ggctl-process.js'), ...args], {
    env: process.env,
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  const lines: unknown[] = []
  let text = ''
  child.stdout.on('data', (chunk: Buffer) => {
    text += chunk.toString()
    for (let at = text.indexOf('\n'); at >= 0; at = text.indexOf('\n')) {
      lines.push(JSON.parse(text.slice(0, at)))
      text = text.slice(at + 1)
    }
  })
  const exited = new Promise<number | null>(resolve => child.on('exit', code => resolve(code)))
  return { child, lines, exited }
}

/** The simulated kernel's view, through the same sysctl geom-rowr reads. */
const mesh = () => {
  const xml = libc().sysctlString('kern.geom.confxml')
  if (typeof xml !== 'string') throw new Error(`sysctl failed: errno ${xml.errno}`)
  return parseGeomMesh(xml)
}

t.test('providers outlive the process that made them; kern.geom.confxml shows them', async t => {
  if (!requires(t, { root: true })) return
  const maker = ggctlProcess(t, 'create', 'kept0')
  t.equal(await maker.exited, 0)
  t.type(maker.lines[0], 'number', 'it printed its unit')
  const p = mesh().get('kept0')
  t.match(
    p,
    { className: 'GATE', geom: 'kept0', mediaSize: 1 << 20, sectorSize: 512, mode: { r: 0, w: 0, e: 0 } },
    'the provider is still there',
  )
  t.same(
    p?.consumers.map(c => c.className),
    ['DEV'],
    'with the DEV geom geom_dev tastes onto every provider',
  )

  const control = GGateControl.open()
  t.teardown(() => control.close())
  control.destroy('kept0', { force: false })
  t.notOk(mesh().has('kept0'), 'destroyed by another process')
})

t.test('CANCEL by name gives the unit and requeues, in order, the bios a dead process took', async t => {
  if (!requires(t, { root: true })) return
  const control = GGateControl.open()
  t.teardown(() => control.close())
  const unit = control.create({ ...sizes, name: 'cancel0' })
  t.teardown(() => control.destroy('cancel0', { force: true }))

  const first = Buffer.alloc(512)
  const second = Buffer.alloc(512)
  const waitFor = async (check: () => boolean): Promise<boolean> => {
    for (let i = 0; i < 200 && !check(); i++) await new Promise(resolve => setTimeout(resolve, 10))
    return check()
  }
  // One at a time, so that the order they were taken in is known.
  const taker = ggctlProcess(t, 'take', String(unit))
  const reads = [submit(unit, BioCmd.READ, 4096, first)]
  t.ok(await waitFor(() => taker.lines.length === 2), 'one process took the first bio')
  const taker2 = ggctlProcess(t, 'take', String(unit))
  reads.push(submit(unit, BioCmd.READ, 8192, second))
  t.ok(await waitFor(() => taker2.lines.length === 2), 'another took the second')
  taker.child.kill('SIGKILL')
  taker2.child.kill('SIGKILL')
  await Promise.all([taker.exited, taker2.exited])

  t.equal(control.cancel('cancel0'), unit, 'CANCEL by name writes the unit back')
  const io = new GGateIo(control, unit, Buffer.alloc(4096))
  t.match(io.start(), { kind: 'bio', cmd: BioCmd.READ, offset: 4096 }, 'the first bio comes first')
  io.data.fill(1, 0, 512)
  t.equal(io.done(0), true)
  t.match(io.start(), { kind: 'bio', cmd: BioCmd.READ, offset: 8192 })
  io.data.fill(2, 0, 512)
  t.equal(io.done(0), true)
  t.same(await Promise.all(reads), [0, 0], 'both reads are answered by the new process')
  t.same([first[0], second[0]], [1, 2])
  failsWith(t, () => control.cancel('nosuch'), FreeBsdErrno.ENXIO, 'CANCEL of a name that does not exist')
})

t.test('a signal ends a sleeping START with ECANCELED (g_gate.c: msleep with PCATCH); a thread that blocks signals sleeps on', async t => {
  if (!requires(t, { root: true })) return
  const control = GGateControl.open()
  t.teardown(() => control.close())
  const unit = control.create({ ...sizes, name: 'sig0' })
  t.teardown(() => control.destroy('sig0', { force: true }))
  const signalUntil = async (p: ReturnType<typeof ggctlProcess>, lines: number): Promise<void> => {
    for (let i = 0; i < 100 && p.lines.length < lines; i++) {
      if (p.lines.length > 0) p.child.kill('SIGUSR2')
      await new Promise(resolve => setTimeout(resolve, 20))
    }
  }

  const interrupted = ggctlProcess(t, 'start', String(unit))
  await signalUntil(interrupted, 2)
  t.same(interrupted.lines, ['starting', { kind: 'cancelled' }], 'START returned 0 with gctl_error ECANCELED')
  t.equal(await interrupted.exited, 0)
  t.ok(mesh().has('sig0'), 'the provider is not destroyed by it')

  const blocking = ggctlProcess(t, 'start', String(unit), 'block')
  await signalUntil(blocking, 2)
  t.same(blocking.lines, ['starting'], 'signals did not end the sleep')
  const read = submit(unit, BioCmd.READ, 0, Buffer.alloc(512))
  t.equal(await blocking.exited, 0)
  t.match(blocking.lines[1], { kind: 'bio', cmd: BioCmd.READ }, 'a bio did')
  // The process ended with the bio taken: CANCEL hands it over again.
  control.cancel('sig0')
  const io = new GGateIo(control, unit, Buffer.alloc(4096))
  t.match(io.start(), { kind: 'bio', cmd: BioCmd.READ, offset: 0 })
  t.equal(io.done(0), true)
  t.equal(await read, 0)
})

t.test(
  'MODIFY READPROV and READOFFSET as g_gate_modify: checks, reads straight to the read provider, a failed one through the daemon',
  async t => {
    if (!requires(t, { root: true, tools: ['losetup', 'truncate'] })) return
    const control = GGateControl.open()
    t.teardown(() => control.close())
    const dir = fs.mkdtempSync('/tmp/ggsim-modify-')
    const backing = path.join(dir, 'md.img')
    const content = Buffer.alloc(2 << 20)
    for (let i = 0; i < content.length; i += 4) content.writeUInt32LE(i, i)
    fs.writeFileSync(backing, content)
    const attached = await run('losetup', ['--find', '--show', backing])
    t.equal(attached.code, 0, attached.stderr)
    const disk = attached.stdout.trim()
    t.teardown(async () => {
      await run('losetup', ['-d', disk])
      fs.rmSync(dir, { recursive: true, force: true })
    })
    const provider = path.basename(disk)
    const unit = control.create({ ...sizes, name: 'm0' })
    t.teardown(() => control.destroy('m0', { force: true }))

    failsWith(t, () => control.directReads(unit + 1, provider, 0), FreeBsdErrno.ENXIO, 'a unit that does not exist')
    failsWith(t, () => control.directReads(unit, 'nosuch0', 0), FreeBsdErrno.EINVAL, 'a provider that does not exist')
    failsWith(t, () => control.directReads(unit, 'null', 0), FreeBsdErrno.EINVAL, 'a character device is no provider')
    failsWith(t, () => control.directReads(unit, provider, 100), FreeBsdErrno.EINVAL, 'an offset that is not a multiple of the sector size')
    failsWith(t, () => control.directReads(unit, provider, 2 << 20), FreeBsdErrno.EINVAL, 'an offset past which the media does not fit')
    t.equal(
      checkReadOffset(100, 512, 1 << 20, 2 << 20),
      'read offset 100 is not a multiple of the 512-byte sector size',
      'rowr checks first',
    )
    t.equal(checkReadOffset(1 << 20, 512, 1 << 20, 2 << 20), null)

    control.directReads(unit, provider, 1 << 20)
    const direct = Buffer.alloc(4096)
    t.equal(await submit(unit, BioCmd.READ, 8192, direct), 0, 'a READ is answered without START')
    t.same(direct, content.subarray((1 << 20) + 8192, (1 << 20) + 8192 + 4096), 'from the read provider at the read offset')

    // The read provider shrinks under the provider: the direct read comes up short and goes to the daemon.
    t.equal((await run('truncate', ['-s', '1M', backing])).code, 0)
    t.equal((await run('losetup', ['-c', disk])).code, 0)
    const io = new GGateIo(control, unit, Buffer.alloc(64 * 1024))
    const fallback = Buffer.alloc(4096)
    const read = submit(unit, BioCmd.READ, 0, fallback)
    t.same(io.start(), { kind: 'bio', cmd: BioCmd.READ, offset: 0, length: 4096 }, 'the failed direct read is queued for the daemon')
    io.data.fill(0x5d, 0, 4096)
    t.equal(io.done(0), true)
    t.equal(await read, 0)
    t.same(fallback, Buffer.alloc(4096, 0x5d), 'and answered by it')
  },
)
