#!/bin/sh
# Builds the root disk of test/systemd's guest: Debian bookworm with systemd
# as PID 1, Docker (docker.io) and Debian's cloud kernel with its initramfs,
# from Debian's packages (mmdebstrap), cached like test/vm's kernel:
#
#   $BLOCKVOL_VM_CACHE/systemd/<key>/root.img     raw ext4 root disk (sparse)
#   $BLOCKVOL_VM_CACHE/systemd/<key>/vmlinuz      the guest's kernel
#   $BLOCKVOL_VM_CACHE/systemd/<key>/initrd.img   and initramfs
#   $BLOCKVOL_VM_CACHE/systemd/current -> <key>
#
# <key> is a digest of this script: a changed package list or guest setup
# builds a new image; otherwise the cached one is reused (a few ms). The
# tests boot a copy-on-write overlay of root.img, never root.img itself.
# Runs as root on Debian 12. test/setup.sh (run by `make test`) calls it.
set -eu

CACHE=${BLOCKVOL_VM_CACHE:-/var/tmp/blockvol-vm}
HERE=$(cd "$(dirname "$0")" && pwd)
KEY=$(cat "$0" "$HERE/guest/bvsd-driver.service" | sha256sum | cut -c1-16)
DIR=$CACHE/systemd/$KEY
export DEBIAN_FRONTEND=noninteractive

log() { echo "test/systemd/setup.sh: $*" >&2; }

if [ -s "$DIR/root.img" ] && [ -s "$DIR/vmlinuz" ] && [ -s "$DIR/initrd.img" ]; then
  ln -sfn "$KEY" "$CACHE/systemd/.current.tmp" && mv -T "$CACHE/systemd/.current.tmp" "$CACHE/systemd/current"
  log "guest image $KEY already in $DIR"
  exit 0
fi

# The tools that build it.
for p in mmdebstrap e2fsprogs qemu-utils; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    log "installing $p"
    apt-get -y -q -o DPkg::Lock::Timeout=600 install --no-install-recommends "$p" >/tmp/blockvol-systemd-apt.log 2>&1 ||
      { apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null 2>&1 &&
        apt-get -y -q -o DPkg::Lock::Timeout=600 install --no-install-recommends "$p" >>/tmp/blockvol-systemd-apt.log 2>&1; } ||
      { tail -30 /tmp/blockvol-systemd-apt.log >&2; exit 1; }
  fi
done

# What the guest runs: systemd and udev; Docker; the kernel and its
# initramfs; the programs blockvol runs for the loop backend; busybox for
# the container image the test imports; and what install.sh uses.
PKGS="systemd,systemd-sysv,udev,kmod,dbus,linux-image-cloud-amd64,initramfs-tools,docker.io,e2fsprogs,xfsprogs,util-linux,mount,busybox-static,procps,iproute2,coreutils"

mkdir -p "$CACHE/systemd"
TMP=$(mktemp -d "$CACHE/systemd/.build.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
R=$TMP/root
start=$(date +%s)
log "building the guest's root filesystem with mmdebstrap (a few minutes, once)"
mmdebstrap --mode=root --variant=minbase --include="$PKGS" \
  --aptopt='Apt::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  bookworm "$R" >"$TMP/mmdebstrap.log" 2>&1 || { tail -40 "$TMP/mmdebstrap.log" >&2; exit 1; }

# The guest: root on the first virtio disk; no network; nothing that runs
# on a timer; the test's driver (on the second disk) started at boot.
echo bvsd >"$R/etc/hostname"
printf '/dev/vda / ext4 defaults 0 1\n' >"$R/etc/fstab"
passwd -R "$R" -d root >/dev/null
mkdir -p "$R/etc/docker"
printf '{"bridge": "none", "iptables": false, "ip-masq": false}\n' >"$R/etc/docker/daemon.json"
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
         dpkg-db-backup.timer systemd-networkd-wait-online.service getty@tty1.service; do
  ln -sfn /dev/null "$R/etc/systemd/system/$u"
done
cp "$HERE/guest/bvsd-driver.service" "$R/etc/systemd/system/"
mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
ln -sfn /etc/systemd/system/bvsd-driver.service "$R/etc/systemd/system/multi-user.target.wants/bvsd-driver.service"

mkdir -p "$TMP/out"
cp -L "$R"/boot/vmlinuz-* "$TMP/out/vmlinuz"
cp -L "$R"/boot/initrd.img-* "$TMP/out/initrd.img"
mke2fs -q -t ext4 -L bvsdroot -d "$R" "$TMP/out/root.img" 3G
rm -rf "$DIR"
mv "$TMP/out" "$DIR"
ln -sfn "$KEY" "$CACHE/systemd/.current.tmp" && mv -T "$CACHE/systemd/.current.tmp" "$CACHE/systemd/current"
log "guest image $KEY built in $(( $(date +%s) - start )) s: $DIR ($(du -sh "$DIR" | cut -f1) on disk)"
