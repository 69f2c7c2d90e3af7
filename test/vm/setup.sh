#!/bin/sh
# Installs what the VM tests of test/vm need, and fetches Debian's cloud
# kernel into a cache that the tests read:
#
#   $BLOCKVOL_VM_CACHE/kernel/<package>_<version>/   (default cache /var/tmp/blockvol-vm)
#       vmlinuz                    the kernel image
#       lib/modules/<abi>/...      its modules, with modules.dep
#       release                    <abi>, e.g. 6.1.0-56-cloud-amd64
#   $BLOCKVOL_VM_CACHE/kernel/current -> <package>_<version>
#
# A kernel already extracted for the current package version is reused.
# Runs as root on Debian 12 (apt). Idempotent; test/setup.sh (run by `make test`) calls it.
set -eu

CACHE=${BLOCKVOL_VM_CACHE:-/var/tmp/blockvol-vm}
META=linux-image-cloud-amd64
export DEBIAN_FRONTEND=noninteractive

log() { echo "test/vm/setup.sh: $*" >&2; }

# qemu and the programs copied into the guest's initramfs. --no-install-recommends
# keeps qemu small; tgt and open-iscsi are only copied, their services are
# not needed on this host. The multi-host tests (TestMultiHost) run tgtd and
# an sshd of their own in a network namespace: openssh-server, iproute2;
# their multipath scenario runs multipathd in a guest: multipath-tools (this
# host's kernel has no device-mapper; only the programs are copied).
PKGS="qemu-system-x86 busybox-static tgt open-iscsi xfsprogs e2fsprogs util-linux udev kmod openssh-server openssh-client iproute2 multipath-tools"
install_pkgs() {
  apt-get install -y -q --no-install-recommends $PKGS >/tmp/blockvol-vm-apt.log 2>&1
}
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing$missing"
  install_pkgs || { apt-get update -q >/dev/null && install_pkgs; } || {
    tail -30 /tmp/blockvol-vm-apt.log >&2; exit 1; }
fi

# The versioned kernel package the meta package points at today (Debian
# bumps the ABI number: never hard-code it).
resolve() {
  PKG=$(apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  VER=
  [ -n "$PKG" ] && VER=$(apt-cache policy "$PKG" | awk '/Candidate:/ {print $2; exit}')
  [ -n "$PKG" ] && [ -n "$VER" ] && [ "$VER" != "(none)" ]
}
resolve || { apt-get update -q >/dev/null; resolve; } || { log "cannot resolve $META"; exit 1; }
ABI=${PKG#linux-image-}
DIR=$CACHE/kernel/${PKG}_$VER

if [ -s "$DIR/release" ] && [ -f "$DIR/vmlinuz" ]; then
  log "kernel $PKG $VER already in $DIR"
else
  log "fetching $PKG $VER into $DIR"
  mkdir -p "$CACHE/kernel"
  TMP=$(mktemp -d "$CACHE/kernel/.fetch.XXXXXX")
  trap 'rm -rf "$TMP"' EXIT
  (cd "$TMP" && { apt-get download -q "$PKG=$VER" >/dev/null 2>&1 ||
                  { apt-get update -q >/dev/null && apt-get download -q "$PKG=$VER"; }; })
  dpkg-deb -x "$TMP"/*.deb "$TMP/x"
  mkdir -p "$TMP/k/lib/modules"
  mv "$TMP/x/boot/vmlinuz-$ABI" "$TMP/k/vmlinuz"
  mv "$TMP/x/lib/modules/$ABI" "$TMP/k/lib/modules/$ABI" 2>/dev/null ||
    mv "$TMP/x/usr/lib/modules/$ABI" "$TMP/k/lib/modules/$ABI"
  # The package ships no modules.dep: the postinst makes it. Make it here.
  depmod -b "$TMP/k" "$ABI" 2>/dev/null || busybox depmod -b "$TMP/k" "$ABI"
  [ -s "$TMP/k/lib/modules/$ABI/modules.dep" ] || { log "depmod made no modules.dep"; exit 1; }
  echo "$ABI" > "$TMP/k/release"
  rm -rf "$DIR"
  mv "$TMP/k" "$DIR"
fi
ln -sfn "${PKG}_$VER" "$CACHE/kernel/.current.tmp"
mv -T "$CACHE/kernel/.current.tmp" "$CACHE/kernel/current"
log "kernel ready: $CACHE/kernel/current -> ${PKG}_$VER ($(cat "$DIR/release"))"
