// The Live ISO boot script under dash, in a model of FreeBSD's ramdisk: PATH
// holds only stubs named after /rescue's commands (a command outside /rescue
// is "not found"), the ramdisk root starts read-only, the media attaches
// when the test says, and the system image's programs (env, protect, node)
// are dynamically linked stubs that fail unless run inside the image.
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import t, { type Test } from 'tap'
import { repoRoot, requires } from './fixtures/helpers.js'

const script = path.join(repoRoot, 'boot/rowr-init.sh')
const fixtures = path.join(repoRoot, 'test/fixtures/uzip')

// What /rescue holds: FreeBSD's rescue/rescue/Makefile, the CRUNCH_PROGS_*
// lists with their CRUNCH_ALIAS_* names and SCRIPTS (the options on by
// default included: tcsh, inet6, ipfilter, routed, zfs, amd64, iscsi).
const RESCUE = `
  cat chflags chio chmod cp date dd df echo ed red expr getfacl hostname kenv kill
  ln link ls mkdir mv pkill pgrep ps pwd realpath rm unlink rmdir setfacl sh sleep
  stty sync test [ csh tcsh
  camcontrol clri devfs dmesg dump rdump dumpfs dumpon fsck fsck_ffs fsck_4.2bsd
  fsck_ufs fsck_msdosfs fsdb fsirand gbde geom glabel gpart ifconfig init kldconfig
  kldload kldstat kldunload ldconfig md5 mdconfig mdmfs mknod mount mount_cd9660
  mount_msdosfs mount_nfs mount_nullfs mount_udf mount_unionfs newfs newfs_msdos
  nos-tun ping ping6 reboot fastboot halt fasthalt restore rrestore rcorder route
  savecore shutdown poweroff spppcontrol swapon sysctl tunefs umount ccdconfig rtsol
  ipf routed rtquery bectl zfs zpool zdb bsdlabel disklabel fdisk dhclient
  head mt sed tail tee gzip gunzip gzcat zcat bzip2 bunzip2 bzcat less more xz unxz
  lzma unlzma xzcat lzcat zstd unzstd zstdcat zstdmt fetch tar nc vi ex id groups
  whoami iscsictl chroot chown chgrp iscsid nextboot dhclient-script
`
  .trim()
  .split(/\s+/)

/** /rescue commands whose real behaviour the model borrows from the host. */
const HOST_TOOLS = ['sed', 'head', 'tail', 'cat']

const GIB = 1 << 30

/** By its path: PATH, inside, holds only the stubs. */
const dash = spawnSync('sh', ['-c', 'command -v dash'], { encoding: 'utf8' }).stdout.trim() || 'dash'

/**
 * One stub for every /rescue command and for the image's programs,
 * dispatching on its name. Each records "name args" in $CALLS.
 */
