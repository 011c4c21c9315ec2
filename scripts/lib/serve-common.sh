# What `make run` (scripts/run.sh) and `make ha-run` (scripts/ha-run.sh) share: their
# settings, the duty logins, the webhook secret, and how the shim is served. Sourced, not
# run; each caller brings its own database (the embedded cluster, the Patroni formation).

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
state=${RUN_STATE_DIR:-$root/.local}
mkdir -p "$state"

# create_logins URL LOGIN:ROLE ...: one login per duty, each holding only its role
# (CONTRACT.md, Roles); a login that exists already is kept.
create_logins() {
  local url=$1 pair
  shift
  for pair in "$@"; do
    psql "$url" -X -q -v ON_ERROR_STOP=1 -v login="${pair%%:*}" -v role="${pair#*:}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'login')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'login') \gexec
SELECT format('GRANT %I TO %I', :'role', :'login') \gexec
SQL
  done
}

# The webhook signing secret, made once and kept in the state directory (never printed):
# exported as STRIPE_WEBHOOK_SECRET; its file in $secret_file.
secret_file=$state/webhook-secret
use_webhook_secret() {
  if [[ ! -s $secret_file ]]; then
    (umask 077 && printf 'whsec_%s\n' "$(openssl rand -hex 24)" > "$secret_file")
  fi
  export STRIPE_WEBHOOK_SECRET
  STRIPE_WEBHOOK_SECRET=$(cat "$secret_file")
}

# The shim in the foreground, as every other way of starting it (pyshim/serve.py).
serve_shim() {
  exec .venv/bin/python -m pyshim serve --host "$HOST" --port "$PORT" --no-access-log
}
