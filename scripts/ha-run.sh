#!/usr/bin/env bash
# `make ha-run`: the Patroni formation (scripts/ha.sh), migrations and cron schedules applied
# on its primary, then the shim on HOST:PORT with a DATABASE_URL naming every node.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
state=${RUN_STATE_DIR:-$root/.local}
mkdir -p "$state"

scripts/ha.sh start
admin_url=$(scripts/ha.sh url)
# libpq (psql) follows target_session_attrs=read-write to the primary, whatever its port.
sql/migrate.sh "$admin_url"

# The shim's login, holding its duty's role only.
psql "$admin_url" -X -q -v ON_ERROR_STOP=1 <<'SQL'
SELECT 'CREATE ROLE shim_login LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shim_login') \gexec
GRANT booking_shim TO shim_login;
SQL
secret_file=$state/webhook-secret
if [[ ! -s $secret_file ]]; then
  (umask 077 && printf 'whsec_%s\n' "$(openssl rand -hex 24)" > "$secret_file")
fi
export STRIPE_WEBHOOK_SECRET
STRIPE_WEBHOOK_SECRET=$(cat "$secret_file")
export DATABASE_URL=${admin_url/postgres@/shim_login@}

cat <<MSG

booking-core is running on a high-availability formation.
  shim:      http://$HOST:$PORT   (GET /healthz, GET /readyz, POST /webhooks/stripe)
  database:  psql "$admin_url"
             (every node in one URL: libpq keeps the one that accepts writes)
  webhook secret: in $secret_file (never printed)

Try a failover, in another terminal:
  scripts/ha.sh status                  # which node is the primary, which the synchronous standby
  scripts/send-test-event.sh evt_1      # answered by the primary
  scripts/ha.sh kill-primary            # kill -9 of the primary's postmaster
  scripts/send-test-event.sh evt_2      # 503 for a few seconds, then answered by the promoted node
  scripts/ha.sh status                  # the old primary is back as a standby
  psql "$admin_url" -c 'TABLE ops.cron_jobs'   # the cron jobs run on the new primary (within a minute)

Ctrl-C stops the shim; 'make ha-stop' stops the formation.

MSG
exec .venv/bin/python -m pyshim serve --host "$HOST" --port "$PORT" --no-access-log
