#!/bin/sh
# Inside the guest, through the kernel's nbd driver (geom-rowr's own netlink
# attach): a device with a map survives a SIGKILLed daemon. ext4 stays
# mounted, writes issued while no daemon runs wait, create of the same NAME
# reconnects the kernel device, the writes complete, every file is intact and
# e2fsck -fn is clean. Then destroy -f of a waiting device fails its I/O
# cleanly and leaves nothing.
# shellcheck source=test/vm/guest/report.sh
. /vmtest/report.sh
# shellcheck source=test/vm/guest/nbd-common.sh
. /vmtest/nbd-common.sh
mkdir -p "$w/tree" "$w/mnt"

# kill_daemon NAME: SIGKILL NAME's daemon and wait until it is gone.
kill_daemon() {
  pid=$(json "$run/$1/state.json" s.pid)
  kill -KILL "$pid"
  while [ -e "/proc/$pid" ]; do sleep 0.1; done
}

# still_running PID: the background job PID has not finished.
still_running() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status"; }

echo data >"$w/tree/readme"
/sbin/mke2fs -q -F -t ext4 -d "$w/tree" "$w/base.img" 64M
base_sum=$(sha256sum <"$w/base.img")
truncate -s 64M "$w/rw.img"
head -c 3145728 /dev/urandom >"$w/a.bin"
head -c 4194304 /dev/urandom >"$w/b.bin"

# --- a daemon SIGKILLed under a mounted ext4 -----------------------------------
create_or_finish c0 "create --map prints the nbd device" --map "$w/c0.map" c0 "$w/base.img" "$w/rw.img"
check "mount $dev" mount -t ext4 "$dev" "$w/mnt"
check "write a file and sync" sh -c "cp '$w/a.bin' '$w/mnt/a.bin' && sync"
kill_daemon c0
pass "the daemon is SIGKILLed (pid $pid)"

out=$(geom-rowr list 2>&1)
case $out in
  *"c0"*"$dev (waiting for its daemon)"*) pass "list shows c0 waiting for its daemon" ;;
  *) fail "list shows c0 waiting for its daemon" "$out" ;;
esac
case $out in
  *"start one with: geom-rowr create --map $w/c0.map --sector-size 512 c0 $w/base.img $w/rw.img"*) pass "list says how to start a new daemon" ;;
  *) fail "list says how to start a new daemon" "$out" ;;
esac
check "the device is still configured after list" test -e "$(sysfs_of "$dev")/pid"
check "its state is kept" test -e "$run/c0/state.json"

out=$(geom-rowr destroy c0 2>&1)
rc=$?
case "$rc $out" in
  "1 "*"waits for a new one"*"destroy -f c0"*) pass "destroy without -f is refused while it waits" ;;
  *) fail "destroy without -f is refused while it waits" "exit $rc: $out" ;;
esac
truncate -s 64M "$w/other.img"
out=$(geom-rowr create --map "$w/c0.map" c0 "$w/base.img" "$w/other.img" 2>&1)
rc=$?
case "$rc $out" in
  "1 "*"this create differs: RW $w/other.img, not $w/rw.img"*) pass "a create with another RW is refused" ;;
  *) fail "a create with another RW is refused" "exit $rc: $out" ;;
esac
check "the device is still configured after the refusals" test -e "$(sysfs_of "$dev")/pid"

# Writes while no daemon runs: the kernel holds them.
sh -c "cp '$w/b.bin' '$w/mnt/b.bin' && sync" >"$w/bg.out" 2>&1 &
bg=$!
sleep 3
check "a write and sync issued meanwhile waits" still_running "$bg"

started=$(date +%s)
out=$(geom-rowr create --map "$w/c0.map" c0 "$w/base.img" "$w/rw.img" 2>&1)
case $out in
  *"$dev") pass "create of the same NAME reconnects $dev" ;;
  *) fail "create of the same NAME reconnects $dev" "$out $(cat "$run/c0.log")" ;;
esac
# Bounded: a request sent to the dead daemon is resent when the block
# layer's 30 s timer next fires.
n=0
while still_running "$bg" && [ $n -lt 600 ]; do sleep 0.2; n=$((n + 1)); done
if still_running "$bg"; then
  fail "the waiting write and sync complete" "still waiting after 120 s; $(dmesg | tail -n 5)"
else
  wait "$bg"
  rc=$?
  check "the waiting write and sync complete without error (in $(($(date +%s) - started)) s)" test "$rc" = 0
fi
check "the file written before the crash is intact" cmp "$w/a.bin" "$w/mnt/a.bin"
check "the file written during the outage is intact" cmp "$w/b.bin" "$w/mnt/b.bin"
check "ext4 is still writable" sh -c "echo after >'$w/mnt/after.txt' && sync"
check_not "ext4 saw no I/O error" sh -c "dmesg | grep -E 'EXT4-fs (error|warning)|I/O error'"
geom-rowr status --json c0 >"$w/status.json" 2>&1
check "status of the new daemon names $dev" test "$(json "$w/status.json" s.device)" = "$dev"
check "umount" umount "$w/mnt"
check "e2fsck -fn is clean" /sbin/e2fsck -fn "$dev"
check "mount again" mount -t ext4 -o ro "$dev" "$w/mnt"
check "every file reads back" sh -c "cmp '$w/a.bin' '$w/mnt/a.bin' && cmp '$w/b.bin' '$w/mnt/b.bin' && [ \"\$(cat '$w/mnt/after.txt')\" = after ] && [ \"\$(cat '$w/mnt/readme')\" = data ]"
check "umount again" umount "$w/mnt"
check "destroy" geom-rowr destroy c0
check "the read-only image is unchanged" test "$(sha256sum <"$w/base.img")" = "$base_sum"
check "$dev is disconnected (size 0)" test "$(cat "$(sysfs_of "$dev")/size")" = 0
check_nothing_left "nothing is left: no connected nbd device, daemon or run state"

# --- giving up on a waiting device: destroy -f ------------------------------------
# A new RW: the old one carries c0's map's device ID, and is not taken as empty.
rm -f "$w/rw.img"
truncate -s 64M "$w/rw.img"
out=$(geom-rowr create --map "$w/d0.map" d0 "$w/base.img" "$w/rw.img" 2>&1)
dev=$(echo "$out" | tail -n 1)
check "create d0 with a map ($dev)" test -b "$dev"
check "mount d0" mount -t ext4 "$dev" "$w/mnt"
kill_daemon d0
echo 3 >/proc/sys/vm/drop_caches
cat "$w/mnt/readme" >/dev/null 2>&1 &
reader=$!
sleep 2
check "a read while no daemon runs waits" still_running "$reader"
out=$(geom-rowr destroy -f d0 2>&1)
case $out in
  *"d0: cleaned up after a daemon that is gone"*"destroy -f gave up waiting"*"detached $dev"*) pass "destroy -f gives up on the waiting device" ;;
  *) fail "destroy -f gives up on the waiting device" "$out" ;;
esac
n=0
while still_running "$reader" && [ $n -lt 100 ]; do sleep 0.2; n=$((n + 1)); done
check_not "the waiting read ends" still_running "$reader"
wait "$reader"
check_not "the waiting read failed (I/O error, no stale data)" test $? = 0
check "umount -l" umount -l "$w/mnt"
check "$dev is disconnected (size 0)" test "$(cat "$(sysfs_of "$dev")/size")" = 0
check_nothing_left "nothing is left after destroy -f"
finish
