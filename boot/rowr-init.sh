#!/rescue/sh
# geom-rowr Live ISO boot: run from the ISO's ramdisk by init(8)
# (loader.conf: init_script="/rowr-init.sh"). It attaches the compressed
# system image read-only, puts a writable geom-rowr device over it (changes
# go to a swap-backed md of the image's size), mounts that on /sysroot and
# hands over with init_chroot. A failure after the image is attached boots
# the image read-only; a failure before leaves init's single-user shell.
#
# The ramdisk has only /rescue (statically linked, no od, cut, env, ...), so
# this script uses nothing else. Node.js and geom-rowr are dynamically
# linked programs of the system image: they run chrooted into the image,
# mounted read-only on /ro, with its own linker and libraries, a devfs in
# /ro/dev and a tmpfs on /ro/var/run for the run directory. That image never
# changes, so the mount stays valid under the daemon for the whole uptime.
#
# With rowr.hydrate=1 the medium is let go once the image is copied: the
# runtime (node, geom-rowr, their linker and libraries, which ldd names
# inside the image) is copied into a tmpfs on /rt and runs from there, the
# device is created with --hydrate, and a background job waits for the copy
# to finish (geom-rowr then releases the image), unmounts /ro, detaches the
# image's md and unmounts /cdrom: the disc can be ejected, the stick pulled.
#
# kenv settings (defaults in brackets):
#   rowr.media          the installation media           [/dev/iso9660/LIVE]
#   rowr.media_timeout  seconds to wait for it            [30]
#   rowr.image          the compressed image on it        [/cdrom/data/system.uzip]
#   rowr.uzip_timeout   seconds to wait for mdN.uzip      [30]
#   rowr.name           the geom-rowr device              [rowr0]
#   rowr.min_memory     MiB below which it boots read-only [1024]
#   rowr.hydrate        1: copy the image to RAM in the background, then
#                       release the medium                [0]
# It sets rowr.readonly=YES on a read-only boot (the image's rc.conf turns
# that into root_rw_mount=NO).
# For tests only: ROWR_INIT_ROOT prefixes every path this script creates or
# mounts on, and ROWR_INIT_PATH replaces PATH.

PATH=${ROWR_INIT_PATH:-/rescue}
export PATH
root=${ROWR_INIT_ROOT:-}
# The image's own PATH, for the programs run inside it.
image_path=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin

say() { echo "rowr-init: $*"; }

setting() { # NAME DEFAULT
	value=$(kenv -q "$1" 2>/dev/null)
	echo "${value:-$2}"
}

number() { # NAME DEFAULT: a setting that must be a whole number
	n=$(setting "$1" "$2")
	case $n in
	'' | *[!0-9]*)
		say "$1=\"$n\" is not a whole number; using $2"
		n=$2
		;;
	esac
	echo "$n"
}

media=$(setting rowr.media /dev/iso9660/LIVE)
media_timeout=$(number rowr.media_timeout 30)
image=$(setting rowr.image /cdrom/data/system.uzip)
uzip_timeout=$(number rowr.uzip_timeout 30)
name=$(setting rowr.name rowr0)
min_memory=$(number rowr.min_memory 1024)
hydrate=$(number rowr.hydrate 0)
# Where geom-rowr runs: the image, or with rowr.hydrate=1 the copy of its runtime in memory.
runtime=$root/ro

# Nothing to boot at all: a non-zero status sends init to single-user mode
# (with init_shell), where exit 0 would let it run the ramdisk's own /etc/rc.
dead_end() {
	say "FATAL: $*"
	say "no system to boot; init starts a single-user shell"
	exit 1
}

# The image is attached but the writable device failed: boot it read-only.
read_only_boot() {
	say "ERROR: $*"
	say "falling back to a READ-ONLY system: changes cannot be saved"
	kenv rowr.readonly=YES >/dev/null
	kenv init_chroot=/ro >/dev/null
	exit 0
}

wait_for() { # PATH SECONDS: USB sticks and CD drives attach late
	waited=0
	while [ ! -e "$root$1" ]; do
		[ "$waited" -ge "$2" ] && return 1
		sleep 1
		waited=$((waited + 1))
	done
}

# A GEOM provider's size in bytes, from the kernel's own description: in
# kern.geom.confxml a provider's <mediasize> is the line after its <name>.
# (kern.geom.conftxt lists only providers stacked on disks and mds, not
# GEOM Gate's.)
provider_size() { # NAME
	sysctl -n kern.geom.confxml |
		sed -n "/<name>$1<\/name>/{n;s/.*<mediasize>\([0-9]*\)<\/mediasize>.*/\1/p;}" |
		head -n 1
}

# geom-rowr inside the image, or inside the copy of its runtime.
rowr() {
	chroot "$runtime" /usr/bin/env "PATH=$image_path" /usr/local/bin/geom-rowr "$@"
}

# The programs the daemon runs and what they load, from the image into the
# tmpfs on /rt: ldd, run inside the image, names the libraries.
copy_runtime() {
	programs="/usr/bin/env /usr/bin/protect /usr/local/bin/node"
	# shellcheck disable=SC2086 # a list of words
	libraries=$(chroot "$root/ro" /usr/bin/ldd -f '%p ' $programs) || return 1
	for dir in dev var/run libexec lib usr/bin usr/local/bin usr/local/lib; do
		mkdir -p "$root/rt/$dir" || return 1
	done
	for file in /libexec/ld-elf.so.1 $programs $libraries; do
		mkdir -p "$root/rt${file%/*}" && cp -p "$root/ro$file" "$root/rt$file" || return 1
	done
	# geom-rowr itself: its command and its package (node_modules included).
	cp -RP "$root/ro/usr/local/bin/geom-rowr" "$root/rt/usr/local/bin/" &&
		cp -Rp "$root/ro/usr/local/lib/geom-rowr" "$root/rt/usr/local/lib/"
}

