#!/bin/sh
# The one entry that prepares a Debian machine for `make test` (the `test`
# target runs it first; .ci/run runs `make test`). As root it installs what
# is missing and fills the caches the tests read; it is idempotent and takes
# a few seconds when everything is already there. As non-root it changes
# nothing and says in one line which command does.
#
# Each area keeps its own setup script; add a new one to the list below:
#   test/vm/setup.sh              qemu, tgt, open-iscsi, Debian's cloud kernel
#                                 (open-iscsi is also in the managed plugin)
#   test/systemd/setup.sh         mmdebstrap; the systemd guest's Debian disk
#                                 (built once, ~3 min, then cached)
#   test/openstack/setup.sh setup Keystone + Cinder (initialised once, then
#                                 stopped; a stack already running is left alone)
set -eu
cd "$(dirname "$0")/.."

log() { echo "test/setup.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "not root: nothing installed, root and tool tests will skip (run 'sudo make test' to install the tools and run them all)"
  exit 0
fi
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] ||
  { log "no Go toolchain: install Go (go.mod's version) under /usr/local/go first"; exit 1; }

export DEBIAN_FRONTEND=noninteractive
APT="apt-get -y -q -o DPkg::Lock::Timeout=600"

# The host tools of the root tests and test/e2e (a private dockerd, loop
# devices, mkfs, tgtd, sshd for the iscsitarget backend's SSH mode).
PKGS="make docker.io busybox-static e2fsprogs xfsprogs util-linux tgt libiscsi-bin
      openssh-server openssh-client coreutils shellcheck"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing$missing"
  aptlog=/tmp/blockvol-test-apt.log
  # shellcheck disable=SC2086 # a list of package names
  { $APT install --no-install-recommends $missing >$aptlog 2>&1 ||
    { $APT update >>$aptlog 2>&1 && $APT install --no-install-recommends $missing >>$aptlog 2>&1; }; } ||
    { tail -30 $aptlog >&2; log "apt-get install failed (log: $aptlog)"; exit 1; }
fi

# docker-registry (test/managed: the source of `docker plugin upgrade`)
# would start a service on :5000, Keystone's port: install it with
# services forbidden; the test runs its own on 127.0.0.1.
if ! dpkg-query -W -f='${Status}\n' docker-registry 2>/dev/null | grep -q '^install ok installed$'; then
  log "installing docker-registry"
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  rc=0
  $APT install --no-install-recommends docker-registry >/tmp/blockvol-test-apt.log 2>&1 ||
    { $APT update >>/tmp/blockvol-test-apt.log 2>&1 && $APT install --no-install-recommends docker-registry >>/tmp/blockvol-test-apt.log 2>&1; } || rc=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || { tail -30 /tmp/blockvol-test-apt.log >&2; log "apt-get install docker-registry failed"; exit 1; }
fi

test/vm/setup.sh
test/systemd/setup.sh
test/openstack/setup.sh setup
