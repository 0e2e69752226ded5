#!/bin/sh
# Installs the Debian packages geom-rowr's tests, demo and benchmarks use,
# skipping apt entirely when they are all present already.
set -eu

# qemu-system-x86, cpio, kmod (depmod, modprobe), xorriso and libnl-genl-3-200
# (nbd-client's library) build and boot the guests of test/vm.
packages="qemu-utils libnbd-bin fuse3 libfuse3-dev pkg-config e2fsprogs fio nbdkit shellcheck qemu-system-x86 cpio kmod xorriso libnl-genl-3-200"

missing=""
for p in $packages; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: missing Debian packages:$missing; install them as root: apt-get install$missing" >&2
  exit 1
fi
echo "install-system-deps: installing$missing"
apt-get update -qq
# shellcheck disable=SC2086 # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
