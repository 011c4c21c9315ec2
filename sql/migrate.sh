#!/usr/bin/env bash
# Apply this project's SQL to a PostgreSQL 15 database with nothing but bash, psql and sha256sum.
#
#   sql/migrate.sh [--dry-run] DATABASE_URL
#
# - sql/bootstrap.sql (idempotent): roles, the migrate.history table, pg_cron if this is
#   the database named by cron.database_name.
# - sql/migrations/V*.sql, versioned: each runs once, in its own transaction, and is
#   recorded with its checksum; an applied file that was edited afterwards is refused.
# - repeatables, re-applied when their checksum changes: each schema's functions
#   (sql/functions/<schema>.sql or sql/functions/<schema>/*.sql) from the bottom layer up,
#   sql/views/*.sql, sql/grants.sql (whose checksum covers every repeatable, so grants
#   follow any new function), sql/cron/schedules.sql. All of them are re-applied after
#   any versioned migration too: one may drop views to change a column they read.
# Everything runs in one psql session holding an advisory lock, so two migrators never
# interleave; the second waits, then finds nothing to do. Files run as booking_owner
# (SET LOCAL ROLE), so that role owns every object; cron schedules run as the session
# user, the role pg_cron starts the jobs as.
#
# Locks: the session sets lock_timeout (MIGRATE_LOCK_TIMEOUT, default 5s) once it holds
# the advisory lock. A statement waiting for a table lock (an ALTER TABLE behind a long
# transaction) would make every buyer that touches the table queue behind it; instead it
# gives up after lock_timeout (SQLSTATE 55P03), its file's transaction rolls back whole,
# and the run starts again after MIGRATE_LOCK_PAUSE_S (default 5) seconds, resuming at that
# file (applied files are recorded), at most MIGRATE_LOCK_TRIES (default 5) runs in all.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dry_run=0
if [[ ${1:-} == --dry-run ]]; then dry_run=1; shift; fi
url=${1:-${DATABASE_URL:-}}
if [[ -z $url ]]; then
  echo "usage: $0 [--dry-run] DATABASE_URL" >&2
  exit 2
