#!/bin/bash
# blockvol test infrastructure: a real Keystone + Cinder on 127.0.0.1 only,
# from Debian's own packages, with a file-backed Cinder volume driver that
# exports through Cinder's TgtAdm helper to a real tgtd at 127.0.0.1:3260.
# Not part of the product; used by the tests of backends/cinder.
#
# Usage: setup.sh [setup|install|init|start|stop|status]
#   setup   (default; what test/setup.sh calls) install the packages if missing,
#           initialise once (databases, Keystone bootstrap and catalog, Cinder
#           schema, volume types and quotas; this starts the services), then stop
#           them again: the tests start and stop them (TestMain).
#   install apt-get install the packages (a no-op when they are there)
#   init    first-time initialisation; leaves everything running
#   start   start whatever is not running yet (~15 s), and wait until usable
#   stop    stop every daemon this script started, by PID
#   status  list the listening sockets of the stack
# State, configs and logs live in $OSCLOUD (default /var/lib/blockvol-test/openstack).
# Credentials: admin/secret (project admin), demo/demopass (project demo,
# role member), cinder/cinderpass (project service, roles admin+service);
# Keystone http://127.0.0.1:5000/v3; volume types "file" and "fast"; volume
# quotas of 100 volumes, 100 snapshots, 100 backups, 2000 GiB (cinder_setup.py).
set -u
# One caller at a time: two inits at once race inside `cinder-manage db sync`
# ("Table 'services' already exists"), and a stop during a start leaves
# orphans. flock(1) holds the lock until this script exits; the daemons do
# not inherit it (every descriptor above stderr is closed below).
if [ "${1:-setup}" != status ] && [ -z "${BLOCKVOL_OSCLOUD_LOCKED:-}" ]; then
  export BLOCKVOL_OSCLOUD_LOCKED=1
  mkdir -p /run/lock
  exec flock -w 900 /run/lock/blockvol-openstack.lock bash "$0" "$@"
fi
# Daemons must not inherit our caller's pipes (a CI step or `go test` would
# otherwise wait for them): close every inherited descriptor above stderr.
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
exec </dev/null

HERE=$(cd "$(dirname "$0")" && pwd)
B=${OSCLOUD:-/var/lib/blockvol-test/openstack}
C=$B/cinder/cinder.conf
MY="mariadb --defaults-file=$B/mariadb/my.cnf -uroot"
PY=/usr/bin/python3
# Bump when init learns something new: an older initialised state is
# brought up to date by re-running the (idempotent) Keystone and Cinder setup
# at the next start (3: cinder_setup.py raises the projects' quotas).
INIT_VERSION=3
PACKAGES="keystone cinder-api cinder-scheduler cinder-volume tgt rabbitmq-server mariadb-server libiscsi-bin curl iproute2"

