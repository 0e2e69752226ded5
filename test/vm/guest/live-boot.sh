#!/bin/sh
# Inside the live system that boot/linux/rowr-live.sh booted from the ISO
# (test/vm/live-boot.ts): the checks of one boot, named by $1.
#   ram       rowr.rw=auto: a writable root whose changes live in RAM
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

# The root device and its daemon, as the run directory and /proc show them.
writable_root() { # RW MAP
	case $root in
	/dev/nbd[0-9]*\ rw,*) pass "/ is $root_device, mounted read-write" ;;
	*) fail "/ is an nbd device, mounted read-write" "/ is $root" ;;
	esac
	medium_and_image_mounted
	check "the run directory names the root device, $root_device" test "$(state device)" = "$root_device"
	check "RO is the image's loop device, $loop" test "$(state ro)" = "$loop"
	check "RW is $1" test "$(state rw)" = "$1"
	check "the map is $2" test "$(state map)" = "$2"
	pid=$(state pid)
	check "the daemon's argv[0] begins with '@' (systemd spares it at shutdown)" \
		sh -c "tr '\\0' '\\n' </proc/$pid/cmdline | head -n 1 | grep -q '^@'"
	check "the daemon is listed in /run/sendsigs.omit.d" test "$(cat /run/sendsigs.omit.d/geom-rowr-rowr0)" = "$pid"
	check "the OOM killer passes the daemon by" test "$(cat "/proc/$pid/oom_score_adj")" = -1000
	check "the daemon runs chrooted in the image" test "$(readlink "/proc/$pid/root")" = "$live/image"
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
