#!/bin/sh
# geom-rowr Live boot for Linux: the initramfs stage of a live system on a
# read-only medium (an ISO 9660 CD or DVD, a USB stick). It mounts the
# medium, mounts the system image on it read-only, runs geom-rowr from that
# image to combine it with a RW (in RAM, or a disk that keeps the changes),
# mounts the combined device read-write as the new root and hands over to
# its init. With rowr.hydrate=1 geom-rowr runs from a copy of its runtime in
# RAM instead, copies the image into RW in the background and lets the
# medium go when it is done. A failure after the image is mounted boots the
# image read-only; a failure before leaves a shell.
#
# Two ways to run it:
#   as /init of an initramfs: it mounts /proc, /sys, /dev and /run, loads the
#     modules named in /etc/modules (one a line) and the ones it needs, and
#     ends with switch_root into the new root, running init= [/sbin/init];
#   under initramfs-tools, as /etc/initramfs-tools/scripts/rowr with the
#     kernel argument boot=rowr: initramfs-tools' init sources it and calls
#     mountroot, which mounts the new root on $rootmnt; init then moves /run
#     there and runs run-init.
#
# Kernel arguments (defaults in brackets):
#   rowr.media          the medium: a device, LABEL=... or UUID=...  [/dev/sr0]
#   rowr.media_timeout  seconds to wait for the medium, and for a RW disk [30]
#   rowr.image          the system image's path on the medium    [/data/system.img]
#   rowr.name           the geom-rowr device                     [rowr0]
#   rowr.rw             auto (a sparse file in RAM) or a disk     [auto]
#   rowr.map=on-rw      keep the map in the RW disk's tail: the changes survive
#                       a reboot (RW must be larger than the image by 1/2000)
#   rowr.reset=1        forget the changes kept on RW before using it again
#   rowr.hydrate=1      copy the image into RW in the background, then release
#                       the medium: unmount it, so that it can be removed (an
#                       auto RW then holds the whole image in RAM)
#
# Everything that must outlive the initramfs lives under /run, which is moved
# into the new root (switch_root and run-init delete what is left on the
# initramfs and move only the new root): the medium on /run/rowr-live/medium,
# the image on /run/rowr-live/image, and the run directory /run/geom-rowr.
# geom-rowr runs chrooted into the image, with the image's own node and
# libraries, which never change under it; the chroot gets a proc, a sysfs, a
# devtmpfs, /run (the same /run, so the booted system's geom-rowr finds the
# device) and a tmpfs on /var/tmp, where an auto RW lives, bound on the new
# root's /var/tmp as well. The daemon is marked as serving the root (argv[0]
# '@', /run/sendsigs.omit.d, oom_score_adj -1000): at shutdown the system must
# sync and remount / read-only before it stops, or its last writes are lost.
# A read-only boot leaves the reason in /run/rowr-live/readonly.
#
# rowr.hydrate=1: the image must be let go, so geom-rowr cannot run from it.
# Its runtime (node, geom-rowr's command and package, env, and the sh,
# umount and losetup of the release job, with the linker and the libraries
# that ldd names inside the image) is copied into a tmpfs on
# /run/rowr-live/runtime; the image is then unmounted, and geom-rowr runs
# chrooted into the runtime as above (the auto RW on the runtime's /var/tmp).
# The device is created with --hydrate, and a background job, chrooted into
# the runtime as well, waits for the copy to end (geom-rowr hydrate --wait),
# then detaches the image's loop device and unmounts the medium. The job
# reaches them through a file descriptor of /run/rowr-live: switch_root and
# run-init delete the initramfs under it and move /run into the new root,
# and its root (the runtime's tmpfs) and that descriptor move with /run. It
# says on the console that the medium may be removed and writes
# /run/rowr-live/released, or why it could not in
# /run/rowr-live/release-failed, the system running on.

export PATH=/sbin:/usr/sbin:/bin:/usr/bin
live=/run/rowr-live
medium=$live/medium
image=$live/image
# Where geom-rowr runs: the image, or with rowr.hydrate=1 the copy of its runtime.
runtime=$image
# The image's PATH, for geom-rowr and node inside it.
image_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "rowr-live: $*"; }