const STUB = `#!/bin/sh
caller_path=$PATH
PATH=$STUB_HOST_PATH
me=\${0##*/}
echo "$me $*" >> "$CALLS"
state=$ROWR_INIT_ROOT/../state
# FAIL_<name> fails the call with these arguments (ROOT standing for the root), or any.
fail=$(printenv "FAIL_$(echo "$me" | tr - _)")
args=$(echo "$*" | sed "s|$ROWR_INIT_ROOT|ROOT|g")
[ -n "$fail" ] && [ "$fail" = "$args" -o "$fail" = any ] && exit 1
readonly_root() { [ ! -e "$state/root-rw" ]; }
# A dynamically linked program of the image: the kernel looks for its linker
# and libraries under the process's root, so it runs only chrooted there.
dynamic() {
  if [ -z "$STUB_CHROOT" ] || [ ! -e "$STUB_CHROOT/libexec/ld-elf.so.1" ]; then
    echo "ELF interpreter /libexec/ld-elf.so.1 not found, error 2" >&2; exit 1
  fi
  [ -e "$STUB_CHROOT/lib/libc.so.7" ] || { echo "$me: Shared object \\"libc.so.7\\" not found" >&2; exit 1; }
}
case "$me" in
kenv)
  if [ "$1" = -q ]; then printenv "KENV_$(echo "$2" | tr . _)"; exit $?; fi ;;
mount)
  if [ "$*" = "-u -w /" ]; then : > "$state/root-rw"; exit 0; fi
  eval "target=\\\${$#}"
  [ -d "$target" ] || { echo "mount: $target: No such file or directory" >&2; exit 1; }
  case "$*" in
  "-t cd9660 -o ro "*)
    [ -e "$ROWR_INIT_ROOT$5" ] || { echo "mount: $5: No such file or directory" >&2; exit 1; }
    cp -R "$MEDIA_CONTENT/." "$target" ;;
  "-o ro /dev/md1.uzip "*) cp -R "$IMAGE_CONTENT/." "$target" ;;
  "-t devfs devfs "*) : > "$target/.devfs" ;;
  "-t tmpfs "*) : > "$target/.tmpfs" ;;
  esac ;;
mkdir|ln|cp)
  if readonly_root; then echo "$me: $*: Read-only file system" >&2; exit 1; fi
  exec "$me" "$@" ;;
sleep)
  # No waiting: each sleep is a tick, and what is due appears.
  ticks=$(( $(cat "$state/ticks") + 1 )); echo $ticks > "$state/ticks"
  while read -r due file; do [ "$due" -le "$ticks" ] && mkdir -p "\${file%/*}" && : > "$file"; done < "$state/appear" ;;
kldstat) case " $LOADED " in *" $3 "*) exit 0 ;; *) exit 1 ;; esac ;;
umount) ;;
mdconfig)
  [ "$1" = -d ] && exit 0
  [ -f "$7" ] || { echo "mdconfig: $7: No such file or directory" >&2; exit 1; }
  if [ -n "$UZIP_AFTER" ]; then echo "$(( $(cat "$state/ticks") + UZIP_AFTER )) $ROWR_INIT_ROOT/dev/md1.uzip" >> "$state/appear"
  elif [ -z "$NO_UZIP" ]; then : > "$ROWR_INIT_ROOT/dev/md1.uzip"; fi
  echo md1 ;;
sysctl)
  case "$2" in
  hw.physmem) echo "\${PHYSMEM:-${4 * GIB}}" ;;
  kern.geom.confxml)
    echo '<mesh>'
    provider() { printf '\\t<provider id="0x1">\\n\\t  <mode>r0w0e0</mode>\\n\\t  <name>%s</name>\\n\\t  <mediasize>%s</mediasize>\\n\\t</provider>\\n' "$1" "$2"; }
    [ -e "$ROWR_INIT_ROOT/dev/md1.uzip" ] && provider md1.uzip 1048576
    [ -e "$state/created" ] && provider rowr0 "\${DEVICE_SIZE:-1048576}"
    echo '</mesh>' ;;
  *) exit 1 ;;
  esac ;;
chroot)
  dir=$1; shift
  [ -d "$dir" ] || { echo "chroot: $dir: No such file or directory" >&2; exit 1; }
  cmd=$1; shift
  STUB_CHROOT=$dir exec "$dir$cmd" "$@" ;;
sed|head|tail|cat) exec "$me" "$@" ;;
env)
  dynamic
  search=$caller_path
  while [ $# -gt 0 ]; do
    case "$1" in PATH=*) search=\${1#PATH=}; shift ;; *=*) export "$1"; shift ;; -S) shift ;; *) break ;; esac
  done
  PATH=$search
  # Found on the image's PATH, under its root.
  case "$1" in /*) exec "$STUB_CHROOT$@" ;; esac
  IFS=:
  for dir in $search; do
    [ -x "$STUB_CHROOT$dir/$1" ] && cmd=$1 && shift && exec "$STUB_CHROOT$dir/$cmd" "$@"
  done
  echo "env: $1: No such file or directory" >&2; exit 127 ;;
geom-rowr)
  # "#!/usr/bin/env -S node": the kernel starts /usr/bin/env under the root.
  [ -n "$STUB_CHROOT" ] && [ -x "$STUB_CHROOT/usr/bin/env" ] || { echo "$0: /usr/bin/env: not found" >&2; exit 1; }
  PATH=$caller_path
  exec "$STUB_CHROOT/usr/bin/env" -S node /usr/local/lib/geom-rowr.js "$@" ;;
node)
  dynamic
  [ -e "$STUB_CHROOT/dev/.devfs" ] || { echo "node: /dev/null: No such file or directory" >&2; exit 1; }
  shift
  if [ "$1" = create ]; then
    shift
    while [ "\${1#--}" != "$1" ]; do shift; done
    set -- create "$@"
    [ -e "$STUB_CHROOT/var/run/.tmpfs" ] || { echo "EROFS: read-only file system, mkdir '/var/run/geom-rowr'" >&2; exit 1; }
    mkdir -p "$STUB_CHROOT/var/run/geom-rowr/$2"
    printf '{\\n  "name": "%s",\\n  "pid": 4242,\\n  "phase": "ready"\\n}\\n' "$2" > "$STUB_CHROOT/var/run/geom-rowr/$2/state.json"
    : > "$state/created"
    echo /dev/$2
  fi ;;
ldd)
  dynamic
  echo /lib/libc.so.7 ;;
protect)
  dynamic
  [ "$*" = "-p 4242" ] || { echo "protect: procctl: No such process" >&2; exit 1; } ;;
*) echo "$me: not modelled by the test" >&2; exit 1 ;;
esac
exit 0
`

