#!/usr/bin/env bash
# Builds the guests that test/vm boots under qemu, from Debian's packages and
# this project, into build/vm/ (nothing is installed on the host):
#   vmlinuz       Debian 12's current 6.1 kernel (the linux-image-amd64 metapackage's)
#   nbd.cpio      an initramfs with busybox, the kernel modules, node,
#                 e2fsprogs and geom-rowr (dist/ and its production node_modules);
#                 /init runs the scenario named by the kernel argument vmtest=NAME
#   live.cpio     an initramfs with busybox, the modules and boot/linux/rowr-live.sh
#                 as /init: nothing of geom-rowr, which comes from the system image
#   live-itools.cpio  the same script under initramfs-tools: Debian's
#                 initramfs-tools init and scripts, rowr-live.sh as scripts/rowr
#                 (boot=rowr); assembled here, not by mkinitramfs
#   live.iso      an ISO 9660 medium (volume ROWR_LIVE) holding data/system.img, an
#                 ext4 system image (busybox root, node, geom-rowr, ldd,
#                 test/vm/guest/live-init.sh as /sbin/init)
# The .debs and their extracted files are kept between runs; the images are
# rebuilt only when one of their inputs changed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=$repo/build/vm
mkdir -p "$out/debs"

# Debian 12's kernel of the day: the metapackage names it, and older ones
# leave the archive.
kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-6\.[0-9.]*-[0-9]*-amd64\)$/\1/p' | head -n 1)
if [ -z "$kernel_pkg" ]; then
  apt-get update -qq
  kernel_pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-6\.[0-9.]*-[0-9]*-amd64\)$/\1/p' | head -n 1)
