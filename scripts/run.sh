#!/usr/bin/env bash
# `make run`: the embedded cluster, migrations and cron schedules, then the shim on HOST:PORT.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
state=${RUN_STATE_DIR:-$root/.local}
mkdir -p "$state"

scripts/cluster.sh start
admin_url=$(scripts/cluster.sh url)
sql/migrate.sh "$admin_url"

# One login per duty, each holding only its role (CONTRACT.md, Roles): the shim runs as
# shim_login; app_login and worker_login are there to try an application server and the
# worker (`.venv/bin/python -m pyshim worker`) against this cluster.
psql "$admin_url" -X -q -v ON_ERROR_STOP=1 <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', login)
FROM (VALUES ('shim_login'), ('app_login'), ('worker_login'), ('ops_login')) AS l (login)
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = login) \gexec
GRANT booking_shim TO shim_login;
GRANT booking_app TO app_login;
GRANT booking_worker TO worker_login;
GRANT booking_ops TO ops_login;
SQL
secret_file=$state/webhook-secret
if [[ ! -s $secret_file ]]; then
  (umask 077 && printf 'whsec_%s\n' "$(openssl rand -hex 24)" > "$secret_file")
fi
export STRIPE_WEBHOOK_SECRET
STRIPE_WEBHOOK_SECRET=$(cat "$secret_file")
export DATABASE_URL=${admin_url/postgres@/shim_login@}
# The on-call console and /metrics (GET /ops/login takes the token), read as ops_login.
token_file=$state/ops-token
if [[ ! -s $token_file ]]; then
  (umask 077 && openssl rand -hex 32 > "$token_file")
fi
export OPS_TOKEN OPS_DATABASE_URL=${admin_url/postgres@/ops_login@}
OPS_TOKEN=${OPS_TOKEN:-$(cat "$token_file")}

cat <<MSG

booking-core is running.
  shim:      http://$HOST:$PORT   (GET /healthz, GET /readyz, POST /webhooks/stripe)
  database:  psql "$admin_url"   (or: make psql)
  logins:    shim_login (the shim), app_login (an application server), worker_login (the worker)
  webhook secret: in $secret_file (never printed)
  console:   http://$HOST:$PORT/ops/login and GET /metrics, token in $token_file (never printed)

Try it, in another terminal:
  scripts/send-test-event.sh            # a signed test event; run it twice: one stored row
  psql "$admin_url" -c 'TABLE ops.stripe_events'
  curl -s http://$HOST:$PORT/readyz

Ctrl-C stops the shim; 'make stop' stops the database cluster.

MSG
exec .venv/bin/python -m pyshim serve --host "$HOST" --port "$PORT" --no-access-log