interface Boot {
  readonly image?: string
  readonly media?: 'present' | 'absent' | number
  readonly env?: Record<string, string>
}

const boot = (t: Test, { image = 'little.img.uzip', media = 'present', env = {} }: Boot = {}) => {
  const dir = t.testdir()
  const root = path.join(dir, 'root')
  const state = path.join(dir, 'state')
  const stubs = path.join(dir, 'rescue')
  const mediaContent = path.join(dir, 'media')
  const imageContent = path.join(dir, 'image')
  for (const d of [root, state, stubs, path.join(mediaContent, 'data')]) fs.mkdirSync(d, { recursive: true })
  // The ramdisk has /dev (devfs) and /rescue; the rest the script makes.
  fs.mkdirSync(path.join(root, 'dev'))
  fs.writeFileSync(path.join(state, 'ticks'), '0')
  fs.writeFileSync(path.join(state, 'appear'), '')
  const stub = path.join(dir, 'stub')
  fs.writeFileSync(stub, STUB, { mode: 0o755 })
  for (const name of RESCUE) fs.symlinkSync(stub, path.join(stubs, name))
  // The system image: FreeBSD's linker and libc, env, protect, node, geom-rowr.
  for (const d of ['dev', 'var/run', 'libexec', 'lib', 'usr/bin', 'usr/local/bin', 'usr/local/lib/geom-rowr/node_modules']) {
    fs.mkdirSync(path.join(imageContent, d), { recursive: true })
  }
  fs.writeFileSync(path.join(imageContent, 'libexec/ld-elf.so.1'), '')
  fs.writeFileSync(path.join(imageContent, 'lib/libc.so.7'), '')
  fs.writeFileSync(path.join(imageContent, 'usr/local/lib/geom-rowr/geom-rowr.js'), '')
  for (const program of ['usr/bin/env', 'usr/bin/ldd', 'usr/bin/protect', 'usr/local/bin/node', 'usr/local/bin/geom-rowr']) {
    fs.symlinkSync(stub, path.join(imageContent, program))
  }
  if (image) fs.copyFileSync(path.join(fixtures, image), path.join(mediaContent, 'data/system.uzip'))
  const medium = path.join(root, 'dev/iso9660/LIVE')
  if (media === 'present') {
    fs.mkdirSync(path.dirname(medium))
    fs.writeFileSync(medium, '')
  } else if (typeof media === 'number') {
    fs.writeFileSync(path.join(state, 'appear'), `${media} ${medium}\n`)
  }
  const calls = path.join(dir, 'calls')
  fs.writeFileSync(calls, '')
  const hostPath = [
    ...new Set(HOST_TOOLS.map(tool => path.dirname(execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim()))),
  ]
  const r = spawnSync(dash, [script], {
    encoding: 'utf8',
    input: '',
    env: {
      ROWR_INIT_ROOT: root,
      ROWR_INIT_PATH: stubs,
      STUB_HOST_PATH: `${hostPath.join(':')}:/usr/bin:/bin`,
      CALLS: calls,
      MEDIA_CONTENT: mediaContent,
      IMAGE_CONTENT: imageContent,
      LOADED: 'g_uzip g_gate',
      ...env,
    },
  })
  const log = fs
    .readFileSync(calls, 'utf8')
    .trim()
    .split('\n')
    .map(l => l.replaceAll(root, 'ROOT'))
  // The boot's steps, without the look-ups and helpers around them.
  const steps = log.filter(l => !/^(kenv -q|sleep|sed|head|tail|cat|env|node) /.test(l) && !l.startsWith('sysctl -n kern.geom'))
  return {
    status: r.status,
    stdout: r.stdout,
    stderr: r.stderr,
    calls: log,
    steps,
    root,
    ticks: Number(fs.readFileSync(path.join(state, 'ticks'), 'utf8')),
  }
}

