#!/bin/sh
# Inside the live system that boot/linux/rowr-live.sh booted from the ISO
# (test/vm/live-boot.ts): the checks of one boot, named by $1.
#   ram       rowr.rw=auto: a writable root whose changes live in RAM
#   hydrate   the same with rowr.hydrate=1: the image copied into RAM in the
#             background, then the medium released
#   persist   RW on the second disk with the map on it: changes to keep
#   resume    the same disk, booted again: the first boot's changes are there
#   reset     the same with rowr.reset=1: they are gone
#   readonly  a RW disk whose map was made with another image (as after an
#             upgrade of the medium): the image boots read-only
#   upgrade   that disk with rowr.reset=1: writable again, the map forgotten
# The image holds /etc/rowr-seed, which the writable boots delete.
# shellcheck source=test/vm/guest/report.sh
. /vmtest/report.sh
# shellcheck source=test/vm/guest/nbd-common.sh
. /vmtest/nbd-common.sh
scenario=$1
live=/run/rowr-live

# mounted_on PATH: "DEVICE OPTIONS" of the last mount on PATH.
mounted_on() { awk -v m="$1" '$2 == m { r = $1 " " $4 } END { print r }' /proc/mounts; }

root=$(mounted_on /)
root_device=${root%% *}

medium_and_image_mounted() {
	case $(mounted_on $live/medium) in
	/dev/sr0\ ro,*) pass "the medium (/dev/sr0) is mounted read-only on $live/medium" ;;
	*) fail "the medium (/dev/sr0) is mounted read-only on $live/medium" "$(cat /proc/mounts)" ;;
	esac
	image=$(mounted_on $live/image)
	loop=${image%% *}
	case $image in
	/dev/loop[0-9]*\ ro,*) pass "the system image is mounted read-only on $live/image ($loop)" ;;
	*) fail "the system image is mounted read-only on $live/image" "$(cat /proc/mounts)" ;;
	esac
}

# state KEY: a top-level value of the daemon's state.json, without node
# (its first start from this root reads node through the device, which is slow
# under emulation).
state() {
	sed -n -e "s/^  \"$1\": \"\(.*\)\",\{0,1\}$/\1/p" -e "s/^  \"$1\": \([^\",]*\),\{0,1\}$/\1/p" "$run/rowr0/state.json"
}

# The root device and its daemon, as the run directory and /proc show them;
# the daemon runs chrooted in CHROOT, RO is $loop.
root_and_daemon() { # RW MAP CHROOT
	case $root in
	/dev/nbd[0-9]*\ rw,*) pass "/ is $root_device, mounted read-write" ;;
	*) fail "/ is an nbd device, mounted read-write" "/ is $root" ;;
	esac
	check "the run directory names the root device, $root_device" test "$(state device)" = "$root_device"
	check "RO is the image's loop device, $loop" test "$(state ro)" = "$loop"
	check "RW is $1" test "$(state rw)" = "$1"
	check "the map is $2" test "$(state map)" = "$2"
	pid=$(state pid)
	check "the daemon's argv[0] begins with '@' (systemd spares it at shutdown)" \
		sh -c "tr '\\0' '\\n' </proc/$pid/cmdline | head -n 1 | grep -q '^@'"
	check "the daemon is listed in /run/sendsigs.omit.d" test "$(cat /run/sendsigs.omit.d/geom-rowr-rowr0)" = "$pid"
	check "the OOM killer passes the daemon by" test "$(cat "/proc/$pid/oom_score_adj")" = -1000
	check "the daemon runs chrooted in $3" test "$(readlink "/proc/$pid/root")" = "$3"
}

# The same, running from the image on the medium.
writable_root() { # RW MAP
	medium_and_image_mounted
	root_and_daemon "$1" "$2" "$live/image"
}

# Whether /dev/sr0 can be opened exclusively: not while a file system on it is mounted.
sr0_exclusive() {
	node -e 'const fs = require("fs"), c = fs.constants; fs.closeSync(fs.openSync("/dev/sr0", c.O_RDONLY | c.O_EXCL | c.O_NONBLOCK))'
}

# Waits up to SECONDS for the release job of rowr.hydrate=1 to end, and
# passes if it released the medium.
medium_released() { # SECONDS
	waited=0
	until [ -e $live/released ] || [ -e $live/release-failed ] || [ "$waited" -ge "$1" ]; do
		sleep 1
		waited=$((waited + 1))
	done
	if [ -e $live/released ]; then
		pass "the medium is released ($live/released, after $waited s here)"
	elif [ -e $live/release-failed ]; then
		fail "the medium is released" "$live/release-failed: $(cat $live/release-failed)"
	else
		fail "the medium is released" "neither $live/released nor $live/release-failed within $1 s"
	fi
}

# geom-rowr status from the booted system: it answers, names the root and
# counts at least WRITTEN bytes written.
status_from_here() { # WRITTEN
	if geom-rowr status --json rowr0 >/tmp/status.json 2>&1; then
		pass "geom-rowr status --json rowr0 answers from the booted system"
	else
		fail "geom-rowr status --json rowr0 answers from the booted system" "$(cat /tmp/status.json)"
	fi
	check "status: the device is the root, $root_device" test "$(json /tmp/status.json s.device)" = "$root_device"
	check "status: at least $1 bytes written to RW" test "$(json /tmp/status.json "s.writtenBytes >= $1")" = true
}