now() { date +%s%N; }
since() { local d=$(( ($(now) - $1) / 1000000 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }
waitcmd() { local n=$1; shift; for _ in $(seq 1 $((n * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done; return 1; }
http_ok() { curl -s -m 2 -o /dev/null -w '%{http_code}' "$1" | grep -qE '^(200|300)$'; }
listening() { ss -ltnH "sport = :$1" | grep -q .; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

installed() { for p in $PACKAGES; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || return 1; done; }

do_install() {
  installed && { echo "packages present"; return 0; }
  local t=$(now) made_policy=
  # Debian's packages would start their own services (on 0.0.0.0, as
  # system users): forbid that for the duration of the install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local log=/tmp/blockvol-openstack-apt.log apt="apt-get -y -q -o DPkg::Lock::Timeout=600 install --no-install-recommends $PACKAGES"
  $apt >$log 2>&1 || { apt-get -q -o DPkg::Lock::Timeout=600 update >>$log 2>&1 && $apt >>$log 2>&1; }
  local rc=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || { tail -40 $log; echo "package install failed (log: $log)"; return 1; }
  echo "packages installed in $(since $t)s"
}

# render copies the templates into $B with @OSCLOUD@ replaced (every time:
# a new checkout of the repository may carry new configs).
render() {
  mkdir -p $B/{keystone,cinder,mariadb,rabbitmq,tgt,drivers}
  local s=$HERE/conf
  sed "s|@OSCLOUD@|$B|g" $s/keystone.conf >$B/keystone/keystone.conf
  sed "s|@OSCLOUD@|$B|g" $s/uwsgi.ini >$B/keystone/uwsgi.ini
  sed "s|@OSCLOUD@|$B|g" $s/cinder.conf >$B/cinder/cinder.conf
  sed "s|@OSCLOUD@|$B|g" $s/privsep-wrap.sh >$B/cinder/privsep-wrap.sh && chmod 755 $B/cinder/privsep-wrap.sh
  sed "s|@OSCLOUD@|$B|g" $s/my.cnf >$B/mariadb/my.cnf
  sed "s|@OSCLOUD@|$B|g" $s/rabbitmq-env.sh >$B/rabbitmq/env.sh
  cp $s/rabbitmq.conf $B/rabbitmq/rabbitmq.conf
  cp $HERE/drivers/oscloud_filedriver.py $B/drivers/
}

start_mariadb() {
  listening 3306 && return 0
  mkdir -p $B/mariadb/{data,log}
  [ -d $B/mariadb/data/mysql ] || mariadb-install-db --defaults-file=$B/mariadb/my.cnf --auth-root-authentication-method=normal >$B/mariadb/install-db.log 2>&1
  (setsid mariadbd --defaults-file=$B/mariadb/my.cnf >$B/mariadb/mysqld.out 2>&1 &)
}
start_rabbit() {
  listening 5672 && return 0
  mkdir -p $B/rabbitmq/{mnesia,log}
  # RabbitMQ starts Erlang's epmd unless one runs: stop only an epmd we started.
  if listening 4369; then rm -f $B/rabbitmq/epmd.ours; else touch $B/rabbitmq/epmd.ours; fi
  (. $B/rabbitmq/env.sh; setsid /usr/lib/rabbitmq/bin/rabbitmq-server >$B/rabbitmq/server.out 2>&1 &)
}
rabbit_ready() { (. $B/rabbitmq/env.sh; /usr/lib/rabbitmq/bin/rabbitmqctl -q await_startup --timeout 2); }
start_tgtd() {
  # Cinder's TgtAdm helper talks to the tgtd of the default control port 0.
  alive $B/tgt/tgtd.pid && return 0
  listening 3260 && { echo "port 3260 is taken by another program; Cinder's tgtd needs it"; return 1; }
  (setsid tgtd -f --iscsi portal=127.0.0.1:3260 >$B/tgt/tgtd.log 2>&1 & echo $! >$B/tgt/tgtd.pid)
}
start_keystone() {
  listening 5000 && return 0
  mkdir -p $B/keystone/log
  (setsid uwsgi --ini $B/keystone/uwsgi.ini >/dev/null 2>&1 &)
}
start_cinder() {
  mkdir -p $B/cinder/{state,log,lock} $B/volumes
  cd $B/cinder || return 1
  alive api.pid || (setsid cinder-api --config-file $C >api.out 2>&1 & echo $! >api.pid)
  alive scheduler.pid || (setsid cinder-scheduler --config-file $C >scheduler.out 2>&1 & echo $! >scheduler.pid)
  alive volume.pid || (PYTHONPATH=$B/drivers setsid cinder-volume --config-file $C >volume.out 2>&1 & echo $! >volume.pid)
}
services_up() { [ "$($MY -N -e "select count(*) from cinder.services where deleted=0 and disabled=0 and \`binary\` in ('cinder-scheduler','cinder-volume') and updated_at > utc_timestamp() - interval 20 second" 2>/dev/null)" -ge 2 ]; }

fail() { echo "$1 (logs under $B)"; exit 1; }

do_start() {
  local t=$(now)
  [ -f $B/.initialised ] || fail "not initialised: run $0 init first"
  render
  start_mariadb; start_rabbit; start_tgtd || exit 1
  waitcmd 30 $MY -e 'select 1' || fail "mariadb failed"; echo "mariadb up $(since $t)s"
  start_keystone; waitcmd 60 http_ok http://127.0.0.1:5000/v3/ || fail "keystone failed"; echo "keystone up $(since $t)s"
  waitcmd 60 rabbit_ready || fail "rabbitmq failed"; echo "rabbitmq up $(since $t)s"
  start_cinder; waitcmd 90 http_ok http://127.0.0.1:8776/ || fail "cinder-api failed"; echo "cinder-api up $(since $t)s"
  if [ "$(cat $B/.initialised)" != "$INIT_VERSION" ]; then
    $PY $HERE/keystone_setup.py && $PY $HERE/cinder_setup.py || fail "keystone/cinder setup failed"
    echo $INIT_VERSION >$B/.initialised
  fi
  waitcmd 90 services_up || fail "cinder-scheduler/cinder-volume not up"; echo "cinder-scheduler+volume up $(since $t)s"
}

do_init() {
  local t=$(now)
  render
  start_mariadb; start_rabbit; start_tgtd || exit 1
  waitcmd 30 $MY -e 'select 1' || fail "mariadb failed"
  $MY -e "CREATE DATABASE IF NOT EXISTS keystone; CREATE DATABASE IF NOT EXISTS cinder; CREATE USER IF NOT EXISTS 'os'@'127.0.0.1' IDENTIFIED BY 'ospass'; GRANT ALL ON keystone.* TO 'os'@'127.0.0.1'; GRANT ALL ON cinder.* TO 'os'@'127.0.0.1';" || fail "mariadb setup failed"
  mkdir -p $B/keystone/{fernet-keys,credential-keys,log} $B/cinder/{state,log,lock} $B/volumes
  local KM="keystone-manage --config-file $B/keystone/keystone.conf"
  { $KM db_sync && $KM fernet_setup --keystone-user root --keystone-group root && $KM credential_setup --keystone-user root --keystone-group root &&
    $KM bootstrap --bootstrap-password secret --bootstrap-username admin --bootstrap-project-name admin --bootstrap-role-name admin \
      --bootstrap-service-name keystone --bootstrap-region-id RegionOne --bootstrap-admin-url http://127.0.0.1:5000/v3/ \
      --bootstrap-public-url http://127.0.0.1:5000/v3/ --bootstrap-internal-url http://127.0.0.1:5000/v3/; } >$B/keystone/bootstrap.out 2>&1 || fail "keystone bootstrap failed"
  # A sync interrupted earlier leaves tables without alembic's record of
  # them: start that schema again from an empty database, once.
  cinder-manage --config-file $C db sync >$B/cinder/dbsync.out 2>&1 ||
    { $MY -e "DROP DATABASE IF EXISTS cinder; CREATE DATABASE cinder;" &&
      cinder-manage --config-file $C db sync >>$B/cinder/dbsync.out 2>&1; } || fail "cinder db sync failed"
  start_keystone; waitcmd 60 http_ok http://127.0.0.1:5000/v3/ || fail "keystone failed"
  $PY $HERE/keystone_setup.py || fail "keystone setup failed"
  waitcmd 60 rabbit_ready || fail "rabbitmq failed"
  start_cinder; waitcmd 90 http_ok http://127.0.0.1:8776/ || fail "cinder-api failed"
  $PY $HERE/cinder_setup.py || fail "cinder setup (volume types, quotas) failed"
  waitcmd 90 services_up || fail "cinder services not up"
  echo $INIT_VERSION >$B/.initialised
  echo "init+start done in $(since $t)s"
}

do_stop() {
  local s f p
  for s in volume scheduler api; do f=$B/cinder/$s.pid; alive $f && kill -TERM "$(cat $f)"; done
  for _ in $(seq 1 40); do
    p=0; for s in volume scheduler api; do alive $B/cinder/$s.pid && p=1; done
    [ $p = 0 ] && break; sleep 0.25
  done
  for s in volume scheduler api; do f=$B/cinder/$s.pid; alive $f && kill -KILL "$(cat $f)"; rm -f $f; done
  if [ -f $B/cinder/privsep.pids ]; then for p in $(cat $B/cinder/privsep.pids); do kill -TERM $p 2>/dev/null; done; rm -f $B/cinder/privsep.pids; fi
  alive $B/keystone/uwsgi.pid && kill -INT "$(cat $B/keystone/uwsgi.pid)"
  # tgtd ignores SIGTERM: ask it to exit through its control socket, then SIGKILL by pid.
  if alive $B/tgt/tgtd.pid; then
    tgtadm --op delete --mode system >/dev/null 2>&1
    for _ in $(seq 1 20); do alive $B/tgt/tgtd.pid || break; sleep 0.1; done
    alive $B/tgt/tgtd.pid && kill -KILL "$(cat $B/tgt/tgtd.pid)"
  fi
  rm -f $B/tgt/tgtd.pid
  [ -f $B/rabbitmq/env.sh ] && (. $B/rabbitmq/env.sh; /usr/lib/rabbitmq/bin/rabbitmqctl -q stop >/dev/null 2>&1)
  if [ -f $B/rabbitmq/epmd.ours ]; then
    p=$(ss -ltnpH 'sport = :4369' | grep -o 'epmd",pid=[0-9]*' | head -1 | cut -d= -f2); [ -n "$p" ] && kill -TERM $p
    rm -f $B/rabbitmq/epmd.ours
  fi
  alive $B/mariadb/mysqld.pid && kill -TERM "$(cat $B/mariadb/mysqld.pid)"
  # Wait until every process of the stack is gone (their command lines name
  # files under $B): cinder-volume's worker and RabbitMQ's VM exit a little
  # after their parents.
  for _ in $(seq 1 80); do pgrep -f "$B/" >/dev/null || break; sleep 0.25; done
  left=$(pgrep -f "$B/" | tr '\n' ' ')
  [ -n "$left" ] && { echo "still running after 20s: $left"; return 1; }
  echo stopped
}

case "${1:-setup}" in
setup)
  t=$(now)
  do_install || exit 1
  if [ -f $B/.initialised ]; then echo "already initialised ($B)"
  else (do_init) || { do_stop; exit 1; }; do_stop; fi
  echo "openstack test services ready to start ($(since $t)s)" ;;
install) do_install ;;
init)    do_install && do_init ;;
start)   do_start ;;
stop)    do_stop ;;
status)  ss -ltnp | grep -E '127.0.0.1:(5000|8776|5672|4369|25672|3260|3306)\b' ;;
*) echo "usage: $0 [setup|install|init|start|stop|status]"; exit 2 ;;
esac
