#!/usr/bin/env bash
# The high-availability formation for `make ha-run` and the failover tests: one etcd and three
# PostgreSQL 15 nodes managed by Patroni (Debian `patroni`, `etcd-server`), a primary and two
# standbys of which one is synchronous (synchronous_mode_strict: no commit is acknowledged
# with a single copy, even after a standby is lost). Every node listens on 127.0.0.1, each on
# its own port, with pg_cron preloaded. Data in .local/ha (git-ignored) or HA_BASE.
#   scripts/ha.sh start|stop|status|url|primary|kill-primary
# kill-primary: SIGKILL to the primary's postmaster (a crash; Patroni promotes the standby).
# Ports: HA_PG_PORTS (three, comma-separated), HA_REST_PORTS (three), HA_ETCD_PORTS (client,peer).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
DBNAME=${DBNAME:-booking}
IFS=, read -r -a pg_ports <<<"${HA_PG_PORTS:-55431,55432,55433}"
IFS=, read -r -a rest_ports <<<"${HA_REST_PORTS:-58431,58432,58433}"
IFS=, read -r etcd_port etcd_peer_port <<<"${HA_ETCD_PORTS:-52379,52380}"
base=${HA_BASE:-$root/.local/ha}
superuser=postgres
runas=postgres
nodes=(1 2 3)
START_TIMEOUT_S=${HA_START_TIMEOUT_S:-90}

# As root the servers run as 'postgres', which must be able to reach the folder.
if [[ $(id -u) -eq 0 && -z ${HA_BASE:-} ]]; then
  if ! setpriv --reuid=$runas --regid="$(id -g $runas)" --init-groups -- test -x "$root"; then
    base=/var/tmp/booking-core-$(printf '%s' "$root" | sha256sum | cut -c1-12)/ha
  fi
fi

# Runs a program as 'postgres' when we are root (Patroni starts postgres, which refuses root).
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    setpriv --reuid=$runas --regid="$(id -g $runas)" --init-groups -- "$@"
  else
    "$@"
  fi
}

# The same in place of the calling (background) subshell, so that $! is the program's pid;
# in a session of its own, so that a Ctrl-C in the terminal does not reach it; from the
# formation's folder, as the caller's (a clone under /root in CI) may be closed to 'postgres'.
exec_as_pg() {
  cd "$base"
  if [[ $(id -u) -eq 0 ]]; then
    exec setpriv --reuid=$runas --regid="$(id -g $runas)" --init-groups -- setsid "$@"
  else
    exec setsid "$@"
  fi
}

hosts() {
  local out=() p
  for p in "${pg_ports[@]}"; do out+=("127.0.0.1:$p"); done
  (IFS=,; echo "${out[*]}")
}

# Every node in one URL: libpq tries them in order and keeps the one that accepts writes.
url() { echo "postgresql://$superuser@$(hosts)/$DBNAME?target_session_attrs=read-write&connect_timeout=2"; }

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The members as Patroni's REST API reports them (any node answers for the whole cluster).
cluster_json() {
  local p
  for p in "${rest_ports[@]}"; do
    curl -sf --max-time 2 "http://127.0.0.1:$p/cluster" && return 0
  done
  return 1
}

# "<primary port> <sync standby port>" once both are running and streaming, else nothing.
formation_ready() {
  cluster_json 2>/dev/null | python3 -c '
import json, sys
members = json.load(sys.stdin)["members"]
leader = [m["port"] for m in members if m["role"] == "leader" and m["state"] == "running"]
sync = [m["port"] for m in members if m["role"] == "sync_standby" and m["state"] in ("streaming", "running")]
if leader and sync:
    print(leader[0], sync[0])
' 2>/dev/null
}

write_node_config() {
  local n=$1 dir=$base/node$1 port=${pg_ports[$(($1 - 1))]} rest=${rest_ports[$(($1 - 1))]}
  mkdir -p "$dir"
  cat >"$dir/patroni.yml" <<YAML
scope: booking-core
name: node$n
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$rest
  connect_address: 127.0.0.1:$rest
etcd3:
  hosts: 127.0.0.1:$etcd_port
bootstrap:
  dcs:
    # Seconds. loop_wait: how often each node looks at the cluster. ttl: how long a leader
    # that stopped answering (its Patroni gone) keeps the lock; a crashed postmaster under
    # a live Patroni is handled at once (primary_start_timeout: 0 fails over rather than
    # restarting the old primary in place).
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    primary_start_timeout: 0
    # One synchronous standby out of two; strict: with no standby left, commits wait
    # rather than being acknowledged with one copy.
    synchronous_mode: true
    synchronous_mode_strict: true
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      # No replication slots: after a promotion the new primary creates its slots only when
      # Patroni has finished promoting it, and until then no standby can stream from it, so
      # in strict mode no commit could complete: measured, 4.5 s more without a primary.
      # wal_keep_size keeps the WAL a standby that falls behind needs instead (beyond 1 GB
      # it must be cloned again: patronictl reinit).
      use_slots: false
      parameters:
        max_connections: 200
        # pg_cron's launcher, one background worker per running job, Patroni's own needs.
        max_worker_processes: 32
        wal_log_hints: 'on'
        wal_keep_size: 1GB
        shared_preload_libraries: pg_cron
        cron.database_name: $DBNAME
        # Jobs run in background workers, not over a connection to the host and port that
        # cron.job stored when they were scheduled (which is the old primary after a failover).
        cron.use_background_workers: 'on'
        log_min_messages: warning
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
postgresql:
  listen: 127.0.0.1:$port
  connect_address: 127.0.0.1:$port
  data_dir: $dir/data
  bin_dir: $PGBIN
  pgpass: $dir/pgpass
  authentication:
    superuser:
      username: $superuser
    replication:
      username: replicator
    rewind:
      username: $superuser
  parameters:
    unix_socket_directories: $dir
  pg_hba:
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
YAML
}

