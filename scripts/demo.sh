#!/bin/sh
# The demo: a small ext4 image stays read-only while a file system on top of
# it is changed through geom-rowr. Run as root (make demo).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
# make install put it on PATH (make demo runs it first).
rowr=geom-rowr
work=$(mktemp -d /tmp/geom-rowr-demo.XXXXXX)
name=demo$$
device=""

cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt"
  [ -n "$device" ] && $rowr destroy -f "$name" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (it attaches a loop device and mounts a file system)" >&2
  exit 1
fi

step "Build a 64 MiB ext4 image holding geom-rowr's own sources: the read-only device"
mkdir -p "$work/tree" "$work/mnt"
cp -R "$here/lib" "$here/README.md" "$work/tree/"
mkfs.ext4 -q -d "$work/tree" "$work/base.img" 64M
before=$(sha256sum "$work/base.img" | cut -d' ' -f1)
echo "base.img sha256 $before"

step "Make an empty sparse read-write file of the same size"
truncate -s "$(stat -c %s "$work/base.img")" "$work/rw.img"
du -h --apparent-size "$work/rw.img"; du -h "$work/rw.img"

step "geom-rowr create $name base.img rw.img"
device=$($rowr create "$name" "$work/base.img" "$work/rw.img" | tail -n 1)
echo "device: $device"

step "Mount it: the image's files are there at once"
mount "$device" "$work/mnt"
ls "$work/mnt"

step "Change the file system: move, delete, write"
mv "$work/mnt/lib/nbd" "$work/mnt/nbd-moved"
rm "$work/mnt/README.md"
head -c 4194304 /dev/urandom > "$work/mnt/new-4MiB.bin"
echo "hello from geom-rowr" > "$work/mnt/hello.txt"
sync
ls "$work/mnt"

step "The changes went to RW only"
du -h "$work/rw.img"
$rowr status "$name"

step "Unmount, check the file system, and check that base.img is unchanged"
umount "$work/mnt"
e2fsck -fn "$device" >/dev/null && echo "e2fsck -fn: clean"
after=$(sha256sum "$work/base.img" | cut -d' ' -f1)
echo "base.img sha256 $after"
[ "$before" = "$after" ] && echo "base.img is unchanged"

step "geom-rowr destroy $name"
$rowr destroy "$name"
device=""
echo "done"
