"""make lint: plpgsql_check over every PL/pgSQL function, procedure and trigger of the project.

    .venv/bin/python scripts/lint_plpgsql.py            # a throwaway cluster, migrated, then checked
    .venv/bin/python scripts/lint_plpgsql.py URL        # check the database at URL instead

plpgsql_check (Debian's postgresql-15-plpgsql-check) is created only in the database being
checked, never by the project's migrations: production needs nothing of it. The in-body
pragmas (`PERFORM 'PRAGMA:disable:...'`) are plain constants to PL/pgSQL, so the functions
run the same without the extension.

Every function is checked with fatal errors, other, extra, performance, security and
compatibility warnings on; a trigger function once for each table a trigger attaches it to (its NEW and
OLD are that table's rows). Prints one line per finding,
`schema.function: level message (line N)`, and exits 1 when there is any, 0 otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pg import CRON_DB, migrate, start_cluster, url_for  # noqa: E402

SCHEMAS = ("api", "ops", "core", "stripe", "booking", "ledger", "jobs", "migrate")

# One row per check to run: each non-trigger function once (relid 0), each trigger function
# once per table it is attached to, and a trigger function attached to nothing as relid NULL
# (it cannot be checked without a table: reported as a finding of its own).
TARGETS = """
SELECT p.oid AS fn, n.nspname || '.' || p.proname AS name, 0::oid AS relid
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
WHERE l.lanname = 'plpgsql' AND n.nspname = ANY(%(schemas)s)
  AND p.prorettype NOT IN ('pg_catalog.trigger'::regtype, 'pg_catalog.event_trigger'::regtype)
UNION ALL
SELECT p.oid, n.nspname || '.' || p.proname, t.tgrelid
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
LEFT JOIN (SELECT DISTINCT tgfoid, tgrelid FROM pg_catalog.pg_trigger WHERE NOT tgisinternal) AS t
    ON t.tgfoid = p.oid
WHERE l.lanname = 'plpgsql' AND n.nspname = ANY(%(schemas)s)
  AND p.prorettype IN ('pg_catalog.trigger'::regtype, 'pg_catalog.event_trigger'::regtype)
ORDER BY 2, 1, 3
"""

CHECK = """
SELECT level, message, lineno, detail, hint
FROM public.plpgsql_check_function_tb(
    %(fn)s::oid::regprocedure, %(relid)s::oid::regclass,
    fatal_errors => false, other_warnings => true, extra_warnings => true,
    performance_warnings => true, security_warnings => true, compatibility_warnings => true)
"""


def check(url: str) -> tuple[list[str], int]:
    """Every finding in the database at `url`, one formatted line each, and the number of checks run."""
    findings: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpgsql_check SCHEMA public")
        targets = conn.execute(TARGETS, {"schemas": list(SCHEMAS)}).fetchall()
        for fn, name, relid in targets:
            if relid is None:
                findings.append(f"{name}: error trigger function attached to no table, so it cannot be checked")
                continue
            for level, message, lineno, detail, hint in conn.execute(CHECK, {"fn": fn, "relid": relid}):
                where = f" (line {lineno})" if lineno is not None else ""
                on = "" if relid == 0 else f" [on {conn.execute('SELECT %s::oid::regclass::text', (relid,)).fetchone()[0]}]"
                extra = "".join(f"; {x}" for x in (detail, hint) if x)
                findings.append(f"{name}{on}: {level} {message}{where}{extra}")
    return findings, len(targets)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        findings, checks = check(argv[1])
        checked = argv[1]
    else:
        pg = start_cluster(fsync=False)
        try:
            url = url_for(pg.url(), CRON_DB)
            migrate(url)
            findings, checks = check(url)
            checked = "a fresh build of sql/"
        finally:
            pg.stop()
    for line in findings:
        print(line)
    print(f"plpgsql_check: {checks} functions and triggers checked in {checked}: {len(findings)} finding(s)",
          file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