type Result = ReturnType<typeof boot>

/** Only /rescue's commands, each as the model knows it. */
const onlyRescue = (t: Test, r: Result, what: string): void => {
  t.notMatch(r.stderr, /not found|not modelled/, `${what}: nothing outside /rescue, nothing unmodelled`)
}

const readOnlyFallback = (t: Test, r: Result, what: string): void => {
  t.equal(r.status, 0, `${what}: init goes on`)
  t.match(r.stdout, /falling back to a READ-ONLY system/, what)
  t.same(r.steps.slice(-2), ['kenv rowr.readonly=YES', 'kenv init_chroot=/ro'], `${what}: read-only hand-over, flagged for rc.conf`)
}

const deadEnd = (t: Test, r: Result, what: string): void => {
  t.equal(r.status, 1, `${what}: exit 1 sends init to single-user mode`)
  t.match(r.stdout, /no system to boot/, what)
  t.notOk(
    r.calls.some(c => c.startsWith('kenv init_chroot')),
    `${what}: no hand-over`,
  )
}

const CHROOT = 'chroot ROOT/ro /usr/bin/env PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin /usr/local/bin/geom-rowr'

t.test('shellcheck is clean', async t => {
  if (!requires(t, { tools: ['shellcheck', 'dash'] })) return
  const r = spawnSync('shellcheck', ['-s', 'sh', script], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stdout)
})

t.test('the script is run by /rescue/sh: init execs it directly when it is executable', async t => {
  t.equal(fs.readFileSync(script, 'utf8').split('\n')[0], '#!/rescue/sh')
  t.ok(fs.statSync(script).mode & 0o111, 'executable')
})

t.test('the whole boot: remount, attach, create inside the image, protect, check, mount, hand over', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const r = boot(t)
  t.equal(r.status, 0, r.stderr)
  onlyRescue(t, r, 'the whole boot')
  t.same(r.steps, [
    'mount -u -w /',
    'mkdir -p ROOT/cdrom ROOT/ro ROOT/sysroot',
    'mount -t cd9660 -o ro /dev/iso9660/LIVE ROOT/cdrom',
    'kldstat -q -m g_uzip',
    'mdconfig -a -t vnode -o readonly -f ROOT/cdrom/data/system.uzip',
    'mount -o ro /dev/md1.uzip ROOT/ro',
    'sysctl -n hw.physmem',
    'kldstat -q -m g_gate',
    'mount -t devfs devfs ROOT/ro/dev',
    'mount -t tmpfs -o size=16m tmpfs ROOT/ro/var/run',
    `${CHROOT} create rowr0 md1.uzip auto`,
    'geom-rowr create rowr0 md1.uzip auto',
    'chroot ROOT/ro /usr/bin/protect -p 4242',
    'protect -p 4242',
    'mount /dev/rowr0 ROOT/sysroot',
    'ln -s /sysroot/boot ROOT/boot',
    'kenv init_chroot=/sysroot',
  ])
  t.notOk(
    r.calls.some(c => c.includes('kern.module_path')),
    'kern.module_path is left alone',
  )
  t.match(r.stdout, /system\.uzip: 1048576 bytes uncompressed/, 'the size comes from the kernel (kern.geom.confxml)')
  t.equal(fs.readlinkSync(path.join(r.root, 'boot')), '/sysroot/boot', '/boot is the same inside and outside the chroot')
})