setting() { # NAME DEFAULT: kernel argument NAME=VALUE
	value=
	set -f
	# shellcheck disable=SC2013 # words, not lines
	for arg in $(cat /proc/cmdline); do
		case $arg in "$1="*) value=${arg#*=} ;; esac
	done
	set +f
	echo "${value:-$2}"
}

number() { # NAME DEFAULT: a setting that must be a whole number
	n=$(setting "$1" "$2")
	case $n in
	'' | *[!0-9]*)
		say "$1=$n is not a whole number; using $2" >&2
		n=$2
		;;
	esac
	echo "$n"
}

read_settings() {
	media=$(setting rowr.media /dev/sr0)
	media_timeout=$(number rowr.media_timeout 30)
	image_file=$(setting rowr.image /data/system.img)
	name=$(setting rowr.name rowr0)
	rw=$(setting rowr.rw auto)
	map=$(setting rowr.map '')
	reset=$(setting rowr.reset 0)
	hydrate=$(setting rowr.hydrate 0)
}

# Nothing to boot at all: say why and give a shell (as PID 1, never exit).
dead_end() {
	say "FATAL: $*"
	say "no system to boot"
	if [ -n "${rootmnt-}" ]; then
		# initramfs-tools: its panic gives the shell, or reboots on panic=.
		panic "rowr-live: $*"
		return
	fi
	say "starting a shell; the boot cannot continue"
	while :; do setsid cttyhack sh; done
}

is_mounted() { # PATH
	awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts
}

# The image is mounted but the writable root failed: boot the image read-only.
read_only_root() { # TARGET
	say "ERROR: $why"
	say "falling back to a READ-ONLY system: changes cannot be saved"
	echo "$why" >"$live/readonly"
	[ "$runtime" = "$image" ] || drop_runtime
	# rowr.hydrate=1 unmounted it once its runtime was copied.
	is_mounted "$image" || mount -r "$loop" "$image" || dead_end "cannot mount the system image ($loop) on $image again"
	mount --bind "$image" "$1" || dead_end "cannot mount the system image on $1 either"
}

# The device named by a setting (a path, LABEL=... or UUID=...), if present.
resolve() {
	case $1 in
	LABEL=* | UUID=*) findfs "$1" 2>/dev/null ;;
	*) [ -b "$1" ] && echo "$1" ;;
	esac
}

wait_for() { # DEVICE SECONDS: CD drives and USB sticks appear late
	waited=0
	until resolve "$1"; do
		[ "$waited" -ge "$2" ] && return 1
		sleep 1
		waited=$((waited + 1))
	done
}

# COMMAND chrooted into DIR (the image or the runtime), with the image's PATH
# and nothing else of this environment. A subshell that execs chroot: in the
# background, nothing of the initramfs stays behind.
run_in() ( # DIR COMMAND...
	dir=$1
	shift
	exec chroot "$dir" /usr/bin/env -i "PATH=$image_path" GEOM_ROWR_RUNDIR=/run/geom-rowr "$@"
)

# geom-rowr, where it runs.
rowr() { run_in "$runtime" geom-rowr "$@"; }

# Fails with the reason in $why.
refuse() {
	why=$*
	return 1
}

# What geom-rowr needs inside the image or the runtime.
chroot_mounts='dev proc sys run var/tmp'
prepare_chroot() {
	for dir in $chroot_mounts; do
		[ -d "$runtime/$dir" ] || refuse "the system image has no /$dir to mount on" || return
	done
	if ! { mount -t devtmpfs -o nosuid devtmpfs "$runtime/dev" &&
		mount -t proc -o nodev,noexec,nosuid proc "$runtime/proc" &&
		mount -t sysfs -o nodev,noexec,nosuid sysfs "$runtime/sys" &&
		mount --bind /run "$runtime/run" &&
		mount -t tmpfs -o nodev,nosuid,mode=1777 tmpfs "$runtime/var/tmp"; }; then
		refuse "cannot mount /dev, /proc, /sys, /run and /var/tmp in $runtime"
	fi
}

