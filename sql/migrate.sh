#!/usr/bin/env bash
# Apply this project's SQL to a PostgreSQL 15 database with nothing but bash, psql and sha256sum.
#
#   sql/migrate.sh [--dry-run] DATABASE_URL
#
# - sql/bootstrap.sql (idempotent): roles, the migrate.history table, pg_cron if this is
#   the database named by cron.database_name.
# - sql/migrations/V*.sql, versioned: each runs once, in its own transaction, and is
#   recorded with its checksum; an applied file that was edited afterwards is refused.
# - repeatables, re-applied when their checksum changes: sql/functions/*.sql,
#   sql/views/*.sql, sql/grants.sql (whose checksum covers every repeatable, so grants
#   follow any new function), sql/cron/schedules.sql. All of them are re-applied after
#   any versioned migration too: one may drop views to change a column they read.
# Everything runs in one psql session holding an advisory lock, so two migrators never
# interleave; the second waits, then finds nothing to do. Files run as booking_owner
# (SET LOCAL ROLE), so that role owns every object; cron schedules run as the session
# user, the role pg_cron starts the jobs as.
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

sum() { cat "$@" | sha256sum | cut -c1-64; }

# One step: kind, name (path relative to sql/), checksum, file, role to run as ('' = session user).
step() {
  local kind=$1 name=$2 checksum=$3 file=$4 as_owner=$5 also= mark=
  # A versioned step that runs (or would) makes every repeatable after it run too.
  if [[ $kind == repeatable ]]; then also=" OR :'versioned_ran' = '1'"; else mark='\set versioned_ran 1'; fi
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
  local repeatables=()
  for f in "$here"/functions/*.sql "$here"/views/*.sql; do
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
script | "$PSQL" "$url" -X -q -v ON_ERROR_STOP=1 --no-psqlrc -f - -o /dev/null
