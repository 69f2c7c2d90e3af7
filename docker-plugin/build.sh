#!/bin/sh
# Assembles the Docker managed (v2) plugin directory from local files only:
# config.json and a rootfs holding the static blockvol and the programs it
# runs, copied with their libraries from this machine's Debian packages
# (e2fsprogs, xfsprogs, util-linux, open-iscsi). No image is pulled.
#
# Usage: docker-plugin/build.sh BLOCKVOL_BINARY OUTDIR
#   then: docker plugin create NAME:TAG OUTDIR     (what `make plugin` does)
set -eu
[ $# = 2 ] || { echo "usage: $0 BLOCKVOL_BINARY OUTDIR" >&2; exit 2; }
BIN=$1 OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
# The programs blockvol runs (fs/, backends/loop, iscsi/). Every one is
# required: a plugin missing one would fail only at the first volume.
TOOLS="blkid wipefs blockdev losetup e2fsck mkfs.ext4 mkfs.xfs fsfreeze resize2fs tune2fs xfs_growfs xfs_db iscsiadm"

log() { echo "docker-plugin/build.sh: $*" >&2; }

R=$OUT/rootfs
rm -rf "$OUT"
# Debian's merged /usr: /bin, /sbin, /lib, /lib64 are links into /usr, so
# the paths ldd prints land in the same files whichever form they take.
mkdir -p "$R/usr/bin" "$R/usr/sbin" "$R/usr/lib" "$R/usr/lib64" "$R/etc/iscsi" "$R/dev" \
  "$R/proc" "$R/sys" "$R/tmp" "$R/run/docker/plugins" "$R/run/lock" "$R/mnt/blockvol" "$R/var/lib/blockvol"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$R/$d"; done
chmod 1777 "$R/tmp"

# copy puts the file a path names (symlinks followed) at the same path in
# the rootfs.
copy() {
  case $1 in /bin/*|/sbin/*|/lib/*|/lib64/*) dst=$R/usr$1 ;; *) dst=$R$1 ;; esac
  [ -e "$dst" ] && return 0
  mkdir -p "$(dirname "$dst")"
  cp -L "$1" "$dst"
}

install -m 0755 "$BIN" "$R/usr/bin/blockvol"
if ldd "$BIN" >/dev/null 2>&1; then log "$BIN is not static (build it with CGO_ENABLED=0)"; exit 1; fi
for t in $TOOLS; do
  p=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$t") || { log "$t not found: apt-get install e2fsprogs xfsprogs util-linux open-iscsi"; exit 1; }
  copy "$p"
  # Shared libraries, and the dynamic loader itself.
  for lib in $(ldd "$p" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    copy "$lib"
  done
done
# mke2fs reads its defaults from here; without it ext4 gets different features.
[ -f /etc/mke2fs.conf ] && copy /etc/mke2fs.conf
cp "$HERE/config.json" "$OUT/config.json"
log "$OUT: $(du -sh "$R" | cut -f1) rootfs, $(find "$R" -type f | wc -l) files"