t.test('rowr.hydrate=1: the runtime runs from a tmpfs, the device hydrates, then the image, its md and the medium go', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const r = boot(t, { env: { KENV_rowr_hydrate: '1' } })
  t.equal(r.status, 0, r.stderr)
  t.ok(r.steps.includes('kenv init_chroot=/sysroot') && !r.steps.includes('kenv rowr.readonly=YES'), 'it boots read-write')
  const released = async (): Promise<string[]> => {
    for (let i = 0; i < 200; i++) {
      const calls = fs
        .readFileSync(path.join(r.root, '../calls'), 'utf8')
        .trim()
        .split('\n')
        .map(l => l.replaceAll(r.root, 'ROOT'))
      if (calls.includes('umount ROOT/cdrom')) return calls
      await new Promise(resolve => setTimeout(resolve, 25))
    }
    return []
  }
  const calls = await released()
  t.notMatch(r.stderr, /not found|not modelled/)
  const at = (call: string): number => calls.indexOf(call)
  const RT = CHROOT.replace('ROOT/ro', 'ROOT/rt')
  const order = [
    'kldstat -q -m g_gate',
    'mount -t tmpfs tmpfs ROOT/rt',
    'chroot ROOT/ro /usr/bin/ldd -f %p  /usr/bin/env /usr/bin/protect /usr/local/bin/node',
    'cp -p ROOT/ro/libexec/ld-elf.so.1 ROOT/rt/libexec/ld-elf.so.1',
    'cp -p ROOT/ro/lib/libc.so.7 ROOT/rt/lib/libc.so.7',
    'cp -Rp ROOT/ro/usr/local/lib/geom-rowr ROOT/rt/usr/local/lib/',
    'mount -t devfs devfs ROOT/rt/dev',
    'mount -t tmpfs -o size=16m tmpfs ROOT/rt/var/run',
    `${RT} create --hydrate rowr0 md1.uzip auto`,
    'chroot ROOT/rt /usr/bin/protect -p 4242',
    'mount /dev/rowr0 ROOT/sysroot',
    `${RT} hydrate --wait rowr0`,
    'umount ROOT/ro',
    'mdconfig -d -u md1',
    'umount ROOT/cdrom',
  ]
  for (const call of order) t.ok(at(call) >= 0, `called: ${call}`)
  t.same(
    order.map(at),
    order.map(at).sort((a, b) => a - b),
    'in this order: runtime copied, device created from it, the medium released after hydration',
  )
  t.notOk(
    calls.some(c => c.startsWith('mount -t devfs devfs ROOT/ro/')),
    'nothing runs from the image',
  )
  t.ok(
    fs.existsSync(path.join(r.root, 'rt/libexec/ld-elf.so.1')) && fs.existsSync(path.join(r.root, 'rt/lib/libc.so.7')),
    'the linker and libc are in the tmpfs',
  )
  t.match(r.stdout, /copying the image into RAM in the background; the medium is released when it is done/)

  const noCopy = boot(t, { env: { KENV_rowr_hydrate: '1', FAIL_cp: 'any' } })
  readOnlyFallback(t, noCopy, 'the runtime cannot be copied')
  t.match(noCopy.stdout, /cannot copy node and geom-rowr from the image into \/rt \(rowr\.hydrate=1\)/)
})

t.test('the model: each limit of the real ramdisk makes the old way fail', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const dir = t.testdir()
  const probe = (body: string, r = boot(t)) => {
    const file = path.join(dir, 'probe.sh')
    fs.writeFileSync(file, `root=${r.root}\n${body}\n`)
    return spawnSync(dash, [file], {
      encoding: 'utf8',
      env: { PATH: path.join(r.root, '../rescue'), STUB_HOST_PATH: process.env.PATH, CALLS: '/dev/null', ROWR_INIT_ROOT: r.root },
    })
  }
  t.match(probe('od -A n -c -N 10 /dev/null').stderr, /od: not found/, 'od is not in /rescue')
  t.match(probe('diskinfo /dev/rowr0').stderr, /diskinfo: not found/, 'diskinfo is not in /rescue')
  t.match(
    probe('"$root/ro/usr/local/bin/geom-rowr" list').stderr,
    /\/usr\/bin\/env: not found/,
    'a #!/usr/bin/env script cannot start on the ramdisk',
  )
  t.match(probe('"$root/ro/usr/local/bin/node" --version').stderr, /ld-elf\.so\.1 not found/, 'node cannot start without its linker')
  t.equal(probe('chroot "$root/ro" /usr/local/bin/node --version').status, 0, 'node starts inside the image')
})

