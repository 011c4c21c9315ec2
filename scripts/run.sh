#!/usr/bin/env bash
# `make run`: the embedded cluster, migrations and cron schedules, then the shim on HOST:PORT.
set -euo pipefail
source "$(dirname "$0")/lib/serve-common.sh"

scripts/cluster.sh start
admin_url=$(scripts/cluster.sh url)
sql/migrate.sh "$admin_url"

# The shim runs as shim_login; app_login and worker_login are there to try an application
# server and the worker (`.venv/bin/python -m pyshim worker`) against this cluster.
create_logins "$admin_url" shim_login:booking_shim app_login:booking_app worker_login:booking_worker \
  ops_login:booking_ops
use_webhook_secret
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
serve_shim
