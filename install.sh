#!/usr/bin/env bash
# install.sh: install blockvol on this host (or under a DESTDIR).
#
#   sudo ./install.sh                     build, install, enable the systemd units
#   sudo ./install.sh --binary ./blockvol install a binary built elsewhere
#   ./install.sh --destdir /tmp/pkg       stage a package tree; touches nothing else
#   sudo ./install.sh --uninstall         remove binary, units and docs; keep the
#                                         config and every volume
#   sudo ./install.sh --uninstall --purge also remove the config and the volumes
#
# Safe to run again: files that are already up to date are left alone, and
# an existing /etc/blockvol/config.toml is never overwritten. See
# docs/operating.md.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: install.sh [options]

  --binary PATH   install this blockvol binary instead of building one (go build)
  --prefix DIR    installation prefix (default /usr/local): DIR/bin/blockvol,
                  DIR/share/doc/blockvol
  --destdir DIR   stage everything under DIR (DESTDIR-style root); no systemctl,
                  no service started
  --unitdir DIR   where the systemd units go (default /etc/systemd/system)
  --uninstall     remove what install.sh installed; keep the config and volumes
  --purge         with --uninstall: also remove /etc/blockvol and the volume data
                  (state_dir and each loop data_dir); refused while volumes are
                  mounted or attached
  --strict        exit with status 3 when a prerequisite is missing
  -h, --help      this help
EOF
}

die() {
	echo "install.sh: $*" >&2
	exit 1
}

say() { echo "$*"; }

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BINARY=""
PREFIX="/usr/local"
DESTDIR=""
UNITDIR="/etc/systemd/system"
UNINSTALL=0
PURGE=0
STRICT=0

while [ $# -gt 0 ]; do
	case "$1" in
	--binary) BINARY="${2:?--binary needs a path}"; shift 2 ;;
	--binary=*) BINARY="${1#*=}"; shift ;;
	--prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
	--prefix=*) PREFIX="${1#*=}"; shift ;;
	--destdir) DESTDIR="${2:?--destdir needs a directory}"; shift 2 ;;
	--destdir=*) DESTDIR="${1#*=}"; shift ;;
	--unitdir) UNITDIR="${2:?--unitdir needs a directory}"; shift 2 ;;
	--unitdir=*) UNITDIR="${1#*=}"; shift ;;
	--uninstall) UNINSTALL=1; shift ;;
	--purge) PURGE=1; shift ;;
	--strict) STRICT=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown option $1" ;;
	esac