t.test('kenv settings are honoured', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const r = boot(t, { media: 'absent', env: { KENV_rowr_media: '/dev/cd1', KENV_rowr_name: 'live0', DEVICE_SIZE: '1048576' } })
  // /dev/cd1 is not there: the setting is what the script waits for.
  t.ok(r.calls.includes('kenv -q rowr.media'))
  t.match(r.stdout, /\/dev\/cd1 did not appear/)
  const named = boot(t, { env: { KENV_rowr_name: 'live0' } })
  t.ok(named.calls.includes(`${CHROOT} create live0 md1.uzip auto`))
  const bad = boot(t, { env: { KENV_rowr_media_timeout: 'soon' } })
  t.match(bad.stdout, /rowr\.media_timeout="soon" is not a whole number; using 30/)
})

t.test('a root that starts read-only is remounted read-write first', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const r = boot(t, { env: { FAIL_mount: '-u -w /' } })
  deadEnd(t, r, 'the ramdisk cannot be remounted')
  t.match(r.stdout, /cannot remount the ramdisk read-write/)
})

t.test('a medium that appears late is waited for, up to rowr.media_timeout', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const late = boot(t, { media: 12 })
  t.equal(late.status, 0, late.stderr)
  t.equal(late.ticks, 12, 'polled once a second until it appeared')
  t.equal(late.steps.at(-1), 'kenv init_chroot=/sysroot')
  const never = boot(t, { media: 'absent', env: { KENV_rowr_media_timeout: '5' } })
  deadEnd(t, never, 'no medium')
  t.equal(never.ticks, 5)
  t.match(never.stdout, /\/dev\/iso9660\/LIVE did not appear within 5 s; set rowr\.media/)
})

t.test('mdN.uzip is waited for too, up to rowr.uzip_timeout', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const late = boot(t, { env: { UZIP_AFTER: '20' } })
  t.equal(late.status, 0, late.stderr)
  t.equal(late.steps.at(-1), 'kenv init_chroot=/sysroot')
  const never = boot(t, { env: { NO_UZIP: '1' } })
  deadEnd(t, never, 'not a uzip image')
  t.equal(never.ticks, 30, 'the default timeout')
  t.match(never.stdout, /geom_uzip did not show md1\.uzip within 30 s: is \/cdrom\/data\/system\.uzip a geom_uzip image/)
})

t.test('a small machine boots read-only, with the reason', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const small = boot(t, { env: { PHYSMEM: String(512 << 20) } })
  readOnlyFallback(t, small, 'small memory')
  t.match(small.stdout, /this machine has 512 MiB of memory, under the 1024 MiB a writable system needs \(set rowr\.min_memory/)
  t.notOk(
    small.calls.some(c => c.startsWith('geom-rowr')),
    'no daemon started',
  )
  const lowered = boot(t, { env: { PHYSMEM: String(512 << 20), KENV_rowr_min_memory: '256' } })
  t.equal(lowered.steps.at(-1), 'kenv init_chroot=/sysroot', 'rowr.min_memory lowers the floor')
})

t.test('failures before the image is attached are dead ends: exit 1, with the reason', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const cases: [string, Boot, RegExp][] = [
    ['media cannot be mounted', { env: { FAIL_mount: 'any' } }, /cannot remount the ramdisk/],
    ['no image on the media', { image: '' }, /FATAL: \/cdrom\/data\/system.uzip is not on \/dev\/iso9660\/LIVE/],
    ['geom_uzip not preloaded', { env: { LOADED: 'g_gate' } }, /geom_uzip is not loaded; add geom_uzip_load="YES" to loader.conf/],
    ['mdconfig fails', { env: { FAIL_mdconfig: 'any' } }, /FATAL: cannot attach/],
  ]
  for (const [what, opts, message] of cases) {
    const r = boot(t, opts)
    deadEnd(t, r, what)
    t.match(r.stdout, message, what)
    onlyRescue(t, r, what)
  }
})

