#!/bin/sh
# /sbin/init of the live boot's system image (test/vm/live-boot.ts), started
# by boot/linux/rowr-live.sh on the geom-rowr device, or on the image itself
# on a read-only boot. It runs the checks of the boot named by the kernel
# argument vmtest=NAME, then shuts down as a system on a geom-rowr root
# must: sync and remount / read-only while the daemon still serves it, and
# only then power off. Nothing here stops the daemon.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# shellcheck source=test/vm/guest/report.sh
. /vmtest/report.sh
# rowr-live.sh moved /dev, /proc, /sys and /run into this root.
mount -t tmpfs tmpfs /tmp
scenario=$(sed -n 's/.*vmtest=\([^ ]*\).*/\1/p' /proc/cmdline)
root_device=$(awk '$2 == "/" { d = $1 } END { print d }' /proc/mounts)
/vmtest/live-boot.sh "$scenario"

sync
case $root_device in
/dev/nbd*)
	check "/ is remounted read-only at shutdown, its daemon still serving" mount -o remount,ro /
	if [ "$scenario" = persist ]; then
		# What the next boot resumes from.
		check "e2fsck -fn of the root after the remount is clean" /sbin/e2fsck -fn "$root_device"
	fi
	;;
esac
finish
poweroff -f