done

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path, not $PREFIX" ;; esac
case "$UNITDIR" in /*) ;; *) die "--unitdir must be an absolute path, not $UNITDIR" ;; esac
if [ -n "$DESTDIR" ]; then
	mkdir -p "$DESTDIR"
	DESTDIR="$(cd "$DESTDIR" && pwd)"
fi
if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
	die "--purge goes with --uninstall"
fi
if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
	die "run as root (or stage a tree with --destdir DIR)"
fi

# Root's tools live in the sbin directories, which a user's PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

BIN="$PREFIX/bin/blockvol"
DOCDIR="$PREFIX/share/doc/blockvol"
CONFDIR="/etc/blockvol"
CONFIG="$CONFDIR/config.toml"
UNITS="blockvol.socket blockvol.service"
TMPD=""

# systemd is running (sd_booted: /run/systemd/system is a directory), and
# we act on this host rather than stage a tree.
use_systemctl() {
	[ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# A key's string value among the top-level keys of a config (before the
# first [table]); empty when absent.
toplevel_key() {
	local key="$1" file="$2"
	[ -r "$file" ] || return 0
	awk -v key="$key" '
		/^[[:space:]]*\[/ { exit }
		$0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
			if (match($0, /"[^"]*"/)) { print substr($0, RSTART + 1, RLENGTH - 2); exit }
		}' "$file"
}

# Every data_dir value of the config's backends.
data_dirs() {
	[ -r "$1" ] || return 0
	sed -n 's/^[[:space:]]*data_dir[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$1"
}

# Whether a backend type that attaches over iSCSI is configured.
iscsi_configured() {
	[ -r "$1" ] && grep -Eq '^[[:space:]]*type[[:space:]]*=[[:space:]]*"(iscsitarget|cinder)"' "$1"
}

# The socket the plugin listens on, as blockvol derives it from the config.
plugin_socket() {
	local sock name
	sock="$(toplevel_key socket "$1")"
	if [ -n "$sock" ]; then
		echo "$sock"
		return
	fi
	name="$(toplevel_key name "$1")"
	echo "/run/docker/plugins/${name:-blockvol}.sock"
}

CHANGED=0

# put_file SRC DST MODE: install SRC at DST with MODE unless DST already has
# the same content and mode. Written to a temporary file and renamed, so a
# running binary is replaced, never rewritten in place.
put_file() {
	local src="$1" dst="$2" mode="$3" tmp
	if [ -f "$dst" ] && cmp -s "$src" "$dst" && [ "$(stat -c %a "$dst")" = "${mode#0}" ]; then
		say "unchanged  $dst"
		return
	fi
	mkdir -p "$(dirname "$dst")"
	tmp="$(dirname "$dst")/.$(basename "$dst").tmp.$$"
	cp "$src" "$tmp"
	chmod "$mode" "$tmp"
	mv -f "$tmp" "$dst"
	CHANGED=1
	say "installed  $dst"
}

remove_file() {
	if [ -e "$1" ] || [ -L "$1" ]; then
		rm -f "$1"
		say "removed    $1"
	fi
}

build_binary() {
	local out="$1" gobin version
	gobin="$(command -v go || true)"
	[ -n "$gobin" ] || [ ! -x /usr/local/go/bin/go ] || gobin=/usr/local/go/bin/go
	[ -n "$gobin" ] || die "go is not installed: install Go, or pass --binary PATH"
	[ -f "$SRC/go.mod" ] || die "$SRC is not the blockvol source tree: pass --binary PATH"
	version="$(git -C "$SRC" describe --tags --always --dirty 2>/dev/null || echo dev)"
	say "building   blockvol $version"
	(cd "$SRC" && "$gobin" build -trimpath -ldflags "-X main.version=$version" -o "$out" ./cmd/blockvol)
}

# Prerequisites of the installed config: each missing one named, with the
# Debian package that provides it.
MISSING=0
MISSING_PKGS=""
missing() {
	say "MISSING    $1 -> apt-get install $2"
	MISSING=$((MISSING + 1))
	case " $MISSING_PKGS " in *" $2 "*) ;; *) MISSING_PKGS="${MISSING_PKGS:+$MISSING_PKGS }$2" ;; esac
}

check_prerequisites() {
	local config="$1" t pair
	say "checking prerequisites"
	for pair in mkfs.ext4:e2fsprogs mkfs.xfs:xfsprogs blkid:util-linux losetup:mount; do
		t="${pair%%:*}"
		if command -v "$t" >/dev/null 2>&1; then
			say "ok         $t ($(command -v "$t"))"
		else
			missing "$t (blockvol needs it)" "${pair#*:}"
		fi
	done
	if ! iscsi_configured "$config"; then
		say "ok         iSCSI not needed (no iscsitarget or cinder backend in $config)"
		return
	fi
	if command -v iscsiadm >/dev/null 2>&1; then
		say "ok         iscsiadm ($(command -v iscsiadm))"
	else
		missing "iscsiadm (an iSCSI backend is configured)" open-iscsi
	fi
	if [ -s /etc/iscsi/initiatorname.iscsi ]; then
		say "ok         /etc/iscsi/initiatorname.iscsi"
	else
		missing "/etc/iscsi/initiatorname.iscsi (this host's iSCSI initiator name)" open-iscsi
	fi
	if pgrep -x iscsid >/dev/null 2>&1 ||
		{ use_systemctl && systemctl is-active --quiet iscsid.socket; }; then
		say "ok         iscsid running"
	elif command -v iscsid >/dev/null 2>&1; then
		if use_systemctl; then
			say "MISSING    iscsid is not running -> systemctl enable --now iscsid.socket"
		else
			say "MISSING    iscsid is not running -> start it: iscsid"
		fi
		MISSING=$((MISSING + 1))
	else
		missing "iscsid (an iSCSI backend is configured)" open-iscsi
	fi
}

do_install() {
	local bin_src unit sock doc tmp
	TMPD="$(mktemp -d)"
	trap 'rm -rf "$TMPD"' EXIT
	tmp="$TMPD"

	if [ -n "$BINARY" ]; then
		[ -f "$BINARY" ] || die "--binary $BINARY: no such file"
		bin_src="$BINARY"
	else
		bin_src="$tmp/blockvol"
		build_binary "$bin_src"
	fi
	put_file "$bin_src" "$DESTDIR$BIN" 0755

	mkdir -p "$DESTDIR$CONFDIR"
	if [ -e "$DESTDIR$CONFIG" ]; then
		say "kept       $DESTDIR$CONFIG (an existing config is never overwritten)"
	else
		put_file "$SRC/config.example.toml" "$DESTDIR$CONFIG" 0600
	fi

	# The units name the installed binary, the docs, and the socket the
	# config makes blockvol listen on.
	sock="$(plugin_socket "$DESTDIR$CONFIG")"
	for unit in $UNITS; do
		sed -e "s|/usr/local/bin/blockvol|$BIN|g" \
			-e "s|/usr/local/share/doc/blockvol|$DOCDIR|g" \
			-e "s|^ListenStream=.*|ListenStream=$sock|" \
			"$SRC/systemd/$unit" >"$tmp/$unit"
		put_file "$tmp/$unit" "$DESTDIR$UNITDIR/$unit" 0644
	done

	for doc in "$SRC"/docs/*.md "$SRC/config.example.toml"; do
		[ -f "$doc" ] && put_file "$doc" "$DESTDIR$DOCDIR/$(basename "$doc")" 0644
	done

	check_prerequisites "$DESTDIR$CONFIG"

	say ""
	if [ -n "$DESTDIR" ]; then
		say "staged under $DESTDIR; no unit enabled, nothing started."
	elif use_systemctl; then
		systemctl daemon-reload
		systemctl enable blockvol.service blockvol.socket
		systemctl start blockvol.socket
		say "enabled blockvol.socket and blockvol.service; the socket listens at $sock"
		say "and starts blockvol at the first Docker call (and at every boot)."
		if [ "$CHANGED" = 1 ] && systemctl is-active --quiet blockvol.service; then
			say "blockvol.service is running the previous binary: systemctl restart blockvol.service"
			say "(safe while volumes are in use: their state survives restarts)"
		fi
	else
		say "systemd is not running on this host: the units are installed in $UNITDIR but"
		say "not enabled. Start blockvol by hand, before dockerd, as root:"
		say ""
		say "  $BIN serve --config $CONFIG >>/var/log/blockvol.log 2>&1 &"
		say ""
		say "and stop it with SIGTERM (kill -TERM <pid>): calls in flight finish first."
	fi
	say "check this host at any time: $BIN doctor --config $CONFIG"

	if [ "$MISSING" -gt 0 ]; then
		say ""
		say "blockvol is installed, but $MISSING prerequisite(s) are missing (see MISSING above)."
		if [ -n "$MISSING_PKGS" ]; then
			say "install them with: apt-get install $MISSING_PKGS"
		fi
		if [ "$STRICT" = 1 ]; then
			exit 3
		fi
	fi
}

# in_use_under DIR: whether anything is mounted at or below DIR, or a loop
# device is backed by a file below it.
in_use_under() {
	local dir="$1" f
	awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo && return 0
	for f in /sys/block/loop*/loop/backing_file; do
		[ -r "$f" ] || continue
		case "$(cat "$f")" in "$dir"/*) return 0 ;; esac
	done
	return 1
}

do_uninstall() {
	local unit config state dirs d pids
	if use_systemctl; then
		systemctl disable --now blockvol.service blockvol.socket 2>/dev/null || true
	fi
	for unit in $UNITS; do
		remove_file "$DESTDIR$UNITDIR/$unit"
	done
	if use_systemctl; then
		systemctl daemon-reload
	fi
	remove_file "$DESTDIR$BIN"
	if [ -d "$DESTDIR$DOCDIR" ]; then
		rm -rf "$DESTDIR$DOCDIR"
		say "removed    $DESTDIR$DOCDIR"
	fi
	if [ -z "$DESTDIR" ] && ! use_systemctl && pids="$(pgrep -x blockvol | paste -sd ' ')" && [ -n "$pids" ]; then
		say "blockvol is still running (pid $pids); stop it with kill -TERM <pid>."
	fi

	config="$DESTDIR$CONFIG"
	state="$(toplevel_key state_dir "$config")"
	state="${state:-/var/lib/blockvol}"
	if [ "$PURGE" = 0 ]; then
		if [ -e "$config" ] || [ -d "$DESTDIR$state" ]; then
			say "kept       $config and the volumes under $DESTDIR$state (--purge removes them)"
		fi
		return
	fi
	dirs="$DESTDIR$state"
	while IFS= read -r d; do
		[ -n "$d" ] && dirs="$dirs"$'\n'"$DESTDIR$d"
	done < <(data_dirs "$config")
	while IFS= read -r d; do
		case "$d" in
		"$DESTDIR"/*/*) ;;
		*) die "not purging $d: a volume directory must lie at least two levels below /" ;;
		esac
		if [ -d "$d" ] && in_use_under "$d"; then
			die "not purging: volumes under $d are still mounted or attached; stop the containers using them, unmount them (blockvol volume unmount NAME) and try again"
		fi
	done <<<"$dirs"
	while IFS= read -r d; do
		if [ -d "$d" ]; then
			rm -rf "$d"
			say "removed    $d (volume data)"
		fi
	done <<<"$dirs"
	if [ -d "$DESTDIR$CONFDIR" ]; then
		rm -rf "$DESTDIR$CONFDIR"
		say "removed    $DESTDIR$CONFDIR"
	fi
}

if [ "$UNINSTALL" = 1 ]; then
	do_uninstall
else
	do_install
fi