fi
kver=${kernel_pkg#linux-image-}
debs="$kernel_pkg busybox-static initramfs-tools-core"

# Downloaded once per package name; a stale package list is refreshed once.
for pkg in $debs; do
  if ! compgen -G "$out/debs/${pkg}_*.deb" >/dev/null; then
    (cd "$out/debs" && { apt-get download "$pkg" 2>/dev/null || { apt-get update -qq && apt-get download "$pkg"; }; })
  fi
done
pkgroot=$out/pkgroot-$kver
if [ "$(cat "$pkgroot/.done" 2>/dev/null)" != "$debs" ]; then
  rm -rf "$out"/pkgroot-*
  for pkg in $debs; do dpkg -x "$out/debs/${pkg}"_*.deb "$pkgroot"; done
  depmod -b "$pkgroot" "$kver"
  echo "$debs" >"$pkgroot/.done"
fi

# Rebuild only when an input changed: this script, the guest scripts, the
# boot script, the compiled project, the lock file, node and the kernel.
key=$( {
  echo "$kver"
  node --version
  cat scripts/build-vm-guest.sh package-lock.json
  find dist test/vm/guest boot/linux -type f -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -d' ' -f1)
if [ -e "$out/key" ] && [ "$(cat "$out/key")" = "$key" ]; then
  echo "build-vm-guest: up to date ($kver)"
  exit 0
fi
rm -f "$out/key"
cp "$pkgroot/boot/vmlinuz-$kver" "$out/vmlinuz"

# Copies every library ldd names for the given programs, at the same paths
# (the host's: Debian 12's, as the guest's kernel).
copy_libs() {
  local dest=$1 f lib
  shift
  for f in "$@"; do
    for lib in $(ldd "$f" | grep -oE '/[^ ]+' | sort -u); do
      if [ ! -e "$dest$lib" ]; then
        mkdir -p "$dest$(dirname "$lib")"
        cp -L "$lib" "$dest$lib"
      fi
    done
  done
}

# Host programs with their libraries, at the same paths.
copy_with_libs() {
  local dest=$1 f
  shift
  for f in "$@"; do
    mkdir -p "$dest$(dirname "$f")"
    cp -L "$f" "$dest$f"
  done
  copy_libs "$dest" "$@"
}

# What every guest has: busybox (its applets linked where no real program of
# that name is), the kernel modules the tests load, and the list of module
# files to insmod in order for each (busybox's modprobe does not read kmod's
# modules.dep here).
base_root() {
  local root=$1 mod applet
  rm -rf "$root"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,mnt,var/tmp,etc,lib/modules/"$kver"}
  ln -s /run "$root/var/run"
  cp "$pkgroot/bin/busybox" "$root/bin/busybox"
  # coreutils' env, for the '#!/usr/bin/env -S node ...' line of geom-rowr.
  copy_with_libs "$root" /usr/bin/env
  : >"$root/etc/modules.order"
  for mod in nbd loop ext4 crc32c_generic virtio_pci virtio_blk isofs sr_mod ata_piix; do
    modprobe -d "$pkgroot" -S "$kver" --show-depends "$mod" | awk '$1 == "insmod" { print $2 }' | while read -r ko; do
      rel=${ko#"$pkgroot"}
      if ! grep -qx "$rel" "$root/etc/modules.order"; then
        mkdir -p "$root$(dirname "$rel")"
        cp "$ko" "$root$rel"
        echo "$rel" >>"$root/etc/modules.order"
      fi
    done
  done
  for applet in $("$root/bin/busybox" --list-full); do
    case $(basename "$applet") in
      # Real programs of these names are used instead (nbd-client, e2fsprogs, env).
      nbd-client | mke2fs | mkfs.ext2 | e2fsck | fsck | env) continue ;;
    esac
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
}

# geom-rowr as npm would install it: dist/ and the production dependencies.
install_project() {
  local root=$1 dir=$1/opt/geom-rowr p
  mkdir -p "$dir"
  cp -r dist package.json "$dir/"
  for p in $(npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2); do
    mkdir -p "$dir/${p#"$repo"/}"
    cp -r "$p/." "$dir/${p#"$repo"/}"
  done
  copy_with_libs "$root" "$(command -v node)"
  copy_libs "$root" "$dir"/node_modules/koffi/build/koffi/linux_x64/*.node
  ln -sf /opt/geom-rowr/dist/bin/geom-rowr.js "$root/usr/bin/geom-rowr"
  copy_with_libs "$root" /sbin/mke2fs /sbin/e2fsck
}

cpio_of() {
  (cd "$1" && find . -print0 | cpio --null -o -H newc --quiet) >"$2"
}

# The nbd driver's guest.
stage=$out/stage-nbd
base_root "$stage"
install_project "$stage"
install -m 755 test/vm/guest/init.sh "$stage/init"
mkdir -p "$stage/vmtest"
install -m 755 test/vm/guest/nbd-driver.sh test/vm/guest/nbd-crash.sh test/vm/guest/nbd-common.sh test/vm/guest/report.sh "$stage/vmtest/"
cpio_of "$stage" "$out/nbd.cpio"
rm -rf "$stage"

# modules.dep for the modules a guest has, which busybox's modprobe reads;
# /etc/modules names the virtual machine's drivers (rowr-live.sh loads its own).
modules_by_name() {
  cp "$pkgroot/lib/modules/$kver"/modules.builtin* "$pkgroot/lib/modules/$kver/modules.order" "$1/lib/modules/$kver/"
  depmod -b "$1" "$kver"
  printf '%s\n' virtio_pci virtio_blk ata_piix sr_mod crc32c_generic >"$1/etc/modules"
}

# The live boot's initramfs: rowr-live.sh as /init.
stage=$out/stage-live
base_root "$stage"
modules_by_name "$stage"
install -m 755 boot/linux/rowr-live.sh "$stage/init"
cpio_of "$stage" "$out/live.cpio"
rm -rf "$stage"

# The same under initramfs-tools: its init and scripts as mkinitramfs installs
# them, rowr-live.sh as the boot script of boot=rowr, and udev's one duty
# there (moving /dev into the new root) as the only init-bottom script.
stage=$out/stage-itools
itools=$pkgroot/usr/share/initramfs-tools
base_root "$stage"
modules_by_name "$stage"
install -m 755 "$itools/init" "$stage/init"
mkdir -p "$stage/conf" "$stage/scripts/init-bottom"
cp "$pkgroot/etc/initramfs-tools/initramfs.conf" "$stage/conf/"
echo "DPKG_ARCH=$(dpkg --print-architecture)" >"$stage/conf/arch.conf"
cp "$stage/etc/modules" "$stage/conf/modules"
cp "$itools/scripts/functions" "$itools/scripts/local" "$itools/scripts/nfs" "$stage/scripts/"
install -m 755 boot/linux/rowr-live.sh "$stage/scripts/rowr"
# shellcheck disable=SC2016 # expanded by the guest's init
echo 'mount -n -o move /dev "${rootmnt:?}/dev"' >"$stage/scripts/init-bottom/ORDER"
cpio_of "$stage" "$out/live-itools.cpio"
rm -rf "$stage"

# The live system's image: busybox, node and geom-rowr, ldd (which
# rowr.hydrate=1 runs inside the image) and the bash it is written for, the
# test's init, two files of the image's own that the booted system deletes
# and renames, and the checksum of every file, which a hydrated boot reads
# back through the device.
stage=$out/stage-image
base_root "$stage"
install_project "$stage"
copy_with_libs "$stage" /bin/bash
install -m 755 /usr/bin/ldd "$stage/usr/bin/ldd"
mkdir -p "$stage/root" "$stage/vmtest"
rm -f "$stage/sbin/init"
install -m 755 test/vm/guest/live-init.sh "$stage/sbin/init"
install -m 755 test/vm/guest/live-boot.sh test/vm/guest/report.sh test/vm/guest/nbd-common.sh "$stage/vmtest/"
echo seed >"$stage/etc/rowr-seed"
echo moved >"$stage/etc/rowr-moved"
(cd "$stage" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sed 's#  \./#  /#') >"$out/image.sha256"
mv "$out/image.sha256" "$stage/vmtest/image.sha256"
rm -rf "$out/iso"
mkdir -p "$out/iso/data"
# Room for what the boots write.
truncate -s "$(($(du -sm "$stage" | cut -f1) + 64))M" "$out/iso/data/system.img"
/sbin/mke2fs -q -F -t ext4 -d "$stage" "$out/iso/data/system.img"
rm -rf "$stage"
# xorriso's banner only when it fails.
xorriso_out=$(xorriso -as mkisofs -iso-level 3 -R -V ROWR_LIVE -o "$out/live.iso" "$out/iso" 2>&1) || {
  echo "$xorriso_out" >&2
  exit 1
}
rm -rf "$out/iso"
echo "$key" >"$out/key"
echo "build-vm-guest: built $out ($kver)"