t.test('failures after the image is attached fall back to a read-only boot', async t => {
  if (!requires(t, { tools: ['dash'] })) return
  const cases: [string, Record<string, string>, RegExp, boolean][] = [
    ['geom_gate not preloaded', { LOADED: 'g_uzip' }, /geom_gate is not loaded; add geom_gate_load="YES" to loader.conf/, false],
    ['geom-rowr create fails', { FAIL_geom_rowr: 'create rowr0 md1.uzip auto' }, /geom-rowr create rowr0 md1.uzip auto failed/, false],
    [
      'the daemon cannot be protected',
      { FAIL_protect: 'any' },
      /cannot protect the geom-rowr daemon \(pid 4242\) from the OOM killer/,
      true,
    ],
    ['the device has the wrong size', { DEVICE_SIZE: '524288' }, /\/dev\/rowr0 is 524288 bytes, the image 1048576/, true],
    [
      'no tmpfs for the run directory',
      { FAIL_mount: '-t tmpfs -o size=16m tmpfs ROOT/ro/var/run' },
      /add tmpfs_load="YES" to loader.conf/,
      false,
    ],
    ['the device cannot be mounted', { FAIL_mount: '/dev/rowr0 ROOT/sysroot' }, /cannot mount \/dev\/rowr0/, true],
  ]
  for (const [what, env, message, destroys] of cases) {
    const target = boot(t, { env })
    readOnlyFallback(t, target, what)
    t.match(target.stdout, message, what)
    t.equal(target.calls.includes('geom-rowr destroy rowr0'), destroys, `${what}: destroy ${destroys ? 'called' : 'not needed'}`)
    onlyRescue(t, target, what)
  }
})

t.test("the image's shutdown script syncs and remounts the geom-rowr root read-only, forcing if it must", async t => {
  if (!requires(t, { tools: ['dash', 'shellcheck'] })) return
  const rcd = path.join(repoRoot, 'boot/rc.d/geom_rowr_root')
  const text = fs.readFileSync(rcd, 'utf8')
  t.match(text, /^# KEYWORD: .*\bshutdown\b/m, 'rc.shutdown runs it')
  t.match(text, /^# BEFORE: disks$/m, 'first in the startup order, so last at shutdown')
  const shutdown = (env: Record<string, string>) => {
    const dir = t.testdir()
    const bin = path.join(dir, 'bin')
    fs.mkdirSync(bin)
    const calls = path.join(dir, 'calls')
    fs.writeFileSync(calls, '')
    // rc.subr's part: run the stop command that rc.shutdown's faststop asks for.
    fs.writeFileSync(path.join(dir, 'rc.subr'), 'load_rc_config() { :; }\nrun_rc_command() { [ "$1" = faststop ] && $stop_cmd; }\n')
    fs.writeFileSync(path.join(dir, 'script'), text.replace('. /etc/rc.subr', `. ${dir}/rc.subr`))
    const stub = `#!/bin/sh\necho "\${0##*/} $*" >> ${calls}\ncase "\${0##*/}" in\nkenv) [ -n "$NAME" ] && echo "$NAME" ;;\nstat) echo "$ROOTDEV" ;;\nmount) [ "$*" = "-u -r /" ] && [ -n "$BUSY" ] && exit 1 ;;\nesac\nexit 0\n`
    for (const name of ['kenv', 'stat', 'mount', 'sync']) fs.writeFileSync(path.join(bin, name), stub, { mode: 0o755 })
    const r = spawnSync(dash, [path.join(dir, 'script'), 'faststop'], { encoding: 'utf8', env: { PATH: bin, ...env } })
    return {
      status: r.status,
      calls: fs
        .readFileSync(calls, 'utf8')
        .trim()
        .split('\n')
        .map(l => l.trim())
        .filter(l => l && !l.startsWith('kenv') && !l.startsWith('stat')),
    }
  }
  t.same(shutdown({ ROOTDEV: 'rowr0' }).calls, ['sync', 'mount -u -r /'])
  t.same(shutdown({ ROOTDEV: 'live0', NAME: 'live0' }).calls, ['sync', 'mount -u -r /'], 'rowr.name is followed')
  t.same(
    shutdown({ ROOTDEV: 'rowr0', BUSY: '1' }).calls,
    ['sync', 'mount -u -r /', 'mount -u -r -f /'],
    'files open for writing do not keep it read-write',
  )
  t.same(shutdown({ ROOTDEV: 'md1.uzip' }).calls, [], 'a read-only boot has nothing to do')
})
