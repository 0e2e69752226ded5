// The ggctl simulator's GEOM Gate semantics (docs/ggate-abi.md),
// driven through lib/ggate/ggctl.ts with the simulator loaded in place of
// libc, and bios queued through its test entry point as the kernel would.
// No FUSE mount here (GGSIM_MOUNT unset): test/root/ggate-sim.ts does that.
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import t, { type Test } from 'tap'
import { repoRoot, requires } from './fixtures/helpers.js'

const simulator = path.join(repoRoot, 'build/ggsim.so')
process.env.GEOM_ROWR_LIBC = simulator
delete process.env.GGSIM_MOUNT

const { GGateControl, GGateError, GGateIo } = await import('../lib/ggate/ggctl.js')
const { BioCmd, FreeBsdErrno, ggateAbi } = await import('../native-bindings/ggate-abi.js')
const { libc } = await import('../native-bindings/libc.js')

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
