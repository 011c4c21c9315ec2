#!/usr/bin/env bash
# `make ha-run`: the Patroni formation (scripts/ha.sh), migrations and cron schedules applied
# on its primary, then the shim on HOST:PORT with a DATABASE_URL naming every node.
set -euo pipefail
source "$(dirname "$0")/lib/serve-common.sh"

scripts/ha.sh start
admin_url=$(scripts/ha.sh url)
# libpq (psql) follows target_session_attrs=read-write to the primary, whatever its port.
sql/migrate.sh "$admin_url"

create_logins "$admin_url" shim_login:booking_shim
use_webhook_secret
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
serve_shim
