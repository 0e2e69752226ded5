#!/bin/sh
# PID 1 of the nbd-driver guest: mounts the kernel's file systems, loads the
# modules, runs the scenario named by the kernel argument vmtest=NAME with
# its results on the first virtual disk (report.sh), and powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/tmp
while read -r ko; do
  # crc32c-intel needs SSE 4.2, which an emulated CPU may lack; crc32c_generic stands in.
  insmod "$ko" 2>/dev/null || echo "init: could not load $ko"
done </etc/modules.order
scenario=$(sed -n 's/.*vmtest=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -x "/vmtest/$scenario.sh" ]; then
  "/vmtest/$scenario.sh"
else
  echo "init: no scenario '$scenario' (kernel argument vmtest=NAME)"
fi
# The results disk was written with fsync at every step; a sync here could
# hang on a device whose daemon is gone.
poweroff -f
