// The Live ISO boot script under dash, with FreeBSD's commands replaced by
// stubs that record their calls and fake their output; the uzip images are
// FreeBSD's own (shared/fixtures/uzip).
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { repoRoot, requires } from './fixtures/helpers.js'

const script = path.join(repoRoot, 'boot/rowr-init.sh')
const fixtures = path.join(repoRoot, 'test/fixtures/uzip')
const REAL_TOOLS = ['od', 'tr', 'tail', 'cut', 'mkdir', 'ln', 'sleep', 'sh', 'cat', 'basename', 'printenv']

/** A stub: records "name args" and behaves as the test's environment says. */
const STUB = `#!/bin/sh
me=$(basename "$0")
echo "$me $*" >> "$CALLS"
fail=$(printenv "FAIL_$(echo "$me" | tr - _)")
[ -n "$fail" ] && [ "$fail" = "$*" -o "$fail" = any ] && exit 1
case "$me" in
kenv)
  if [ "$1" = -q ]; then printenv "KENV_$(echo "$2" | tr . _)"; exit $?; fi ;;
kldstat) case " $LOADED " in *" $3 "*) exit 0 ;; *) exit 1 ;; esac ;;
mdconfig)
  [ -z "$NO_UZIP" ] && : > "$ROWR_INIT_ROOT/dev/md1.uzip"
  echo md1 ;;
diskinfo) printf '%s\\t512\\t%s\\t2048\\t0\\t0\\n' "$1" "\${DISK_SIZE:-1048576}" ;;
geom-rowr) [ "$1" = create ] && echo /dev/rowr0 ;;
esac
exit 0
`

const boot = (t: Test, { image = 'little.img.uzip', env = {} as Record<string, string> } = {}) => {
  const dir = t.testdir()
  const root = path.join(dir, 'root')
  const stubs = path.join(dir, 'stubs')
  const real = path.join(dir, 'real')
  for (const d of [stubs, real, path.join(root, 'dev'), path.join(root, 'cdrom/data'), path.join(root, 'ro/usr/local/bin')]) {
    fs.mkdirSync(d, { recursive: true })
  }
  for (const name of ['kenv', 'mount', 'mdconfig', 'kldstat', 'kldload', 'diskinfo', 'sysctl']) {
    fs.writeFileSync(path.join(stubs, name), STUB, { mode: 0o755 })
  }
  // geom-rowr comes from the read-only system image, mounted on /ro.
  fs.writeFileSync(path.join(root, 'ro/usr/local/bin/geom-rowr'), STUB, { mode: 0o755 })
  for (const tool of REAL_TOOLS) {
    fs.symlinkSync(execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim(), path.join(real, tool))
  }
  if (image) fs.copyFileSync(path.join(fixtures, image), path.join(root, 'cdrom/data/system.uzip'))
  const calls = path.join(dir, 'calls')
  fs.writeFileSync(calls, '')
  const r = spawnSync('dash', [script], {
    encoding: 'utf8',
    input: '',
    env: { ROWR_INIT_ROOT: root, ROWR_INIT_PATH: `${stubs}:${real}`, CALLS: calls, LOADED: 'g_uzip', ...env },
  })
  const log = fs
    .readFileSync(calls, 'utf8')
    .trim()
    .split('\n')
    .filter(l => !l.startsWith('kenv -q'))
    .map(l => l.replaceAll(root, 'ROOT'))
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, calls: log, root }
}

t.test('shellcheck is clean', async t => {
  if (!requires(t, { tools: ['shellcheck', 'dash'] })) return
  const r = spawnSync('shellcheck', ['-s', 'sh', script], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stdout)
})

t.test('the whole boot: attach, create, check the size, mount, hand over', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const r = boot(t)
  t.equal(r.status, 0, r.stderr)
  t.same(r.calls, [
    'mount -t cd9660 -o ro /dev/iso9660/LIVE ROOT/cdrom',
    'kldstat -q -m g_uzip',
    'mdconfig -a -t vnode -o readonly -f ROOT/cdrom/data/system.uzip',
    'mount -o ro /dev/md1.uzip ROOT/ro',
    'kldstat -q -m g_gate',
    'kldload geom_gate',
    'geom-rowr create rowr0 md1.uzip auto',
    'diskinfo /dev/rowr0',
    'mount /dev/rowr0 ROOT/sysroot',
    'sysctl kern.module_path=/sysroot/boot/kernel;/sysroot/boot/modules',
    'kenv init_chroot=/sysroot',
  ])
  t.match(r.stdout, /system\.uzip: 1048576 bytes uncompressed/)
  t.equal(fs.readlinkSync(path.join(r.root, 'boot')), '/sysroot/boot', '/boot is the same inside and outside the chroot')
})

