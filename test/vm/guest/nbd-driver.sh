#!/bin/sh
# Inside the guest, through the kernel's nbd driver (geom-rowr's own netlink attach): the
# original module's test procedure on ext4, destroy -f while mounted, and a
# SIGKILLed daemon of a device without a map cleaned up by the next list.
# Debian's static busybox runs its own applets before PATH: e2fsprogs is
# called by its full path.
# shellcheck source=test/vm/guest/report.sh
. /vmtest/report.sh
# shellcheck source=test/vm/guest/nbd-common.sh
. /vmtest/nbd-common.sh
mkdir -p "$w/tree/lua" "$w/mnt"

# --- the module's procedure ---------------------------------------------------
cp -r /opt/geom-rowr/dist "$w/tree/dist"
echo forth >"$w/tree/loader.4th"
echo pxe >"$w/tree/pxeboot"
/sbin/mke2fs -q -F -t ext4 -d "$w/tree" "$w/base.img" 64M
base_sum=$(sha256sum <"$w/base.img")
truncate -s 64M "$w/rw.img"

create_or_finish rowr0 "create prints the nbd device" rowr0 "$w/base.img" "$w/rw.img"
check "the device is connected to the kernel" test -e "$(sysfs_of "$dev")/pid"
check "mount $dev" mount -t ext4 "$dev" "$w/mnt"
check "the read-only image's files are there" cmp /opt/geom-rowr/dist/lib/engine/sector-map.js "$w/mnt/dist/lib/engine/sector-map.js"
check "mv loader.4th lua/" mv "$w/mnt/loader.4th" "$w/mnt/lua/loader.4th"
check "rm pxeboot" rm "$w/mnt/pxeboot"
check "rm -r dist/lib/cli" rm -r "$w/mnt/dist/lib/cli"
check "write new.txt" sh -c "echo 'written through geom-rowr' >'$w/mnt/new.txt'"
head -c 5242880 /dev/urandom >"$w/big.bin"
check "write 5 MiB" cp "$w/big.bin" "$w/mnt/big.bin"

out=$(geom-rowr destroy rowr0 2>&1)
rc=$?
case "$rc $out" in
  "1 "*"rowr0 ($dev) is in use"*"destroy -f"*) pass "destroy is refused while mounted" ;;
  *) fail "destroy is refused while mounted" "exit $rc: $out" ;;
esac
check "umount" umount "$w/mnt"
check "e2fsck -fn is clean" /sbin/e2fsck -fn "$dev"

check "mount again" mount -t ext4 "$dev" "$w/mnt"
check "new.txt reads back" sh -c "[ \"\$(cat '$w/mnt/new.txt')\" = 'written through geom-rowr' ]"
check "the moved file is there" sh -c "[ \"\$(cat '$w/mnt/lua/loader.4th')\" = forth ]"
check_not "the removed file is gone" test -e "$w/mnt/pxeboot"
check_not "the removed tree is gone" test -e "$w/mnt/dist/lib/cli"
check "5 MiB read back" cmp "$w/big.bin" "$w/mnt/big.bin"
check "umount again" umount "$w/mnt"

geom-rowr status --json rowr0 >"$w/status.json" 2>&1
check "status names the device" test "$(json "$w/status.json" s.device)" = "$dev"
check "the changes are on RW" test "$(json "$w/status.json" 's.writtenBytes >= 5 << 20')" = true
check "unchanged data came from RO" test "$(json "$w/status.json" 's.stats.readBytesFromRo > 0')" = true

check "destroy" geom-rowr destroy rowr0
check "the read-only image is unchanged" test "$(sha256sum <"$w/base.img")" = "$base_sum"
check "$dev is disconnected (size 0)" test "$(cat "$(sysfs_of "$dev")/size")" = 0
check_nothing_left "nothing is left: no connected nbd device, daemon or run state"

# --- destroy -f while mounted ---------------------------------------------------
out=$(geom-rowr create force0 "$w/base.img" auto 2>&1)
dev=$(echo "$out" | tail -n 1)
check "create with RW auto ($dev)" test -b "$dev"
check "auto RW has RO's size" test "$(stat -c %s /var/tmp/geom-rowr-force0.rw)" = "$(stat -c %s "$w/base.img")"
check "mount the auto device" mount -t ext4 "$dev" "$w/mnt"
check "write to it" sh -c "echo x >'$w/mnt/x' && sync"
check "destroy -f while mounted" geom-rowr destroy -f force0
check_not "auto RW is removed" test -e /var/tmp/geom-rowr-force0.rw
echo 3 >/proc/sys/vm/drop_caches
check_not "reading the forced-away device fails" cat "$w/mnt/dist/lib/errors.js"
check "umount -l" umount -l "$w/mnt"
check "$dev is disconnected (size 0)" test "$(cat "$(sysfs_of "$dev")/size")" = 0
check_nothing_left "nothing is left after destroy -f"

# --- a SIGKILLed daemon of a device without a map --------------------------------
truncate -s 0 "$w/rw.img"
truncate -s 64M "$w/rw.img"
out=$(geom-rowr create k0 "$w/base.img" "$w/rw.img" 2>&1)
dev=$(echo "$out" | tail -n 1)
check "create k0 ($dev)" test -b "$dev"
pid=$(json "$run/k0/state.json" s.pid)
kill -KILL "$pid"
while [ -e "/proc/$pid" ]; do sleep 0.1; done
out=$(geom-rowr list 2>&1)
case $out in
  *"k0: cleaned up after a daemon that is gone: its daemon (pid $pid) is gone; detached $dev"*) pass "list cleans up after the killed daemon" ;;
  *) fail "list cleans up after the killed daemon" "$out" ;;
esac
check "$dev is disconnected (size 0)" test "$(cat "$(sysfs_of "$dev")/size")" = 0
check_nothing_left "nothing is left after the cleanup"
# Nothing opens this device before destroy does: its first open (the busy
# check) scans it for partitions through the daemon's own NBD server.
out=$(geom-rowr create k0 "$w/base.img" "$w/rw.img" 2>&1)
check "the NAME is free again" test -b "$(echo "$out" | tail -n 1)"
check "destroy k0" geom-rowr destroy k0
check_nothing_left "nothing is left after k0"

# --- sector sizes: the driver's logical block size, and its page-size limit -------
out=$(geom-rowr create --sector-size 4096 s0 "$w/base.img" "$w/rw.img" 2>&1)
dev=$(echo "$out" | tail -n 1)
check "create with 4096-byte sectors ($dev)" test -b "$dev"
check "the driver's logical block size is 4096" test "$(cat "$(sysfs_of "$dev")/queue/logical_block_size")" = 4096
check "destroy s0" geom-rowr destroy s0
out=$(geom-rowr create --sector-size 8192 s1 "$w/base.img" "$w/rw.img" 2>&1)
rc=$?
case "$rc $out" in
  "1 "*"larger than the 4096 bytes a Linux block device allows"*"--sector-size 4096"*) pass "8192-byte sectors are refused with the limit and the fix" ;;
  *) fail "8192-byte sectors are refused with the limit and the fix" "exit $rc: $out" ;;
esac
check_nothing_left "nothing is left at the end"
finish
