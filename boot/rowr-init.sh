#!/bin/sh
# geom-rowr Live ISO boot: run from the ISO's small ramdisk by init(8)
# (loader.conf: init_script="/rowr-init.sh"). It attaches the compressed
# system image read-only, puts a writable geom-rowr device over it (changes
# go to a swap-backed md of exactly the image's size), mounts that on
# /sysroot and hands over with init_chroot. Any failure after the image is
# attached falls back to booting the image read-only, never a dead end.
#
# Node.js and geom-rowr come from the system image itself, mounted
# read-only on /ro first: that image never changes, so the mount stays valid
# under the daemon, and the ramdisk needs nothing but /rescue.
#
# kenv settings (defaults in brackets):
#   rowr.media  the installation media          [/dev/iso9660/LIVE]
#   rowr.image  the compressed image on it      [/cdrom/data/system.uzip]
#   rowr.name   the geom-rowr device            [rowr0]
# For tests only: ROWR_INIT_ROOT prefixes every path this script creates or
# mounts on, and ROWR_INIT_PATH replaces PATH.

PATH=${ROWR_INIT_PATH:-/rescue:/sbin:/bin:/usr/sbin:/usr/bin}
export PATH
root=${ROWR_INIT_ROOT:-}

say() { echo "rowr-init: $*"; }

setting() { # NAME DEFAULT
	value=$(kenv -q "$1" 2>/dev/null)
	echo "${value:-$2}"
}

media=$(setting rowr.media /dev/iso9660/LIVE)
image=$(setting rowr.image /cdrom/data/system.uzip)
name=$(setting rowr.name rowr0)
tools=$root/ro/usr/local/bin

# Nothing to boot at all: say why and leave the operator a shell.
dead_end() {
	say "FATAL: $*"
	say "no system to boot; starting a shell"
	exec sh
}

# The image is attached but the writable device failed: boot read-only.
read_only_boot() {
	say "ERROR: $*"
	say "falling back to a READ-ONLY system: changes cannot be saved"
	kenv init_chroot=/ro >/dev/null
	exit 0
}

# Uncompressed size of a geom_uzip image: block size times block count,
# big-endian at bytes 128 and 132, after the "#!/bin/sh" preamble.
uzip_size() { # FILE
	magic=$(od -A n -c -N 10 "$1" | tr -d ' \n')
	[ "$magic" = '#!/bin/sh\n' ] || return 1
	# shellcheck disable=SC2046 # eight numbers, split on purpose
	set -- $(od -A n -t u1 -j 128 -N 8 "$1")
	[ $# -eq 8 ] || return 1
	blksz=$(( ($1 << 24) + ($2 << 16) + ($3 << 8) + $4 ))
	nblocks=$(( ($5 << 24) + ($6 << 16) + ($7 << 8) + $8 ))
	[ "$blksz" -gt 0 ] && [ $((blksz % 512)) -eq 0 ] || return 1
	echo $((blksz * nblocks))
}

module() { # KLD MODULE
	kldstat -q -m "$2" || kldload "$1"
}

say "mounting $media on /cdrom"
mkdir -p "$root/cdrom" "$root/ro" "$root/sysroot"
mount -t cd9660 -o ro "$media" "$root/cdrom" || dead_end "cannot mount $media; set rowr.media in loader.conf"
[ -f "$root$image" ] || dead_end "$image is not on $media; set rowr.image in loader.conf"
size=$(uzip_size "$root$image") || dead_end "$image is not a geom_uzip image (mkuzip makes them)"
say "$image: $size bytes uncompressed"

module geom_uzip g_uzip || dead_end "cannot load geom_uzip"
md=$(mdconfig -a -t vnode -o readonly -f "$root$image") || dead_end "cannot attach $image"
i=0
while [ ! -e "$root/dev/$md.uzip" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -e "$root/dev/$md.uzip" ] || dead_end "geom_uzip did not show $md.uzip"
mount -o ro "/dev/$md.uzip" "$root/ro" || dead_end "cannot mount /dev/$md.uzip read-only"

module geom_gate g_gate || read_only_boot "cannot load geom_gate"
# RW 'auto': a swap-backed md of exactly $md.uzip's size, made by geom-rowr.
# Its own exit status, not a pipeline's: the last line printed is the device.
created=$("$tools/geom-rowr" create "$name" "$md.uzip" auto) ||
	read_only_boot "geom-rowr create $name $md.uzip auto failed"
device=$(echo "$created" | tail -n 1)
[ -n "$device" ] || read_only_boot "geom-rowr create printed no device"
actual=$(diskinfo "$device" | cut -f 3)
if [ "$actual" != "$size" ]; then
	"$tools/geom-rowr" destroy "$name"
	read_only_boot "$device is $actual bytes, the image $size bytes"
fi
if ! mount "$device" "$root/sysroot"; then
	"$tools/geom-rowr" destroy "$name"
	read_only_boot "cannot mount $device"
fi

# Kernel modules that load firmware look in /boot; make it the same path
# inside and outside the chroot.
[ -e "$root/boot" ] || ln -s /sysroot/boot "$root/boot"
sysctl kern.module_path="/sysroot/boot/kernel;/sysroot/boot/modules" >/dev/null

kenv init_chroot=/sysroot >/dev/null
say "$name ($device) mounted read-write on /sysroot; booting"
exit 0