# rowr.hydrate=1: what geom-rowr and the release job run, copied from the
# image into a tmpfs on $live/runtime. Paths are resolved inside the image,
# where its symbolic links lead: a file is copied to its real path, and the
# path it is known by is a link to that.
copy_runtime() {
	runtime=$live/runtime
	{ mkdir -p "$runtime" && mount -t tmpfs -o nodev,nosuid,mode=0755 tmpfs "$runtime"; } ||
		refuse "rowr.hydrate=1: cannot mount a tmpfs on $runtime for geom-rowr's runtime" || return
	# shellcheck disable=SC2016 # expanded inside the image
	found=$(run_in "$image" sh -c '
		for c; do
			for d in $(echo "$PATH" | tr : " "); do
				[ -x "$d/$c" ] && echo "$d/$c" && continue 2
			done
			echo "no $c on its PATH ($PATH)"
			exit 1
		done' sh node geom-rowr umount losetup ldd 2>&1) ||
		refuse "rowr.hydrate=1: the system image lacks a program its runtime is copied with: $found" || return
	# shellcheck disable=SC2086 # paths, one a line
	set -- $found
	programs="/bin/sh /usr/bin/env $1 $3 $4"
	command=$2
	script=$(run_in "$image" readlink -f "$command") ||
		refuse "rowr.hydrate=1: cannot resolve $command in the system image" || return
	# geom-rowr's package (node_modules included): where package.json is, above the script.
	package=${script%/*}
	until [ -f "$image$package/package.json" ]; do
		[ -n "$package" ] || refuse "rowr.hydrate=1: no package.json above $script in the system image" || return
		package=${package%/*}
	done
	{ mkdir -p "$runtime${package%/*}" && cp -a "$image$package" "$runtime${package%/*}/"; } ||
		refuse "rowr.hydrate=1: cannot copy $package of the system image into $runtime" || return
	# Node's addons, some built for other systems: ldd fails on those (which
	# nothing loads here), and on static programs, so its status says nothing.
	addons=$(cd "$image" && find ".$package" -name '*.node' | sed 's/^\.//')
	# shellcheck disable=SC2086 # lists of paths
	libraries=$(run_in "$image" ldd $programs $addons 2>/dev/null |
		awk '/^[[:space:]]/ { for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)
	files="$programs $command $libraries"
	[ ! -e "$image/etc/ld.so.cache" ] || files="$files /etc/ld.so.cache"
	# shellcheck disable=SC2016,SC2086 # expanded inside the image; a list of paths
	real_paths=$(run_in "$image" sh -c 'for f; do readlink -f "$f" || exit; done' sh $files 2>&1) ||
		refuse "rowr.hydrate=1: cannot resolve the runtime's files in the system image: $real_paths" || return
	# shellcheck disable=SC2086 # paths, one a line
	set -- $real_paths
	for file in $files; do
		place "$file" "$1" || refuse "rowr.hydrate=1: cannot copy $file of the system image into $runtime" || return
		shift
	done
	for dir in $chroot_mounts; do
		mkdir -p "$runtime/$dir" || refuse "rowr.hydrate=1: cannot make $runtime/$dir" || return
	done
	# Nothing runs from the image any more; the read-only fallback mounts it again.
	umount "$image" || refuse "rowr.hydrate=1: cannot unmount the system image from $image" || return
	say "geom-rowr's runtime copied into $runtime ($(du -sm "$runtime" | cut -f1) MiB); the image is no longer mounted"
}

place() { # PATH REAL: the image's REAL at REAL in the runtime, PATH a link to it
	if [ ! -e "$runtime$2" ]; then
		mkdir -p "$runtime${2%/*}" && cp -p "$image$2" "$runtime$2" || return
	fi
	[ "$1" = "$2" ] || [ -L "$runtime$1" ] || { mkdir -p "$runtime${1%/*}" && ln -s "$2" "$runtime$1"; }
}

# A runtime that no daemon uses holds RAM for nothing.
drop_runtime() {
	is_mounted "$runtime" || return 0
	for dir in $chroot_mounts; do
		! is_mounted "$runtime/$dir" || umount "$runtime/$dir"
	done
	umount "$runtime" || say "the copy of geom-rowr's runtime stays on $runtime"
}

# The daemon serves the root: nothing may stop it before the root is
# read-only, and the OOM killer must pass it by.
protect_daemon() {
	pid=$(sed -n 's/^  "pid": \([0-9]*\),$/\1/p' "/run/geom-rowr/$name/state.json")
	[ -n "$pid" ] || refuse "cannot read the daemon's pid from /run/geom-rowr/$name/state.json" || return
	echo -1000 >"/proc/$pid/oom_score_adj" || refuse "cannot protect the daemon (pid $pid) from the OOM killer" || return
	# sysvinit's sendsigs spares the processes listed here.
	mkdir -p /run/sendsigs.omit.d && echo "$pid" >"/run/sendsigs.omit.d/geom-rowr-$name"
}

writable_root() { # TARGET
	case $map in
	'') map_option= ;;
	on-rw)
		[ "$rw" != auto ] ||
			refuse "rowr.map=on-rw needs a disk as RW (rowr.rw=DEVICE): an auto RW lives in RAM and is gone at the next boot" || return
		map_option=--map-on-rw
		;;
	*) refuse "rowr.map=$map: the one value known is on-rw" || return ;;
	esac
	hydrate_option=
	if [ "$hydrate" = 1 ]; then
		copy_runtime || return
		hydrate_option=--hydrate
	fi
	prepare_chroot || return
	if [ "$hydrate" = 1 ] && [ "$rw" = auto ]; then
		# The auto RW ends up holding the whole image, in RAM.
		need=$(($(cat "/sys/block/${loop#/dev/}/size") / 2))
		free=$(df -Pk "$runtime/var/tmp" | awk 'NR == 2 { print $4 }')
		[ "${free:-0}" -ge "$need" ] ||
			refuse "rowr.hydrate=1 copies the image ($((need / 1024)) MiB) into the auto RW, in RAM, where $runtime/var/tmp has $((${free:-0} / 1024)) MiB free: give the machine more memory or a RW disk (rowr.rw=DEVICE), or boot without rowr.hydrate=1" || return
	fi
	if [ "$rw" != auto ]; then
		say "waiting up to $media_timeout s for RW $rw"
		found=$(wait_for "$rw" "$media_timeout") ||
			refuse "RW $rw did not appear within $media_timeout s; set rowr.rw (or rowr.media_timeout)" || return
		rw=$found
	fi
	if [ "$reset" = 1 ]; then
		if [ -n "$map_option" ]; then
			say "rowr.reset=1: forgetting the changes kept on $rw"
			# -f: also when they were made on another image, as after an upgrade.
			out=$(rowr revert -f --ro "$loop" --rw "$rw" --map-on-rw 2>&1) ||
				refuse "rowr.reset=1: geom-rowr revert -f --ro $loop --rw $rw --map-on-rw failed: $out" || return
			echo "$out"
		else
			say "rowr.reset=1: nothing to forget, the changes are kept only with rowr.map=on-rw"
		fi
	fi
	# Its own exit status, not a pipeline's: the last line printed is the device.
	# shellcheck disable=SC2086 # the options are one word or none
	if ! out=$(rowr create --systemd-mark $map_option $hydrate_option "$name" "$loop" "$rw" 2>&1); then
		case $out in
		*"belongs to other devices"*)
			out="$out. At boot this means the changes kept on $rw were made on another system image (an upgraded medium): they do not fit this one, so no --force; boot the medium they belong to, or boot once with rowr.reset=1 to forget them and start over"
			;;
		esac
		refuse "geom-rowr create $name $loop $rw failed: $out"
		return
	fi
	echo "$out"
	device=$(echo "$out" | tail -n 1)
	if ! protect_daemon; then
		rowr destroy "$name"
		return 1
	fi
	if ! mount -t "$fstype" -w "$device" "$1"; then
		rowr destroy "$name"
		refuse "cannot mount $device ($fstype) read-write on $1"
		return
	fi
	if [ "$rw" = auto ]; then
		# The auto RW: the path the daemon names it by is its path in the booted system too.
		mount --bind "$runtime/var/tmp" "$1/var/tmp" || say "cannot bind the auto RW's /var/tmp on the new root's"
	fi
	say "$name ($device) mounted read-write on $1"
	if [ "$hydrate" = 1 ]; then
		run_in "$runtime" sh -c "$release_job" release-medium "$name" "$loop" "$medium_device" \
			3<"$live" </dev/null >/dev/console 2>&1 &
		say "copying the image into RW in the background; $medium_device is released when it is done"
	fi
}

# The background job of rowr.hydrate=1 (see the top), run by the runtime's sh
# chrooted into the runtime: $1 the device, $2 the image's loop device, $3
# the medium; fd 3 is $live, wherever /run has moved.
# shellcheck disable=SC2016 # expanded by the job
release_job='
name=$1 loop=$2 medium=$3 live=/proc/self/fd/3
say() { echo "rowr-live: $*"; }
give_up() {
	echo "$1" >"$live/release-failed"
	say "cannot release $medium: $1; the system runs on, still using it"
	exit 1
}
out=$(geom-rowr hydrate --wait "$name" 2>&1) || give_up "geom-rowr hydrate --wait $name failed: $out"
case $out in
*"RO released"*) ;;
*) give_up "geom-rowr hydrate --wait $name ended with RO still held: $out" ;;
esac
losetup -d "$loop" || give_up "cannot detach $loop (the system image)"
umount "$live/medium" || give_up "cannot unmount $medium from /run/rowr-live/medium"
echo "$medium" >"$live/released"
say "hydrated: $name no longer needs the system image; $medium may be removed"
'

# Mounts the root to boot on TARGET: writable, read-only, or none (a shell).
mount_live_root() { # TARGET
	read_settings
	for module in loop isofs ext4 nbd; do modprobe -q "$module"; done
	mkdir -p "$medium" "$image" || {
		dead_end "cannot make $medium and $image"
		return
	}
	say "waiting up to $media_timeout s for $media"
	medium_device=$(wait_for "$media" "$media_timeout") || {
		dead_end "$media did not appear within $media_timeout s; set rowr.media (or rowr.media_timeout)"
		return
	}
	mount -r "$medium_device" "$medium" || {
		dead_end "cannot mount $medium_device ($media) read-only; set rowr.media"
		return
	}
	[ -f "$medium$image_file" ] || {
		dead_end "$image_file is not on $medium_device; set rowr.image"
		return
	}
	if ! { loop=$(losetup -f) && losetup -r "$loop" "$medium$image_file"; }; then
		dead_end "cannot attach $image_file to a loop device"
		return
	fi
	mount -r "$loop" "$image" || {
		dead_end "cannot mount $image_file ($loop) read-only: is it a file system this kernel knows?"
		return
	}
	fstype=$(awk -v m="$image" '$2 == m { print $3 }' /proc/mounts)
	say "$image_file ($fstype) on $loop, mounted read-only on $image"
	writable_root "$1" || read_only_root "$1"
}

# As /init: the kernel's file systems, the modules, the root, switch_root.
plain_init() {
	mount -t proc -o nodev,noexec,nosuid proc /proc
	mount -t sysfs -o nodev,noexec,nosuid sysfs /sys
	mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
	mount -t tmpfs -o nodev,nosuid,mode=0755 tmpfs /run
	if [ -f /etc/modules ]; then
		sed 's/#.*//' /etc/modules | while read -r module; do
			[ -z "$module" ] || modprobe -q "$module" || say "cannot load module $module"
		done
	fi
	mkdir -p /root
	mount_live_root /root
	init=$(setting init /sbin/init)
	for candidate in "$init" /sbin/init /etc/init /bin/init /bin/sh; do
		if [ -x "/root$candidate" ] || [ -L "/root$candidate" ]; then
			[ "$candidate" = "$init" ] || say "no $init on the new root; running $candidate"
			for fs in dev proc sys run; do
				mount --move "/$fs" "/root/$fs" || say "cannot move /$fs into the new root"
			done
			exec switch_root /root "$candidate"
		fi
	done
	dead_end "the new root has no init: $init, /sbin/init, /etc/init, /bin/init and /bin/sh are missing; set init="
}

if [ -n "${rootmnt-}" ]; then
	# Sourced by initramfs-tools' init (boot=rowr), which calls these.
	mountroot() { mount_live_root "$rootmnt"; }
	mount_top() { local_top; }
	mount_premount() { local_premount; }
	mount_bottom() { local_bottom; }
else
	plain_init
fi