t.test('kenv settings are honoured', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const r = boot(t, { env: { KENV_rowr_media: '/dev/cd1', KENV_rowr_name: 'live0', LOADED: 'g_uzip g_gate' } })
  t.equal(r.status, 0)
  t.ok(r.calls.includes('mount -t cd9660 -o ro /dev/cd1 ROOT/cdrom'))
  t.ok(r.calls.includes('geom-rowr create live0 md1.uzip auto'))
  t.notOk(r.calls.includes('kldload geom_gate'), 'a loaded module is not loaded again')
})

t.test('the size comes from the uzip header: FreeBSD\'s images and a large one', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  t.match(boot(t, { image: 'big.img.uzip' }).stdout, /1048576 bytes uncompressed/, 'big-endian UFS image, same header layout')
  const dir = t.testdir()
  const header = Buffer.alloc(512)
  header.write('#!/bin/sh\n#V2.0 Format\n')
  header.writeUInt32BE(65536, 128)
  header.writeUInt32BE(70000, 132)
  const big = path.join(dir, 'large.uzip')
  fs.writeFileSync(big, header)
  // The script's functions alone, without the boot sequence.
  const functions = path.join(dir, 'functions.sh')
  fs.writeFileSync(functions, fs.readFileSync(script, 'utf8').split('\nsay "mounting')[0]!)
  const r = spawnSync('dash', ['-c', `. ${functions}; uzip_size ${big}`], {
    encoding: 'utf8',
    env: { ROWR_INIT_PATH: process.env.PATH ?? '', CALLS: '/dev/null' },
  })
  t.equal(r.stdout.trim(), String(65536 * 70000), 'over 4 GiB: 64-bit shell arithmetic')
})

t.test('failures before the image is attached leave a shell, with the reason', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const cases: [string, Parameters<typeof boot>[1], RegExp][] = [
    ['media cannot be mounted', { env: { FAIL_mount: 'any' } }, /FATAL: cannot mount \/dev\/iso9660\/LIVE; set rowr.media/],
    ['no image on the media', { image: '' }, /FATAL: \/cdrom\/data\/system.uzip is not on \/dev\/iso9660\/LIVE/],
    ['mdconfig fails', { env: { FAIL_mdconfig: 'any' } }, /FATAL: cannot attach/],
  ]
  for (const [what, opts, message] of cases) {
    const r = boot(t, opts)
    t.match(r.stdout, message, what)
    t.match(r.stdout, /starting a shell/, what)
    t.notOk(r.calls.some(c => c.startsWith('kenv init_chroot')), `${what}: no hand-over`)
  }
  const notUzip = boot(t, { image: 'etalon.txt' })
  t.match(notUzip.stdout, /is not a geom_uzip image/)
})

t.test('failures after the image is attached fall back to a read-only boot', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const cases: [string, Record<string, string>, RegExp, boolean][] = [
    ['geom_gate cannot load', { FAIL_kldload: 'geom_gate' }, /cannot load geom_gate/, false],
    ['geom-rowr create fails', { FAIL_geom_rowr: 'create rowr0 md1.uzip auto' }, /geom-rowr create rowr0 md1.uzip auto failed/, false],
    ['the device has the wrong size', { DISK_SIZE: '524288' }, /\/dev\/rowr0 is 524288 bytes, the image 1048576 bytes/, true],
    ['the device cannot be mounted', { FAIL_mount: '/dev/rowr0 ROOT/sysroot' }, /cannot mount \/dev\/rowr0/, true],
  ]
  for (const [what, env, message, destroys] of cases) {
    const r = boot(t, { env: { ...env } })
    if (env.FAIL_mount) {
      // The stub sees real paths: fail exactly the mount of the device.
      const again = boot(t, { env: { FAIL_mount: `/dev/rowr0 ${r.root}/sysroot` } })
      t.match(again.stdout, message, what)
      t.ok(again.calls.includes('geom-rowr destroy rowr0'), `${what}: the device is destroyed`)
      t.equal(again.calls.at(-1), 'kenv init_chroot=/ro', `${what}: read-only hand-over`)
      continue
    }
    t.equal(r.status, 0, what)
    t.match(r.stdout, message, what)
    t.match(r.stdout, /falling back to a READ-ONLY system/, what)
    t.equal(r.calls.at(-1), 'kenv init_chroot=/ro', `${what}: read-only hand-over`)
    t.equal(r.calls.includes('geom-rowr destroy rowr0'), destroys, `${what}: destroy ${destroys ? 'called' : 'not needed'}`)
  }
})