# write_and_delete FILE BYTES: FILE written, /etc/rowr-seed deleted, synced.
write_and_delete() {
	head -c "$2" /dev/urandom >"/tmp/${1##*/}"
	check "write $1 ($2 bytes)" cp "/tmp/${1##*/}" "$1"
	check "delete /etc/rowr-seed" rm /etc/rowr-seed
	check "sync" sync
	check "$1 reads back" cmp "/tmp/${1##*/}" "$1"
	check_not "/etc/rowr-seed is gone" test -e /etc/rowr-seed
	check "/etc/rowr-seed is still in the image" test -f "$live/image/etc/rowr-seed"
	check_not "$1 is not in the image" test -e "$live/image$1"
}

case $scenario in
ram)
	write_and_delete /root/ram.bin 2097152
	check "rename a file of the image" mv /etc/rowr-moved /root/rowr-moved
	check "the renamed file reads back" test "$(cat /root/rowr-moved)" = moved
	writable_root /var/tmp/geom-rowr-rowr0.rw null
	status_from_here 2097152
	check "the auto RW is in /var/tmp, of the image's size" \
		test "$(stat -c %s /var/tmp/geom-rowr-rowr0.rw)" = "$(blockdev --getsize64 "$loop")"
	check_not "/dev/sr0 cannot be opened exclusively while the medium is mounted" sr0_exclusive
	;;
hydrate)
	head -c 1048576 /dev/urandom >/tmp/early.bin
	check "write /root/early.bin (1 MiB)" sh -c 'cp /tmp/early.bin /root/early.bin && sync'
	check_not "the image was still being copied then" test -e $live/released
	medium_released 150
	loop=$(state ro)
	root_and_daemon /var/tmp/geom-rowr-rowr0.rw null "$live/runtime"
	check "the auto RW is in /var/tmp, of the image's size" \
		test "$(stat -c %s /var/tmp/geom-rowr-rowr0.rw)" = "$(state mediasize)"
	status_from_here 1048576
	check "status: hydration done" test "$(json /tmp/status.json s.hydration.state)" = "done"
	check "status: no byte left on RO" test "$(json /tmp/status.json s.hydration.remainingBytes)" = 0
	check "status: RO released (roHeld false)" test "$(json /tmp/status.json s.roHeld)" = false
	check_not "/proc/mounts has neither the medium, the image nor $loop" \
		grep -e " $live/medium " -e " $live/image " -e "^/dev/sr0 " -e "^$loop " /proc/mounts
	check_not "the image's loop device, $loop, is detached" test -e "/sys/block/${loop#/dev/}/loop"
	check_not "losetup does not list $loop" sh -c "losetup -a | grep '^$loop:'"
	check "/dev/sr0 is not held: it opens exclusively" sr0_exclusive
	head -c 1048576 /dev/urandom >/tmp/late.bin
	check "write /root/late.bin (1 MiB) after the release" sh -c 'cp /tmp/late.bin /root/late.bin && sync'
	check "drop the page cache: what follows reads through the device" sh -c 'echo 3 >/proc/sys/vm/drop_caches'
	check "/root/early.bin reads back" cmp /tmp/early.bin /root/early.bin
	check "/root/late.bin reads back" cmp /tmp/late.bin /root/late.bin
	# shellcheck disable=SC2016 # expanded by sh -c
	check "every file of the image reads back with its checksum ($(wc -l </vmtest/image.sha256) files)" \
		sh -c 'out=$(sha256sum -c /vmtest/image.sha256 2>&1); status=$?; echo "$out" | grep -v ": OK$"; exit $status'
	;;
persist)
	write_and_delete /root/kept.bin 1048576
	sha256sum /root/kept.bin >/root/kept.sha
	writable_root /dev/vdb rw
	;;
resume)
	check "the first boot's file is there, intact" sha256sum -c /root/kept.sha
	check_not "the file the first boot deleted stays deleted" test -e /etc/rowr-seed
	check "write more" sh -c 'echo again >/root/again.txt && sync'
	writable_root /dev/vdb rw
	status_from_here 1048576
	;;
reset)
	check_not "rowr.reset=1: the earlier boots' files are gone" test -e /root/kept.bin
	check "rowr.reset=1: the deleted file is back" test "$(cat /etc/rowr-seed)" = seed
	writable_root /dev/vdb rw
	;;
upgrade)
	writable_root /dev/vdb rw
	;;
readonly)
	medium_and_image_mounted
	case $root in
	/dev/loop[0-9]*\ ro,*) pass "/ is the image's loop device, read-only ($root_device)" ;;
	*) fail "/ is the image's loop device, read-only" "/ is $root" ;;
	esac
	check_not "/ cannot be written" touch /rowr-write-test
	case $(cat $live/readonly 2>&1) in
	*"geom-rowr create rowr0"*"belongs to other devices"*"boot once with rowr.reset=1"*)
		pass "$live/readonly says why, and that rowr.reset=1 starts over"
		;;
	*) fail "$live/readonly says why" "$(cat $live/readonly 2>&1)" ;;
	esac
	check_nothing_left "no nbd device, daemon or run state is left"
	;;
*)
	fail "a known scenario" "vmtest=$scenario"
	;;
esac