# Once the daemon has released the image (every sector on RW): let the medium go.
release_medium() {
	rowr hydrate --wait "$name" >/dev/null || return 1
	umount "$root/ro" && mdconfig -d -u "$md" && umount "$root/cdrom" &&
		say "hydrated: $name no longer needs $media; it may be removed"
}

# The kernel mounts the ramdisk read-only.
mount -u -w / || dead_end "cannot remount the ramdisk read-write (mount -u -w /)"
mkdir -p "$root/cdrom" "$root/ro" "$root/sysroot" || dead_end "cannot make /cdrom, /ro and /sysroot on the ramdisk"

say "waiting up to $media_timeout s for $media"
wait_for "$media" "$media_timeout" || dead_end "$media did not appear within $media_timeout s; set rowr.media (or rowr.media_timeout) in loader.conf"
mount -t cd9660 -o ro "$media" "$root/cdrom" || dead_end "cannot mount $media; set rowr.media in loader.conf"
[ -f "$root$image" ] || dead_end "$image is not on $media; set rowr.image in loader.conf"

# Nothing can be loaded by name from the ramdisk: it has no /boot.
kldstat -q -m g_uzip || dead_end "geom_uzip is not loaded; add geom_uzip_load=\"YES\" to loader.conf"
md=$(mdconfig -a -t vnode -o readonly -f "$root$image") || dead_end "cannot attach $image"
wait_for "/dev/$md.uzip" "$uzip_timeout" ||
	dead_end "geom_uzip did not show $md.uzip within $uzip_timeout s: is $image a geom_uzip image (mkuzip makes them)?"
mount -o ro "/dev/$md.uzip" "$root/ro" || dead_end "cannot mount /dev/$md.uzip read-only"
size=$(provider_size "$md.uzip")
say "$image: ${size:-an unknown number of} bytes uncompressed"

# Every change lives in the swap-backed md, in RAM where there is no swap,
# beside node: on a small machine the OOM killer would take the root away.
physmem=$(sysctl -n hw.physmem)
case $physmem in
'' | *[!0-9]*) read_only_boot "cannot read hw.physmem" ;;
esac
memory=$((physmem / 1048576))
[ "$memory" -ge "$min_memory" ] ||
	read_only_boot "this machine has $memory MiB of memory, under the $min_memory MiB a writable system needs (set rowr.min_memory in loader.conf to go below it)"

kldstat -q -m g_gate || read_only_boot "geom_gate is not loaded; add geom_gate_load=\"YES\" to loader.conf"
if [ "$hydrate" = 1 ]; then
	{ mkdir -p "$root/rt" && mount -t tmpfs tmpfs "$root/rt"; } ||
		read_only_boot "cannot mount a tmpfs on /rt for the runtime (rowr.hydrate=1); add tmpfs_load=\"YES\" to loader.conf"
	copy_runtime || read_only_boot "cannot copy node and geom-rowr from the image into /rt (rowr.hydrate=1)"
	runtime=$root/rt
fi
mount -t devfs devfs "$runtime/dev" || read_only_boot "cannot mount devfs on ${runtime#"$root"}/dev"
mount -t tmpfs -o size=16m tmpfs "$runtime/var/run" ||
	read_only_boot "cannot mount a tmpfs on ${runtime#"$root"}/var/run; add tmpfs_load=\"YES\" to loader.conf"

# RW 'auto': a swap-backed md of the image's size, made by geom-rowr. Its
# own exit status, not a pipeline's: the last line printed is the device.
set -- "$name" "$md.uzip" auto
[ "$hydrate" = 1 ] && set -- --hydrate "$@"
created=$(rowr create "$@") || read_only_boot "geom-rowr create $* failed"
device=$(echo "$created" | tail -n 1)
[ -n "$device" ] || read_only_boot "geom-rowr create printed no device"

# The daemon holds the root: the OOM killer must pass it by.
pid=$(sed -n 's/^  "pid": \([0-9]*\),$/\1/p' "$runtime/var/run/geom-rowr/$name/state.json")
if [ -z "$pid" ] || ! chroot "$runtime" /usr/bin/protect -p "$pid"; then
	rowr destroy "$name"
	read_only_boot "cannot protect the geom-rowr daemon (pid ${pid:-unknown}) from the OOM killer"
fi

actual=$(provider_size "$name")
if [ -z "$size" ] || [ "$actual" != "$size" ]; then
	rowr destroy "$name"
	read_only_boot "$device is ${actual:-of unknown size} bytes, the image ${size:-of unknown size}"
fi
if ! mount "$device" "$root/sysroot"; then
	rowr destroy "$name"
	read_only_boot "cannot mount $device"
fi

# Kernel modules that load firmware do it from a kernel thread, whose root
# is the ramdisk's: make /boot the same path inside and outside the chroot.
[ -e "$root/boot" ] || ln -s /sysroot/boot "$root/boot"

if [ "$hydrate" = 1 ]; then
	release_medium </dev/null >"$root/dev/console" 2>&1 &
	say "copying the image into RAM in the background; the medium is released when it is done"
fi
kenv init_chroot=/sysroot >/dev/null
say "$name ($device) mounted read-write on /sysroot; booting"
exit 0
