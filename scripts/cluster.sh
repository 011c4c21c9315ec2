#!/usr/bin/env bash
# The embedded PostgreSQL 15 cluster for `make run`: created once in .local/pg (git-ignored),
# pg_cron preloaded, listening on 127.0.0.1 only.
#   scripts/cluster.sh start|stop|status|url
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGPORT=${PGPORT:-54329}
DBNAME=${DBNAME:-booking}
base=${PG_BASE:-$root/.local/pg}
data=$base/data
pgrun=$root/scripts/pgrun
superuser=postgres

# As root the server runs as 'postgres', which must be able to reach the folder.
if [[ $(id -u) -eq 0 && -z ${PG_BASE:-} ]]; then
  if ! setpriv --reuid=postgres --regid="$(id -g postgres)" --init-groups -- test -x "$root"; then
    base=/var/tmp/booking-core-$(printf '%s' "$root" | sha256sum | cut -c1-12)/pg
    data=$base/data
  fi
fi

url() { echo "postgresql://$superuser@127.0.0.1:$PGPORT/$DBNAME"; }

running() { "$pgrun" pg_ctl -D "$data" status >/dev/null 2>&1; }

start() {
  mkdir -p "$base"
  if [[ ! -f $data/PG_VERSION ]]; then
    echo "creating cluster in $data"
    "$pgrun" initdb -D "$data" -U "$superuser" -A trust --no-instructions -E UTF8 --locale=C.UTF-8 >"$base/initdb.log"
    cat >>"$data/postgresql.conf" <<CONF
# booking-core embedded cluster
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = ''
shared_preload_libraries = 'pg_cron'
cron.database_name = '$DBNAME'
cron.use_background_workers = on
max_worker_processes = 16
max_connections = 200
log_min_messages = warning
CONF
  fi
  if running; then
    echo "cluster already running on 127.0.0.1:$PGPORT"
  else
    "$pgrun" pg_ctl -D "$data" -l "$base/server.log" -w -t 60 start >/dev/null
    echo "cluster started on 127.0.0.1:$PGPORT (log: $base/server.log)"
  fi
  if ! "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PGPORT" -U "$superuser" -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$DBNAME'" | grep -q 1; then
    "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PGPORT" -U "$superuser" -d postgres -c "CREATE DATABASE $DBNAME"
  fi
}

stop() {
  if running; then
    "$pgrun" pg_ctl -D "$data" -m fast -w stop >/dev/null
    echo "cluster stopped"
  else
    echo "cluster not running"
  fi
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running: $(url)"; else echo "stopped"; exit 3; fi ;;
  url) url ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
