# blockvol iscsitarget helper: the file operations the backend needs on the
# iSCSI target host. It is not installed there: the backend passes this text
# as the script of `sh -c SCRIPT blockvol-iscsitarget OP ARG...`, so every
# value (paths, sizes, records) arrives as a positional parameter and is
# never parsed as shell syntax. POSIX sh, coreutils and util-linux only.
#
# Exit status: 0 done, 3 not found, 4 already exists, 5 the size was refused
# by the file system, 6 a LUN deleted but not added again; anything else is
# a failure explained on stderr.
set -eu
umask 077
op=$1
shift

# dirof FILE: the directory of an absolute path.
dirof() {
	d=${1%/*}
	printf '%s\n' "${d:-/}"
}

# emit DIR FILE: one NUL-terminated item per existing file:
#   record NUL dir NUL name NUL <content of name.json> NUL
#   image  NUL dir NUL name NUL NUL
emit() {
	b=${2##*/}
	[ -f "$2" ] || return 0
	case $b in
	*.json)
		printf 'record\0%s\0%s\0' "$1" "${b%.json}"
		cat -- "$2"
		printf '\0'
		;;
	*.img) printf 'image\0%s\0%s\0\0' "$1" "${b%.img}" ;;
	*.json.damaged-*) printf 'aside\0%s\0%s\0%s\0' "$1" "${b%%.json.damaged-*}" "$b" ;;
	esac
}

case $op in
scan)
	# scan NAME DIR...: the records and images of volume NAME ("" = all)
	# in each pool directory; "missing NUL dir NUL NUL NUL" for a pool
	# directory that does not exist.
	name=$1
	shift
	for d in "$@"; do
		if [ ! -d "$d" ]; then
			printf 'missing\0%s\0\0\0' "$d"
			continue
		fi
		if [ -n "$name" ]; then
			emit "$d" "$d/$name.json"
			emit "$d" "$d/$name.img"
		else
			for f in "$d"/*.json "$d"/*.img; do
				emit "$d" "$f"
			done
		fi
	done
	;;
create)
	# create FILE SIZE: a new sparse file of SIZE bytes, durably.
	f=$1
	[ ! -e "$f" ] || exit 4
	(set -C && : >"$f") 2>/dev/null || exit 4
	if ! truncate -s "$2" -- "$f"; then
		rm -f -- "$f"
		exit 5
	fi
	sync -- "$f" "$(dirof "$f")"
	;;
write)
	# write FILE CONTENT: replace FILE atomically and durably (temporary
	# file, fsync, rename, fsync of the directory).
	f=$1
	d=$(dirof "$f")
	t=$(mktemp -- "$d/.${f##*/}.tmp-XXXXXX")
	trap 'rm -f -- "$t"' EXIT
	printf '%s\n' "$2" >"$t"
	sync -- "$t"
	mv -f -- "$t" "$f"
	trap - EXIT
	sync -- "$d"
	;;
remove)
	# remove FILE...: delete the files, in order, durably; a missing file
	# is no error.
	for f in "$@"; do
		rm -f -- "$f"
		sync -- "$(dirof "$f")"
	done
	;;
copy)
	# copy SRC DST SIZE: DST (new) a copy of SRC, sharing its blocks where
	# the file system can (reflink), else keeping its holes, then SIZE
	# bytes long (never shorter than SRC), durably.
	[ -f "$1" ] || exit 3
	d=$(dirof "$2")
	mkdir -p -- "$d"
	[ ! -e "$2" ] || exit 4
	(set -C && : >"$2") 2>/dev/null || exit 4
	if ! cp --reflink=auto --sparse=always -- "$1" "$2"; then
		rm -f -- "$2"
		exit 1
	fi
	if [ "$(stat -c %s -- "$2")" -lt "$3" ] && ! truncate -s "$3" -- "$2"; then
		rm -f -- "$2"
		exit 5
	fi
	sync -- "$2" "$d"
	;;
snapscan)
	# snapscan DIR...: the snapshot records in each DIR (missing ones are
	# empty): record NUL dir NUL name NUL <content> NUL, image ... as scan,
	# and aside NUL dir NUL name NUL <file name> NUL for a record set aside.
	for d in "$@"; do
		[ -d "$d" ] || continue
		for f in "$d"/*.json "$d"/*.img "$d"/*.json.damaged-*; do
			emit "$d" "$f"
		done
	done
	;;
relun)
	# relun PORT TID LUN FILE WAIT PARAMS: delete LUN of tgtd's target TID
	# (control port PORT) and add it again over FILE at once, with the
	# LUN parameters PARAMS (its identity), so that tgtd reads FILE's size
	# anew. While tgtd says commands are in flight the delete is retried
	# every 20 ms when WAIT is "wait" (the caller ends this when its time
	# is up), else exit 4. Exit 6: deleted, but the add failed (the target
	# has no such LUN); exit 7: added, but PARAMS were refused.
	while ! out=$(tgtadm -C "$1" --lld iscsi --mode logicalunit --op delete --tid "$2" --lun "$3" 2>&1); do
		case $out in
		*"still active"*)
			[ "$5" = wait ] || exit 4
			sleep 0.02
			;;
		*)
			printf '%s\n' "$out" >&2
			exit 1
			;;
		esac
	done
	tgtadm -C "$1" --lld iscsi --mode logicalunit --op new --tid "$2" --lun "$3" --backing-store "$4" || exit 6
	tgtadm -C "$1" --lld iscsi --mode logicalunit --op update --tid "$2" --lun "$3" --params "$6" || exit 7
	;;
aside)
	# aside FILE TO: rename the damaged record FILE to TO (kept for
	# inspection), durably; never over an existing TO.
	[ -f "$1" ] || [ -L "$1" ] || exit 3
	[ ! -e "$2" ] && [ ! -L "$2" ] || exit 4
	mv -- "$1" "$2"
	sync -- "$(dirof "$1")"
	;;
grow)
	# grow FILE SIZE: lengthen FILE to SIZE bytes (never shorten it),
	# durably.
	f=$1
	[ -f "$f" ] || exit 3
	[ "$(stat -c %s -- "$f")" -lt "$2" ] || exit 0
	truncate -s "$2" -- "$f" || exit 5
	sync -- "$f"
	;;
hold)
	# hold LOCKFILE OWNER: run under flock(1). Records who holds the lock,
	# says "locked", then holds it until standard input ends.
	printf '%s\n' "$2" >"$1"
	echo locked
	exec cat >/dev/null
	;;
owner)
	# owner LOCKFILE: who took the lock last.
	cat -- "$1" 2>/dev/null || :
	;;
check)
	# check DIR...: every pool directory exists and is writable, and the
	# tools this script and the lock use are installed.
	for d in "$@"; do
		[ -d "$d" ] || { echo "pool directory $d does not exist" >&2; exit 1; }
		[ -w "$d" ] || { echo "pool directory $d is not writable" >&2; exit 1; }
	done
	for p in flock timeout truncate mktemp sync cat stat cp; do
		command -v "$p" >/dev/null || { echo "$p is not installed" >&2; exit 1; }
	done
	;;
*)
	echo "unknown operation $op" >&2
	exit 2
	;;
esac