start() {
  mkdir -p "$base"
  if [[ $(id -u) -eq 0 ]]; then chown "$runas": "$base"; fi
  if alive "$base/etcd.pid"; then
    echo "etcd already running on 127.0.0.1:$etcd_port"
  else
    as_pg mkdir -p "$base/etcd"
    # Single-member etcd: the formation's lock and configuration, on 127.0.0.1 only.
    exec_as_pg etcd --name ha --data-dir "$base/etcd" \
      --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
      --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
      --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
      --initial-cluster "ha=http://127.0.0.1:$etcd_peer_port" --log-level warn --logger zap \
      >"$base/etcd.log" 2>&1 </dev/null &
    echo $! >"$base/etcd.pid"
    for _ in $(seq 100); do
      curl -sf --max-time 1 "http://127.0.0.1:$etcd_port/version" >/dev/null && break
      sleep 0.1
    done
    curl -sf --max-time 1 "http://127.0.0.1:$etcd_port/version" >/dev/null || {
      echo "etcd did not start; see $base/etcd.log" >&2; exit 1; }
  fi
  # A new formation: the first node bootstraps it and the others clone it once it exists.
  # An existing one: all nodes at once (the node allowed to lead may be any of them).
  local fresh=""
  [[ -f $base/node1/data/PG_VERSION ]] || fresh=1
  for n in "${nodes[@]}"; do
    if alive "$base/node$n/patroni.pid"; then continue; fi
    write_node_config "$n"
    if [[ $(id -u) -eq 0 ]]; then chown -R "$runas": "$base/node$n"; fi
    exec_as_pg patroni "$base/node$n/patroni.yml" >>"$base/node$n/patroni.log" 2>&1 </dev/null &
    echo $! >"$base/node$n/patroni.pid"
    if [[ $n == 1 && -n $fresh ]]; then
      for _ in $(seq $((START_TIMEOUT_S * 5))); do
        cluster_json 2>/dev/null | grep -q '"role": *"leader"' && break
        sleep 0.2
      done
    fi
  done
  local ready=""
  for _ in $(seq $((START_TIMEOUT_S * 5))); do
    ready=$(formation_ready) && [[ -n $ready ]] && break
    sleep 0.2
  done
  if [[ -z $ready ]]; then
    echo "no primary with a synchronous standby within ${START_TIMEOUT_S}s; see $base/node*/patroni.log" >&2
    exit 1
  fi
  local primary=${ready%% *}
  if ! "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$primary" -U "$superuser" -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$DBNAME'" | grep -q 1; then
    "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$primary" -U "$superuser" -d postgres -c "CREATE DATABASE $DBNAME"
  fi
  echo "formation running: primary 127.0.0.1:$primary, synchronous standby 127.0.0.1:${ready##* } (data: $base)"
}

# Patroni stops its postgres when it gets SIGTERM; a node whose Patroni is gone (or which
# does not stop in time) has its postmaster stopped by pid.
stop() {
  local n pidfile pid any=""
  for n in "${nodes[@]}"; do
    pidfile=$base/node$n/patroni.pid
    if alive "$pidfile"; then kill -TERM "$(cat "$pidfile")"; any=1; fi
  done
  for n in "${nodes[@]}"; do
    pidfile=$base/node$n/patroni.pid
    for _ in $(seq 150); do alive "$pidfile" || break; sleep 0.2; done
    if alive "$pidfile"; then kill -KILL "$(cat "$pidfile")"; fi
    rm -f "$pidfile"
    if [[ -s $base/node$n/data/postmaster.pid ]]; then
      pid=$(head -1 "$base/node$n/data/postmaster.pid")
      if kill -0 "$pid" 2>/dev/null; then
        kill -QUIT "$pid"; any=1
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      fi
    fi
  done
  if alive "$base/etcd.pid"; then
    kill -TERM "$(cat "$base/etcd.pid")"; any=1
    for _ in $(seq 50); do alive "$base/etcd.pid" || break; sleep 0.1; done
    alive "$base/etcd.pid" && kill -KILL "$(cat "$base/etcd.pid")"
  fi
  rm -f "$base/etcd.pid"
  if [[ -n $any ]]; then echo "formation stopped"; else echo "formation not running"; fi
}

status() {
  local json
  if ! json=$(cluster_json 2>/dev/null); then echo "stopped"; return 3; fi
  python3 -c '
import json, sys
for m in json.loads(sys.argv[1])["members"]:
    print("{}  127.0.0.1:{}  {:<13} {:<10} timeline {}  lag {}".format(
        m["name"], m["port"], m["role"], m["state"], m.get("timeline", "?"), m.get("lag", 0)))
' "$json"
  echo "url: $(url)"
}

kill_primary() {
  local ready port n pid
  ready=$(formation_ready) && [[ -n $ready ]] || { echo "no primary with a synchronous standby now" >&2; exit 1; }
  port=${ready%% *}
  for n in "${nodes[@]}"; do
    if [[ ${pg_ports[$((n - 1))]} == "$port" ]]; then
      pid=$(head -1 "$base/node$n/data/postmaster.pid")
      kill -KILL "$pid"
      echo "killed the postmaster of node$n (127.0.0.1:$port, pid $pid); Patroni promotes 127.0.0.1:${ready##* }"
    fi
  done
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) url ;;
  primary) ready=$(formation_ready) && [[ -n $ready ]] && echo "${ready%% *}" ;;
  kill-primary) kill_primary ;;
  *) echo "usage: $0 start|stop|status|url|primary|kill-primary" >&2; exit 2 ;;
esac