fi
PSQL=${PSQL:-psql}
lock_timeout=${MIGRATE_LOCK_TIMEOUT:-5s}
lock_tries=${MIGRATE_LOCK_TRIES:-5}
lock_pause_s=${MIGRATE_LOCK_PAUSE_S:-5}
if ! [[ $lock_timeout =~ ^[0-9]+(ms|s|min)?$ && $lock_tries =~ ^[1-9][0-9]*$ && $lock_pause_s =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
  echo "$0: MIGRATE_LOCK_TIMEOUT must be like 5s, 500ms or 1min; MIGRATE_LOCK_TRIES a whole number >= 1;" \
    "MIGRATE_LOCK_PAUSE_S a number of seconds" >&2
  exit 2
fi

sum() { cat "$@" | sha256sum | cut -c1-64; }

# One step: kind, name (path relative to sql/), checksum, file, role to run as ('' = session user).
step() {
  local kind=$1 name=$2 checksum=$3 file=$4 as_owner=$5 also= mark=
  # A versioned step that runs (or would, in a dry run) makes every repeatable after it run
  # too; so does one applied after the repeatable was last applied (a run that stopped
  # between them, e.g. on a lock timeout, owes the repeatables to the next run).
  if [[ $kind == repeatable ]]; then
    also=" OR :'versioned_ran' = '1' OR EXISTS (SELECT FROM migrate.history AS v WHERE v.kind = 'versioned'"
    also+=" AND v.applied_at > (SELECT r.applied_at FROM migrate.history AS r WHERE r.kind = 'repeatable' AND r.name = '$name'))"
  else
    mark='\set versioned_ran 1'
  fi
  cat <<SQL
SELECT migrate.plan('$kind', '$name', '$checksum')$also AS todo \\gset
\\if :todo
\\set changed 1
$mark
\\if :dry_run
\\echo 'would apply $kind $name'
\\else
\\echo 'applying $kind $name'
BEGIN;
SQL
  if [[ $as_owner == owner ]]; then echo 'SET LOCAL ROLE booking_owner;'; fi
  cat <<SQL
\\i '$file'
RESET ROLE;
SELECT migrate.record('$kind', '$name', '$checksum');
COMMIT;
\\endif
\\endif
SQL
}

script() {
  cat <<SQL
\\set ON_ERROR_STOP on
\\set QUIET on
\\set dry_run $dry_run
\\set changed 0
\\set versioned_ran 0
SET client_min_messages = warning;
SELECT pg_advisory_lock(hashtext('booking-core migrate'));
-- After the advisory lock, so that a second migrator still waits for the first as long as it takes.
SET lock_timeout = '$lock_timeout';
\\if :dry_run
BEGIN;
\\endif
\\i '$here/bootstrap.sql'
SQL
  local f name
  for f in "$here"/migrations/V*.sql; do
    [[ -e $f ]] || continue
    name=${f#"$here"/}
    step versioned "$name" "$(sum "$f")" "$f" owner
  done
  local repeatables=() schema seen=" "
  # Bottom layer first (docs/DESIGN.md, "Layers"): a LANGUAGE sql body is checked when it
  # is created, so what it calls must exist by then. A schema not listed comes after them,
  # in name order, so a new one is never skipped.
  for schema in jobs core ledger booking stripe api ops; do
    seen+="$schema "
    for f in "$here/functions/$schema.sql" "$here/functions/$schema"/*.sql; do
      [[ -e $f ]] && repeatables+=("$f")
    done
  done
  for f in "$here"/functions/*.sql "$here"/functions/*/*.sql; do
    schema=${f#"$here"/functions/}
    schema=${schema%%/*}
    schema=${schema%.sql}
    [[ -e $f && $seen != *" $schema "* ]] && repeatables+=("$f")
  done
  for f in "$here"/views/*.sql; do
    [[ -e $f ]] && repeatables+=("$f")
  done
  for f in "${repeatables[@]}"; do
    name=${f#"$here"/}
    step repeatable "$name" "$(sum "$f")" "$f" owner
  done
  step repeatable grants.sql "$(sum "${repeatables[@]}" "$here/grants.sql")" "$here/grants.sql" owner
  step repeatable cron/schedules.sql "$(sum "$here/cron/schedules.sql")" "$here/cron/schedules.sql" session
  cat <<SQL
\\if :dry_run
ROLLBACK;
\\endif
SELECT pg_advisory_unlock(hashtext('booking-core migrate'));
\\if :changed
\\else
\\echo 'nothing to apply: the database is up to date'
\\endif
SQL
}

if [[ ${MIGRATE_PRINT:-0} == 1 ]]; then script; exit 0; fi
# The dry run applies bootstrap.sql inside a transaction that is rolled back.
# VERBOSITY verbose puts the SQLSTATE in psql's error line, which is how a lock timeout
# (55P03) is told from any other failure whatever the server's language.
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
for ((try = 1; ; try++)); do
  status=0
  script | "$PSQL" "$url" -X -q -v ON_ERROR_STOP=1 -v VERBOSITY=verbose --no-psqlrc \
    -f - -o /dev/null 2>"$errors" || status=$?
  cat "$errors" >&2
  if ((status == 0)); then exit 0; fi
  grep -q 'ERROR:  55P03: ' "$errors" || exit "$status"
  # psql names the file and line of the failed statement: psql:/path/to/sql/migrations/V...sql:12: ERROR: ...
  timed_out=$(sed -n 's/^psql:\(.*\):[0-9]*: ERROR:  55P03: .*/\1/p' "$errors" | head -n 1)
  timed_out=${timed_out#"$here"/}
  if ((try >= lock_tries)); then
    echo "migrate: gave up after $try tries: ${timed_out:-a statement} waited longer than lock_timeout ($lock_timeout) for a lock each time; nothing of it was applied. See who holds the lock (pg_locks, pg_stat_activity), then run again." >&2
    exit "$status"
  fi
  echo "migrate: lock timeout ($lock_timeout) in ${timed_out:-a statement}, rolled back; try $((try + 1)) of $lock_tries in ${lock_pause_s}s" >&2
  sleep "$lock_pause_s"
done
