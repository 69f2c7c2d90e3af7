#!/bin/sh
# test/systemd's scenario, run by bvsd-driver.service at every boot of the
# guest (systemd as PID 1, Docker, no network). It reports one line per
# step on the second serial port, which the host test reads:
#   BVSD <step> ok [detail]     BVSD <step> FAIL <why>     BVSD done
# The phase survives the reboot in /var/lib/bvsd/phase.
#
# The test disk (mounted at /run/bvsd, read-only) holds the static
# blockvol, install.sh, systemd/, docs/ and config.example.toml.
SRC=/run/bvsd
PHASE=/var/lib/bvsd/phase
REPORT=/dev/ttyS1
VOL=bvsd1
IMG=bvsd/busybox
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { echo "BVSD $*" >$REPORT; }
ok() { say "$STEP ok $*"; }
fail() {
  say "$STEP FAIL $*"
  journalctl -b --no-pager -u blockvol.service -u blockvol.socket -u docker.service 2>&1 | tail -40 | sed 's/^/BVSD log /' >$REPORT
  say "done"
  systemctl poweroff
  exit 1
}
step() { STEP=$1; echo "$1 $(up)" >/run/bvsd.step; }
up() { awk '{print $1}' /proc/uptime; }

# waitfor SECONDS CMD...: until CMD succeeds, tried every 0.2 s for at
# most SECONDS of uptime (a count of tries is no bound: one docker call
# takes seconds under emulation).
waitfor() {
  end=$(( ${1} + $(cut -d. -f1 /proc/uptime) )); shift
  while [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  "$@" >/dev/null 2>&1
}
running() { [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
content() { docker exec bvsdc /bin/busybox cat /data/f 2>/dev/null; }
mounted() { grep -q " /var/lib/blockvol/mounts/$1 " /proc/self/mountinfo; }

# watchdog: every 60 s, what the step in progress is and what runs; a
# step that hangs then leaves its processes and the units' states in the
# report (the host's deadline ends the run).
watchdog() {
  while sleep 60; do
    say "log watchdog: step $(cat /run/bvsd.step 2>/dev/null), uptime $(up)"
    for u in blockvol.socket blockvol.service docker.service containerd.service; do
      say "log watchdog: $u $(systemctl is-active $u 2>&1)"
    done
    ps -eo pid,ppid,stat,wchan:24,etimes,args 2>/dev/null |
      grep -E 'docker|containerd|blockvol|systemctl|timeout|losetup|mount|mkfs|e2fsck|busybox|journalctl' |
      grep -v grep | cut -c1-200 | sed 's/^/BVSD log watchdog: /' >$REPORT
  done
}
watchdog &

mkdir -p /var/lib/bvsd
phase=$(cat $PHASE 2>/dev/null || echo first)
say "phase $phase uptime $(up)"

if [ "$phase" = first ]; then
  step boot
  [ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm)"
  state=$(systemctl is-system-running 2>&1)
  ok "PID 1 systemd, system $state, uptime $(up)"

  step install
  out=$("$SRC/install.sh" --binary "$SRC/blockvol" 2>&1) || fail "install.sh: $(echo "$out" | tail -3 | tr '\n' ' ')"
  systemctl is-active --quiet blockvol.socket || fail "blockvol.socket not active after install.sh"
  systemctl is-enabled --quiet blockvol.service || fail "blockvol.service not enabled"
  [ "$(systemctl is-active blockvol.service)" = inactive ] || fail "blockvol.service started before any call: $(systemctl is-active blockvol.service)"
  ok "socket listening, service waiting for the first call, uptime $(up)"

  step docker-ordered-after-socket
  systemctl show -p After docker.service | grep -q blockvol.socket || fail "docker.service is not ordered after blockvol.socket: $(systemctl show -p After docker.service)"
  ok

  step first-call-activates
  docker volume create -d blockvol -o size=256M -o fstype=ext4 $VOL >/dev/null 2>&1 || fail "docker volume create: $(docker volume create -d blockvol $VOL 2>&1)"
  [ "$(systemctl is-active blockvol.service)" = active ] || fail "blockvol.service is $(systemctl is-active blockvol.service) after the first call"
  journalctl -b --no-pager -u blockvol.service | grep -q 'activated=true' || fail "blockvol did not serve systemd's socket"
  ok "uptime $(up)"

  step write
  mkdir -p /tmp/img/bin && cp /bin/busybox /tmp/img/bin/ && tar -C /tmp/img -c . | docker import - $IMG >/dev/null || fail "docker import"
  # The container writes its file on its first run only: after the reboot
  # and after a stop/start, what it reads is what the volume kept.
  docker run -d --name bvsdc --restart always --network none -v $VOL:/data $IMG \
    /bin/busybox sh -c '[ -e /data/f ] || { echo hello-bvsd > /data/f; /bin/busybox sync; }; exec /bin/busybox sleep 100000' >/dev/null 2>&1 ||
    fail "docker run: $(docker logs bvsdc 2>&1 | tail -2)"
  waitfor 60 sh -c '[ "$(docker exec bvsdc /bin/busybox cat /data/f)" = hello-bvsd ]' || fail "the container did not write its file"
  mounted $VOL || fail "no mount of $VOL on the host"
  ok "volume mounted and written, uptime $(up)"

  echo second >$PHASE
  sync
  say "rebooting with $VOL in use"
  systemctl reboot
  exit 0
fi

if [ "$phase" = second ]; then
  step reboot-socket-first
  a=$(systemctl show -p ActiveEnterTimestampMonotonic --value blockvol.socket)
  d=$(systemctl show -p ActiveEnterTimestampMonotonic --value docker.service)
  [ "$a" -gt 0 ] && [ "$a" -lt "$d" ] || fail "blockvol.socket active at $a, docker.service at $d (µs since boot)"
  ok "socket at $((a / 1000)) ms, docker at $((d / 1000)) ms"

  step reboot-volume-back
  waitfor 180 running bvsdc || fail "container not running after the reboot"
  waitfor 60 sh -c '[ "$(docker exec bvsdc /bin/busybox cat /data/f)" = hello-bvsd ]' || fail "after the reboot the volume holds '$(content)'"
  if journalctl -b --no-pager -u docker.service | grep -i 'plugin.*not found\|error looking up volume plugin' >/tmp/nf; then
    fail "dockerd did not find the plugin at boot: $(head -1 /tmp/nf)"
  fi
  ok "container restarted by Docker with its data, uptime $(up)"

  step stop-drains
  # A mkfs held at its start stands for a slow call in flight: a wrapper
  # (on the root disk: /run is noexec, and so is a bind from it)
  # bound over the real program (blockvol.service shares the host's mount
  # namespace), which runs a copy of it once released.
  real=$(readlink -f /usr/sbin/mkfs.ext4)
  mkdir -p /var/lib/bvsd/hook/real
  cp "$real" /var/lib/bvsd/hook/real/mkfs.ext4
  cat >/var/lib/bvsd/hook/mkfs.ext4 <<'EOF'
#!/bin/sh
touch /var/lib/bvsd/hook/started
n=0
while [ ! -e /var/lib/bvsd/hook/release ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
exec /var/lib/bvsd/hook/real/mkfs.ext4 "$@"
EOF
  chmod 755 /var/lib/bvsd/hook/mkfs.ext4
  mount --bind /var/lib/bvsd/hook/mkfs.ext4 "$real" || fail "bind the mkfs hook"
  docker volume create -d blockvol -o size=128M bvsd2 >/dev/null 2>&1 || fail "create bvsd2"
  (docker run --rm --network none -v bvsd2:/d $IMG /bin/busybox sh -c 'echo drained > /d/x && cat /d/x' >/tmp/run.out 2>&1; echo $? >/tmp/run.rc) &
  waitfor 120 test -e /var/lib/bvsd/hook/started || fail "the mount never reached mkfs"
  systemctl stop blockvol.service &
  stopper=$!
  waitfor 10 sh -c '[ "$(systemctl is-active blockvol.service)" = deactivating ]' || fail "stop did not start: $(systemctl is-active blockvol.service)"
  sleep 1
  [ "$(systemctl is-active blockvol.service)" = deactivating ] || fail "blockvol.service stopped with a call in flight: $(systemctl is-active blockvol.service)"
  touch /var/lib/bvsd/hook/release
  wait $stopper || fail "systemctl stop failed"
  waitfor 120 test -e /tmp/run.rc || fail "docker run never ended"
  [ "$(cat /tmp/run.rc)" = 0 ] && [ "$(cat /tmp/run.out)" = drained ] || fail "the call in flight failed: $(cat /tmp/run.out)"
  journalctl -b --no-pager -u blockvol.service | grep -q 'stopping: no new requests' || fail "no drain in blockvol's log"
  umount "$real"
  ok "stop waited for the mount in flight; the container ran"

  step restart-keeps-mounts
  running bvsdc || fail "bvsdc not running"
  mounted $VOL || fail "$VOL not mounted before the restart"
  # Bounded: a hang here was seen once (cause not found yet); fail with the
  # journal instead of waiting for the host's deadline.
  timeout 240 systemctl restart blockvol.service || fail "systemctl restart did not finish in 240 s"
  mounted $VOL || fail "$VOL unmounted by the restart"
  timeout 120 docker exec bvsdc /bin/busybox sh -c 'echo after-restart > /data/f' || fail "write after the restart"
  timeout 120 docker stop -t 1 bvsdc >/dev/null || fail "docker stop through the restarted service"
  timeout 120 docker start bvsdc >/dev/null || fail "docker start through the restarted service"
  waitfor 60 sh -c '[ "$(docker exec bvsdc /bin/busybox cat /data/f)" = after-restart ]' || fail "after stop/start the volume holds '$(content)'"
  ok

  step uninstall-keeps-data
  docker rm -f bvsdc >/dev/null 2>&1
  mounted $VOL && fail "$VOL still mounted after its container was removed"
  "$SRC/install.sh" --uninstall >/tmp/un.out 2>&1 || fail "install.sh --uninstall: $(tail -2 /tmp/un.out | tr '\n' ' ')"
  [ ! -e /usr/local/bin/blockvol ] || fail "binary left"
  [ ! -e /etc/systemd/system/blockvol.service ] && [ ! -e /etc/systemd/system/blockvol.socket ] || fail "units left"
  [ -f /etc/blockvol/config.toml ] || fail "config removed"
  [ -f /var/lib/blockvol/loop/$VOL.img ] || fail "volume image removed"
  "$SRC/install.sh" --binary "$SRC/blockvol" >/tmp/in.out 2>&1 || fail "install again: $(tail -2 /tmp/in.out | tr '\n' ' ')"
  out=$(docker run --rm --network none -v $VOL:/data $IMG /bin/busybox cat /data/f 2>&1)
  [ "$out" = after-restart ] || fail "after uninstall + install the volume holds '$out'"
  ok "data kept"

  step purge
  "$SRC/install.sh" --uninstall --purge >/tmp/pu.out 2>&1 || fail "install.sh --uninstall --purge: $(tail -2 /tmp/pu.out | tr '\n' ' ')"
  [ ! -e /etc/blockvol ] || fail "/etc/blockvol left"
  [ ! -e /var/lib/blockvol ] || fail "/var/lib/blockvol left: $(ls /var/lib/blockvol)"
  losetup -l -n | grep -q blockvol && fail "loop devices left: $(losetup -l -n)"
  ok

  echo finished >$PHASE
  say "done"
  sync
  systemctl poweroff
fi
