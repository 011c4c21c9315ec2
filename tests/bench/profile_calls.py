"""Where the time of a call goes, in counts that do not depend on the machine's load:
api.place_hold, api.create_booking and the webhook ingest path (api.ingest_stripe_event,
api.ingest_stripe_events), each run N times by one client against a fresh migrated
database in a cluster of its own (fsync on, like the benches).

    .venv/bin/python -m tests.bench.profile_calls [--calls N] [--cases A,B] [--explain] [--perf] [--micro]
        [--waits SECONDS [--clients N] [--runs A,B]] [--decompose SECONDS] [--setting NAME=VALUE] [--apply FILE.sql] [--skip-counts]

For each case, per call: transaction ids assigned (the top transaction plus every
subtransaction that wrote: an EXCEPTION block that was entered and wrote a row), WAL
bytes, records and full-page images (pg_current_wal_lsn() before and after), the WAL by
relation and record type (pg_walinspect), rows written per table (pg_stat_user_tables),
functions and triggers run (pg_stat_user_functions, track_functions = all), and every
statement the call ran, nested ones included (pg_stat_statements, track = all): calls,
rows, plans, shared buffers hit and dirtied, WAL. Only the "ms" columns depend on load.

--waits SECONDS also samples pg_stat_activity at 10 Hz during pgbench runs (--clients,
default 32) and tabulates the wait events. It prints each run's CPU per transaction (every
process of the cluster, from /proc, and pgbench's) and its statements by total time. The
--runs are: place_hold (one inventory), own_inventory (one inventory per client; each
transaction also reads its inventory id), own_row and hot_row (the two baselines of
issue 14: each client its own counter row, or one hot row, plus a hold insert), and
hold_then_booking (bookings_bench's script). Every figure here depends on the load on
the machine, and CPU per transaction depends on it least.

--decompose SECONDS runs pgbench scripts that build place_hold up one layer at a time,
from the baseline to the real function. --micro measures pieces of a call alone
(exception blocks, SET clauses, create_booking's JSON).

--apply FILE.sql runs a SQL file as superuser after the migrations: a variant of a
function to measure in this throwaway cluster (never a change to sql/).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import resource
import subprocess
import threading
import time

from psycopg.types.json import Jsonb

from tests.bench.common import make_bookings, payment_event, pgbench_output, table
from tests.bench.holds_bench import new_inventory
from tests.pg import connect, migrate, start_cluster, url_for

PROFILE_SETTINGS = (
    "-c shared_buffers=512MB",
    "-c max_wal_size=4GB",
    "-c shared_preload_libraries=pg_cron,pg_stat_statements",
    "-c pg_stat_statements.track=all",
    "-c pg_stat_statements.track_planning=on",
    "-c pg_stat_statements.max=10000",
    "-c track_functions=all",
    # No autovacuum or analyze in the middle of a measurement: its WAL and its pruning
    # would be counted against the calls. Statistics are gathered once, by hand, before.
    "-c autovacuum=off",
)

BASELINE_SETUP = """
CREATE TABLE IF NOT EXISTS bench_counter (id int PRIMARY KEY, free int NOT NULL CHECK (free >= 0));
INSERT INTO bench_counter SELECT g, 2000000000 FROM generate_series(1, 200) AS g ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS bench_holds (
    hold_id uuid PRIMARY KEY DEFAULT gen_random_uuid(), inventory_id int NOT NULL, quantity int NOT NULL,
    holder text NOT NULL, status text NOT NULL DEFAULT 'live', expires_at timestamptz NOT NULL
);
"""
# The two baselines of issue 14: the naive hot row, and each client its own row (no contention).
BASELINE_SQL = """
WITH taken AS (UPDATE bench_counter SET free = free - %(q)s WHERE id = %(id)s AND free >= %(q)s RETURNING id)
INSERT INTO bench_holds (inventory_id, quantity, holder, expires_at)
SELECT id, %(q)s, 'bench', clock_timestamp() + interval '15 minutes' FROM taken
"""
HOT_ROW_SCRIPT = """\\set q random(1, 4)
WITH taken AS (UPDATE bench_counter SET free = free - :q WHERE id = 1 AND free >= :q RETURNING id)
INSERT INTO bench_holds (inventory_id, quantity, holder, expires_at)
SELECT id, :q, 'bench', clock_timestamp() + interval '15 minutes' FROM taken;
"""
OWN_ROW_SCRIPT = """\\set q random(1, 4)
\\set id :client_id + 1
WITH taken AS (UPDATE bench_counter SET free = free - :q WHERE id = :id AND free >= :q RETURNING id)
INSERT INTO bench_holds (inventory_id, quantity, holder, expires_at)
SELECT id, :q, 'bench', clock_timestamp() + interval '15 minutes' FROM taken;
"""
PLACE_HOLD_SCRIPT = """\\set q random(1, 4)
SELECT * FROM api.place_hold(:inv, :q, 'bench');
"""

# The same calls with no two clients on one inventory: what contention costs, apart from path length.
OWN_INVENTORY_SCRIPT = """\\set q random(1, 4)
\\set n :client_id + 1
SELECT inventory_id AS inv FROM bench_inventories WHERE n = :n \\gset
SELECT * FROM api.place_hold(:inv, :q, 'bench');
"""

HOLD_THEN_BOOKING_SCRIPT = """SELECT hold_id AS h FROM api.place_hold(:inv, 1, 'bench') \\gset
SELECT api.create_booking(NULL, 'bench', ARRAY[:h::uuid]);
"""

# The WAL by relation and record type, for the records of this database between two LSNs.
WAL_BY_RELATION = """
WITH r AS (
    SELECT resource_manager || '/' || split_part(record_type, ' ', 1) AS kind, record_length, fpi_length,
           (regexp_match(block_ref, 'rel \\d+/(\\d+)/(\\d+)')) AS rel
    FROM pg_get_wal_records_info(%(start)s, %(end)s)
)
SELECT coalesce(pg_filenode_relation(0, r.rel[2]::oid)::text,
                CASE WHEN r.rel IS NULL THEN '(no relation)' ELSE '(other)' END) AS relation,
       r.kind, count(*) AS records, sum(r.record_length) AS bytes, sum(r.fpi_length) AS fpi_bytes
FROM r
WHERE r.rel IS NULL OR r.rel[1]::oid = (SELECT oid FROM pg_database WHERE datname = current_database())
GROUP BY 1, 2
ORDER BY sum(r.record_length) DESC
"""


class Snapshot:
    """Counters read before and after a case; the worker's connection is closed before the
    second read, so that its statistics have been flushed (a backend flushes at exit)."""

    def __init__(self, admin, pgss):
        self.admin, self.pgss = admin, pgss

    def start(self):
        self.pgss.execute("SELECT pg_stat_statements_reset()")
        self.admin.execute("SELECT pg_stat_reset()")
        self.lsn, self.xid, self.wal = self._global()

    def _global(self):
        lsn = self.admin.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        xid = int(self.admin.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()[0])
        wal = self.admin.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone()
        return lsn, xid, wal

    def finish(self, label: str, n: int, unit: str = "call") -> dict:
        time.sleep(0.3)  # the worker's exit-time flush of its statistics
        lsn, xid, wal = self._global()
        a = self.admin
        wal_bytes = a.execute("SELECT pg_wal_lsn_diff(%s, %s)", (lsn, self.lsn)).fetchone()[0]
        records, fpi = wal[0] - self.wal[0], wal[1] - self.wal[1]
        result = {"xids": (xid - self.xid) / n, "wal_bytes": float(wal_bytes) / n, "wal_records": records / n,
                  "fpi": fpi / n}
        print(f"\n=== {label}: {n:,} {unit}s by one client, each its own transaction ===")
        print(f"per {unit}: {result['xids']:.2f} transaction ids assigned, {result['wal_bytes']:,.0f} WAL bytes, "
              f"{result['wal_records']:.1f} WAL records, {result['fpi']:.2f} full-page images "
              "(the whole cluster: keep the machine's other databases idle)")

        rows = a.execute(WAL_BY_RELATION, {"start": self.lsn, "end": lsn}).fetchall()
        table(f"WAL per {unit} by relation and record type (pg_walinspect; >= 0.05 records per {unit})",
              ["relation", "record", f"records/{unit}", f"bytes/{unit}", f"fpi bytes/{unit}"],
              [[rel, kind, f"{c / n:.2f}", f"{b / n:,.0f}", f"{f / n:,.0f}"]
               for rel, kind, c, b, f in rows if c / n >= 0.05])

        rows = a.execute(
            """SELECT schemaname || '.' || relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,
                      seq_scan, coalesce(idx_scan, 0)
               FROM pg_stat_user_tables
               WHERE n_tup_ins + n_tup_upd + n_tup_del + coalesce(idx_scan, 0) + seq_scan > 0
               ORDER BY n_tup_ins + n_tup_upd + n_tup_del DESC, 1""").fetchall()
        table(f"rows written and scans per {unit} (pg_stat_user_tables)",
              ["table", "inserted", "updated", "of which HOT", "deleted", "seq scans", "index scans"],
              [[t, *(f"{x / n:.2f}" for x in r)] for t, *r in rows])

        rows = a.execute(
            """SELECT schemaname || '.' || funcname, calls, total_time, self_time
               FROM pg_stat_user_functions ORDER BY calls DESC, 1""").fetchall()
        table(f"functions and trigger functions run per {unit} (pg_stat_user_functions; ms: load-dependent)",
              ["function", f"calls/{unit}", f"total ms/{unit}", f"self ms/{unit}"],
              [[f, f"{c / n:.2f}", f"{t / n:.3f}", f"{s / n:.3f}"] for f, c, t, s in rows])

        rows = self.pgss.execute(
            """SELECT toplevel, regexp_replace(query, '\\s+', ' ', 'g'), calls, rows, plans, shared_blks_hit,
                      shared_blks_read, shared_blks_dirtied, wal_records, wal_fpi, wal_bytes,
                      total_exec_time, total_plan_time
               FROM pg_stat_statements
               WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench')
                 AND query !~* 'pg_stat|pg_current|pg_snapshot|pg_get_wal|pg_wal_lsn'
               ORDER BY toplevel DESC, wal_bytes DESC, calls DESC""").fetchall()
        table(f"statements per {unit}, nested ones included (pg_stat_statements, track = all; "
              "a nested statement's WAL and buffers are also in the statement that ran it; ms: load-dependent)",
              ["top", "statement", "calls", "rows", "plans", "blks hit", "read", "dirtied",
               "WAL recs", "WAL fpi", "WAL bytes", "exec ms", "plan ms"],
              [["yes" if top else "", q[:90], f"{c / n:.2f}", f"{r / n:.2f}", f"{p / n:.2f}", f"{h / n:.1f}",
                f"{rd / n:.1f}", f"{d / n:.2f}", f"{wr / n:.2f}", f"{wf / n:.2f}", f"{float(wb) / n:,.0f}",
                f"{te / c:.3f}" if c else "-", f"{tp / p:.3f}" if p else "-"]
               for top, q, c, r, p, h, rd, d, wr, wf, wb, te, tp in rows if c / n >= 0.01])
        return result


def backend_cpu_ns(pid: int) -> int:
    """CPU time the backend has run, in ns (/proc/<pid>/schedstat, first field): unlike
    latency, it hardly moves when other work shares the cores."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


LAST_CPU_US: list[float] = [0.0]
PERF: list[bool] = [False]  # --perf: record each measured case's backend with perf


def run_calls(url: str, sql: str, params_list: list, explain: bool = False, record: bool = False) -> float:
    """Runs sql once per params on a new connection (server-side prepared, like pgbench -M
    prepared), each in its own transaction; closes it; returns the mean ms per call and
    leaves the backend's CPU us per call in LAST_CPU_US. explain: instead, one call of the
    last params with auto_explain of every statement it runs, nested ones included."""
    with connect(url, prepare_threshold=0) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        recorder = None
        if record and PERF[0]:
            data = f"/tmp/profile_calls_{pid}.perf"
            recorder = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-p", str(pid),
                                         "-o", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # perf attached
        cpu = backend_cpu_ns(pid)
        started = time.perf_counter()
        for params in [] if explain else params_list:
            cur = conn.execute(sql, params)
            if cur.description:
                cur.fetchall()
        elapsed = time.perf_counter() - started
        if recorder:
            recorder.send_signal(2)
            recorder.wait()
            report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol",
                                     "--percent-limit", "0.8"], capture_output=True, text=True).stdout
            os.unlink(data)
            print("\nperf record -e cpu-clock of the backend during these calls, by symbol (>= 0.8% of samples):")
            for line in report.splitlines():
                if line.strip() and not line.startswith("#"):
                    print("  " + line.strip())
        LAST_CPU_US[0] = (backend_cpu_ns(pid) - cpu) / len(params_list) / 1000
        if explain:
            conn.execute("LOAD 'auto_explain'")
            for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_analyze = on",
                            "log_buffers = on", "log_timing = off", "log_wal = on", "log_level = notice"):
                conn.execute(f"SET auto_explain.{setting}")
            plans = []
            conn.add_notice_handler(lambda d: plans.append(d.message_primary))
            conn.execute("SET client_min_messages = notice")
            try:
                conn.execute(sql, params_list[-1])
            except Exception as exc:  # the plans up to the failure still show
                plans.append(f"(the call failed: {exc})")
            print("\nauto_explain of one call (log_analyze, buffers, wal; no timing):")
            for p in plans:
                print("  " + p.replace("\n", "\n  "))
        return elapsed / len(params_list) * 1000


def place_holds(url: str, inventory: str, n: int) -> list[str]:
    with connect(url) as conn:
        return [str(h) for (h,) in conn.execute(
            "SELECT (api.place_hold(%s, 1, 'bench')).hold_id FROM generate_series(1, %s)", (inventory, n)).fetchall()]


def index_sizes(conn, table_name: str) -> dict[str, int]:
    return dict(conn.execute(
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index WHERE indrelid = %s::regclass",
        (table_name,)).fetchall())


def profile(url: str, pgss_url: str, n: int, explain: bool, cases: set[str]) -> None:
    with connect(url) as admin, connect(pgss_url) as pgss:
        snap = Snapshot(admin, pgss)
        admin.execute(BASELINE_SETUP)
        admin.execute("ANALYZE")

        def case(label, sql, measured, explain_params=None, unit="call", sizes_of=None):
            before = index_sizes(admin, sizes_of) if sizes_of else None
            snap.start()
            ms = run_calls(url, sql, measured, record=True)
            cpu = LAST_CPU_US[0]
            result = snap.finish(label, len(measured), unit)
            print(f"backend CPU per {unit}: {cpu:,.0f} us (schedstat; little affected by load); "
                  f"mean latency at 1 client: {ms:.3f} ms (load-dependent)")
            if sizes_of:
                after = index_sizes(admin, sizes_of)
                table(f"{sizes_of}: index growth per {unit} (pg_relation_size, whole 8 KiB pages: rough)",
                      ["index", f"bytes/{unit}"],
                      [[k, f"{(after[k] - before[k]) / len(measured):,.0f}"] for k in sorted(after)])
            if explain and explain_params is not None:
                run_calls(url, sql, [explain_params], explain=True)
            result["cpu_us"] = cpu
            return result

        # The baselines, for scale: one statement, one counter row and one hold row each.
        for label, ids in [] if "baselines" not in cases else (("baseline: hot counter row + hold insert", [1] * n),
                           ("baseline: own counter row + hold insert", [random.randint(1, 32) for _ in range(n)])):
            run_calls(url, BASELINE_SQL, [{"q": 1, "id": i} for i in ids[: n // 2]])  # warm-up
            case(label, BASELINE_SQL, [{"q": random.randint(1, 4), "id": i} for i in ids], {"q": 1, "id": 1})

        def place_hold_case(n):
            inventory = new_inventory(url, "profile-holds")
            sql = "SELECT * FROM api.place_hold(%s, %s, 'bench')"
            run_calls(url, sql, [(inventory, 1)] * (n // 2))
            admin.execute("ANALYZE")
            case("api.place_hold, one inventory of 64 buckets, quantity 1 to 4", sql,
                 [(inventory, random.randint(1, 4)) for _ in range(n)], (inventory, 1), sizes_of="booking.holds")

        def create_booking_case(n):
            inventory = new_inventory(url, "profile-bookings")
            holds = place_holds(url, inventory, 3 * n + 2)
            admin.execute("ANALYZE")
            sql = "SELECT api.create_booking(NULL, 'bench', ARRAY[%s::uuid])"
            run_calls(url, sql, [(h,) for h in holds[:n]])  # warm-up
            case("api.create_booking of one hold, no key (its hold placed before)", sql,
                 [(h,) for h in holds[n:2 * n]], (holds[-1],), sizes_of="booking.holds")
            sql = "SELECT api.create_booking(gen_random_uuid()::text, 'bench', ARRAY[%s::uuid])"
            case("api.create_booking of one hold, with a key", sql, [(h,) for h in holds[2 * n:3 * n]], (holds[-2],))

        def ingest_case(n):
            # The webhook path: one payment_intent.succeeded per booking, applied alone and by 8.
            bookings = make_bookings(admin, 3 * n + 1)
            events = [payment_event(i, b) for i, b in enumerate(bookings)]
            sql = "SELECT api.ingest_stripe_event(%s::jsonb)"
            run_calls(url, sql, [(Jsonb(e),) for e in events[:n]])  # warm-up: the tables hold rows
            admin.execute("ANALYZE")
            case("api.ingest_stripe_event: payment_intent.succeeded confirming a booking", sql,
                 [(Jsonb(e),) for e in events[n:2 * n]], (Jsonb(events[-1]),), unit="event")
            batches = [events[i:i + 8] for i in range(2 * n, 3 * n, 8)]
            sql = "SELECT api.ingest_stripe_events(%s::jsonb)"
            r = case("api.ingest_stripe_events: batches of 8 events (group commit); figures per batch", sql,
                     [(Jsonb(b),) for b in batches], unit="batch")
            print(f"per event: {r['wal_bytes'] / 8:,.0f} WAL bytes, {r['wal_records'] / 8:.1f} records, "
                  f"{r['xids'] / 8:.2f} transaction ids, {r['cpu_us'] / 8:,.0f} us of backend CPU")

        if "place_hold" in cases:
            place_hold_case(n)
        if "create_booking" in cases:
            create_booking_case(n)
        if "ingest" in cases:
            ingest_case(n)


# Pieces of a call measured alone, in a loop of MICRO_LOOPS inside one statement: backend
# CPU per iteration, minus an empty loop's. (name, setup run once, loop body in plpgsql)
MICRO_LOOPS = 20000
MICRO = [
    ("empty loop (subtracted from the others)", "", "NULL;"),
    ("EXCEPTION block entered, nothing written", "", "BEGIN x := x + 1; EXCEPTION WHEN SQLSTATE 'RB001' THEN NULL; END;"),
    ("call of an empty plpgsql function", "CREATE OR REPLACE FUNCTION micro_plain() RETURNS void LANGUAGE plpgsql AS $f$BEGIN END$f$;",
     "PERFORM micro_plain();"),
    ("call of an empty plpgsql function with api.*'s SET search_path and plan_cache_mode, SECURITY DEFINER",
     "CREATE OR REPLACE FUNCTION micro_set() RETURNS void LANGUAGE plpgsql SECURITY DEFINER "
     "SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $f$BEGIN END$f$;",
     "PERFORM micro_set();"),
    ("core.require_text(p_holder, 'p_holder', 200)", "", "PERFORM core.require_text('bench', 'p_holder', 200);"),
    ("create_booking's fingerprint: sha256 of jsonb_build_object(holder, hold_ids, metadata)::text", "",
     "f := encode(sha256(convert_to(jsonb_build_object('holder', 'bench', 'hold_ids', to_jsonb(ARRAY[u]), "
     "'metadata', '{}'::jsonb)::text, 'UTF8')), 'hex');"),
    ("create_booking's response: jsonb_build_object of 5 keys", "",
     "j := jsonb_build_object('booking_id', u, 'status', 'pending_payment', 'amount', 2500, 'currency', 'usd', "
     "'expires_at', now());"),
    ("create_booking's metadata checks: jsonb_typeof, octet_length(p_metadata::text)", "",
     "IF jsonb_typeof(j) <> 'object' OR octet_length(j::text) > 8192 THEN RAISE EXCEPTION 'x'; END IF;"),
    ("create_booking's SELECT array_agg(DISTINCT x ORDER BY x) FROM unnest(p_hold_ids)", "",
     "SELECT array_agg(DISTINCT t.y ORDER BY t.y) INTO a FROM unnest(ARRAY[u]) AS t (y);"),
    ("gen_random_uuid()", "", "u := gen_random_uuid();"),
]


def micro(url: str) -> None:
    rows = []
    empty = None
    with connect(url) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        for name, setup, body in MICRO:
            if setup:
                conn.execute(setup)
            block = (f"DO $d$ DECLARE x int := 0; f text; j jsonb := '{{}}'; a uuid[]; u uuid := gen_random_uuid(); "
                     f"BEGIN FOR i IN 1..{MICRO_LOOPS} LOOP {body} END LOOP; END $d$")
            conn.execute(block)  # warm: plans made
            best = None
            for _ in range(3):
                cpu = backend_cpu_ns(pid)
                conn.execute(block)
                us = (backend_cpu_ns(pid) - cpu) / MICRO_LOOPS / 1000
                best = us if best is None else min(best, us)
            if empty is None:
                empty = best
                rows.append([name, f"{best:.2f}", "-"])
            else:
                rows.append([name, f"{best:.2f}", f"{best - empty:.2f}"])
        # A write in an EXCEPTION block: one per transaction, as in place_hold (a loop would
        # make thousands of subtransactions in one, and a HOT chain thousands long).
        conn.execute("""
            CREATE TABLE micro_counter (id int PRIMARY KEY, n int);
            INSERT INTO micro_counter SELECT g, 0 FROM generate_series(1, 64) AS g;
            CREATE FUNCTION micro_update(p_id int, p_sub boolean) RETURNS void LANGUAGE plpgsql AS $f$
            BEGIN
                IF p_sub THEN
                    BEGIN
                        UPDATE micro_counter SET n = n + 1 WHERE id = p_id;
                    EXCEPTION WHEN SQLSTATE 'RB001' THEN NULL;
                    END;
                ELSE
                    UPDATE micro_counter SET n = n + 1 WHERE id = p_id;
                END IF;
            END $f$""")
    calls = [(random.randint(1, 64), False) for _ in range(3000)]
    per_tx = {}
    for sub in (False, True, False, True):
        run_calls(url, "SELECT micro_update(%s, %s)", [(i, sub) for i, _ in calls])
        per_tx[sub] = min(per_tx.get(sub, 1e9), LAST_CPU_US[0])
    rows.append(["a transaction of one UPDATE, alone (its own transaction per call)", f"{per_tx[False]:.1f}", "-"])
    rows.append(["the same UPDATE inside an EXCEPTION block (a subtransaction id assigned)", f"{per_tx[True]:.1f}",
                 f"{per_tx[True] - per_tx[False]:+.1f} against the line above"])
    table(f"pieces of a call alone: backend CPU per iteration of a plpgsql loop of {MICRO_LOOPS:,} "
          "(best of 3; one transaction, so no commit is counted)",
          ["piece", "us per iteration", "us, less the empty loop"], rows)


def cluster_cpu_s(url: str) -> float:
    """CPU seconds used so far by the cluster's processes: the postmaster's own and its
    reaped children's (every backend that has exited), plus each live child's."""
    with connect(url) as conn:
        data_dir = conn.execute("SELECT current_setting('data_directory')").fetchone()[0]
    with open(os.path.join(data_dir, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    tick = os.sysconf("SC_CLK_TCK")

    def fields(pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    total = sum(int(x) for x in fields(postmaster)[11:15])  # utime stime cutime cstime
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                f = fields(pid)
                if int(f[1]) == postmaster:
                    total += int(f[11]) + int(f[12])
            except (OSError, IndexError):
                pass  # exited meanwhile
    return total / tick


def sample_waits(url: str, script: str, clients: int, seconds: int, defines: dict[str, str]) -> tuple[float, collections.Counter, int, float, float]:
    """Runs pgbench; samples the wait events of its sessions at 10 Hz meanwhile. Returns
    (tps, wait events, samples, the cluster's CPU us per transaction, pgbench's)."""
    waits: collections.Counter = collections.Counter()
    samples = 0
    stop = threading.Event()

    def sampler():
        nonlocal samples
        with connect(url) as conn:
            time.sleep(1)  # connections made
            while not stop.is_set():
                for (w,) in conn.execute(
                        """SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU (no wait event)')
                           FROM pg_stat_activity WHERE application_name = 'pgbench' AND state = 'active'"""):
                    waits[w] += 1
                samples += 1
                time.sleep(0.1)

    def perf_of_sessions():
        """perf of this cluster's pgbench sessions for half the run, by library and by symbol."""
        time.sleep(seconds / 4)
        with connect(url) as conn:
            pids = [str(p) for (p,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'").fetchall()]
        data = f"/tmp/profile_calls_{os.getpid()}.perf"
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "1000", "-p", ",".join(pids), "-o", data,
                        "--", "sleep", str(seconds / 2)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for sort, limit in (("dso", "1"), ("dso,symbol", "0.7")):
            report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", sort,
                                     "--percent-limit", limit], capture_output=True, text=True).stdout
            perf_lines.append(f"perf record -e cpu-clock of the {len(pids)} sessions, by {sort} (>= {limit}%):")
            perf_lines.extend("  " + x.strip() for x in report.splitlines() if x.strip() and not x.startswith("#"))
        os.unlink(data)

    perf_lines: list[str] = []
    perf_thread = threading.Thread(target=perf_of_sessions) if PERF[0] and ":inv" in script else None
    thread = threading.Thread(target=sampler)
    cpu = cluster_cpu_s(url)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    thread.start()
    if perf_thread:
        perf_thread.start()
    try:
        out = pgbench_output(url, script, clients, seconds, defines=defines, app="pgbench")
    finally:
        stop.set()
        thread.join()
        if perf_thread:
            perf_thread.join()
    if perf_lines:
        print("\n" + "\n".join(perf_lines))
    time.sleep(0.5)  # pgbench's backends have exited and been reaped
    cpu = cluster_cpu_s(url) - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    pgbench_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    tps = float(re.search(r"tps = ([0-9.]+) \(without", out).group(1))
    transactions = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    return tps, waits, samples, cpu / transactions * 1e6, pgbench_cpu / transactions * 1e6


WAIT_RUNS = ("place_hold", "own_inventory", "own_row", "hot_row", "hold_then_booking")


def waits(url: str, seconds: int, clients: int, which: set[str]) -> None:
    inventory = new_inventory(url, f"profile-waits-{clients}")
    with connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_inventories (n int PRIMARY KEY, inventory_id uuid NOT NULL)")
        conn.execute("TRUNCATE bench_inventories")
        for i in range(1, clients + 1):
            conn.execute("INSERT INTO bench_inventories VALUES (%s, %s)", (i, new_inventory(url, f"profile-own-{clients}-{i}")))
        conn.execute("ANALYZE")
    runs = [("api.place_hold, one inventory", PLACE_HOLD_SCRIPT, {"inv": inventory}),
            ("api.place_hold, each client its own inventory", OWN_INVENTORY_SCRIPT, {}),
            ("baseline: each client its own counter row", OWN_ROW_SCRIPT, {}),
            ("baseline: one hot counter row", HOT_ROW_SCRIPT, {}),
            # As tests/bench/bookings_bench.py: two transactions, the hold then its booking.
            ("api.place_hold then api.create_booking", HOLD_THEN_BOOKING_SCRIPT, {"inv": inventory})]
    results = []
    pgss_url = url.rsplit("/", 1)[0] + "/postgres"
    for key, (label, script, defines) in zip(WAIT_RUNS, runs):
        if key not in which:
            continue
        with connect(pgss_url) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
        results.append((label, *sample_waits(url, script, clients, seconds, defines)))
        with connect(pgss_url) as conn:
            top = conn.execute(
                """SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, total_exec_time / calls,
                          shared_blks_hit::float8 / calls, rows::float8 / calls
                   FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench')
                     AND calls > 0 AND query !~* 'pg_stat|pg_backend_pid|current_setting'
                   ORDER BY total_exec_time DESC LIMIT 8""").fetchall()
        table(f"{label}: statements by total time during the run (pg_stat_statements; ms depend on load)",
              ["statement", "calls", "mean ms", "blks hit/call", "rows/call"],
              [[q[:100], f"{c:,}", f"{m:.3f}", f"{h:.1f}", f"{r:.1f}"] for q, c, m, h, r in top])
    names = sorted({w for r in results for w in r[2]}, key=lambda w: -sum(r[2][w] for r in results))
    rows = [[w, *(f"{c[w] / max(1, s):.1f}" for _, _, c, s, _, _ in results)] for w in names]
    rows.append(["tps (load-dependent)", *(f"{r[1]:,.0f}" for r in results)])
    rows.append(["cluster CPU us per transaction (all its processes)", *(f"{r[4]:,.0f}" for r in results)])
    rows.append(["pgbench CPU us per transaction", *(f"{r[5]:,.0f}" for r in results)])
    rows.append(["2 cores / (cluster + pgbench CPU): tps if CPU-bound",
                 *(f"{2e6 / (r[4] + r[5]):,.0f}" for r in results)])
    table(f"{clients} pgbench clients, {seconds} s each: mean active sessions in each wait event "
          "(pg_stat_activity sampled at 10 Hz; depends on the load on the machine)",
          ["wait event", *(label for label, *_ in results)], rows)
    print(f"load average after: {os.getloadavg()}")


# What place_hold's CPU per transaction is made of, one layer at a time, each a pgbench
# script (32 clients): from the no-contention baseline to the real function.
ONE_STATEMENT_HOLD = """
WITH i AS (
    SELECT x.inventory_id, x.hold_ttl, x.unit_amount, x.bucket_count FROM booking.inventory AS x
    WHERE x.inventory_id = {inv} AND NOT x.queued
), b AS (
    UPDATE booking.inventory_buckets AS b SET free = b.free - {q}
    WHERE b.inventory_id = {inv}
      AND b.bucket_no = (
          SELECT c.bucket_no FROM booking.inventory_buckets AS c
          WHERE c.inventory_id = {inv} AND c.free >= {q}
            AND c.bucket_no >= (SELECT floor(random() * i.bucket_count) FROM i)
          ORDER BY c.bucket_no LIMIT 1
          FOR UPDATE SKIP LOCKED)
    RETURNING b.bucket_no
)
INSERT INTO booking.holds AS h (inventory_id, bucket_no, quantity, holder, expires_at, unit_amount)
SELECT i.inventory_id, b.bucket_no, {q}, {holder}, clock_timestamp() + i.hold_ttl, i.unit_amount FROM i, b
RETURNING h.hold_id, h.expires_at"""
DECOMPOSE_SETUP = f"""
CREATE TABLE IF NOT EXISTS bench_holds_shaped (LIKE booking.holds INCLUDING ALL);
CREATE TABLE IF NOT EXISTS bench_holds_two_fewer (LIKE booking.holds INCLUDING ALL);
CREATE TABLE IF NOT EXISTS bench_holds_pkey_only (LIKE booking.holds INCLUDING ALL);
DO $d$
DECLARE r record;
BEGIN
    -- V0012's created_at index and the older open-deadline index; then every index but the key.
    FOR r IN SELECT indexname FROM pg_indexes WHERE tablename = 'bench_holds_two_fewer'
             AND (indexdef ~ '\(created_at\)' OR indexdef ~ '\(expires_at\) WHERE')
             UNION ALL
             SELECT indexname FROM pg_indexes WHERE tablename = 'bench_holds_pkey_only' AND indexname !~ 'pkey' LOOP
        EXECUTE format('DROP INDEX %I', r.indexname);
    END LOOP;
END $d$;
CREATE OR REPLACE FUNCTION booking.bench_hold_plain(p_inventory_id uuid, p_quantity int, p_holder text)
RETURNS TABLE (hold_id uuid, expires_at timestamptz) LANGUAGE plpgsql AS $f$
BEGIN
    RETURN QUERY {ONE_STATEMENT_HOLD.format(inv="p_inventory_id", q="p_quantity", holder="p_holder")};
END $f$;
CREATE OR REPLACE FUNCTION booking.bench_hold_keyed(p_inventory_id uuid, p_quantity int, p_holder text, p_bucket int)
RETURNS TABLE (hold_id uuid, expires_at timestamptz) LANGUAGE plpgsql AS $f$
BEGIN
    RETURN QUERY
    WITH b AS (
        UPDATE booking.inventory_buckets AS b SET free = b.free - p_quantity
        WHERE b.inventory_id = p_inventory_id AND b.bucket_no = p_bucket AND b.free >= p_quantity
        RETURNING b.bucket_no
    )
    INSERT INTO booking.holds AS h (inventory_id, bucket_no, quantity, holder, expires_at, unit_amount)
    SELECT p_inventory_id, b.bucket_no, p_quantity, p_holder, clock_timestamp() + interval '15 minutes', 5000 FROM b
    RETURNING h.hold_id, h.expires_at;
END $f$;
CREATE OR REPLACE FUNCTION booking.bench_hold_definer(p_inventory_id uuid, p_quantity int, p_holder text)
RETURNS TABLE (hold_id uuid, expires_at timestamptz) LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $f$
BEGIN
    RETURN QUERY {ONE_STATEMENT_HOLD.format(inv="p_inventory_id", q="p_quantity", holder="p_holder")};
END $f$;
CREATE OR REPLACE FUNCTION booking.bench_hold_subtransaction(p_inventory_id uuid, p_quantity int, p_holder text)
RETURNS TABLE (hold_id uuid, expires_at timestamptz) LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $f$
BEGIN
    BEGIN
        RETURN QUERY {ONE_STATEMENT_HOLD.format(inv="p_inventory_id", q="p_quantity", holder="p_holder")};
    EXCEPTION WHEN SQLSTATE 'RB001' THEN NULL;
    END;
END $f$;
"""
DECOMPOSE = [
    ("baseline: own counter row + insert into a 6-column, 1-index table", OWN_ROW_SCRIPT),
    ("own counter row + insert into a copy of booking.holds (LIKE INCLUDING ALL: its 7 indexes, domains, defaults)",
     """\\set q random(1, 4)
\\set id :client_id + 1
WITH taken AS (UPDATE bench_counter SET free = free - :q WHERE id = :id AND free >= :q RETURNING id)
INSERT INTO bench_holds_shaped (inventory_id, bucket_no, quantity, holder, expires_at, unit_amount)
SELECT CAST(:inv AS uuid), 0, :q, 'bench', clock_timestamp() + interval '15 minutes', 5000 FROM taken;
"""),
    ("... the same without holds_created_at_idx and holds_open_deadline_idx (2 of the 4 index entries a hold makes)",
     """\\set q random(1, 4)
\\set id :client_id + 1
WITH taken AS (UPDATE bench_counter SET free = free - :q WHERE id = :id AND free >= :q RETURNING id)
INSERT INTO bench_holds_two_fewer (inventory_id, bucket_no, quantity, holder, expires_at, unit_amount)
SELECT CAST(:inv AS uuid), 0, :q, 'bench', clock_timestamp() + interval '15 minutes', 5000 FROM taken;
"""),
    ("... the same with the primary key only (booking.holds' 13 columns, domains, defaults)",
     """\\set q random(1, 4)
\\set id :client_id + 1
WITH taken AS (UPDATE bench_counter SET free = free - :q WHERE id = :id AND free >= :q RETURNING id)
INSERT INTO bench_holds_pkey_only (inventory_id, bucket_no, quantity, holder, expires_at, unit_amount)
SELECT CAST(:inv AS uuid), 0, :q, 'bench', clock_timestamp() + interval '15 minutes', 5000 FROM taken;
"""),
    ("that statement sent by pgbench (prepared; custom plans: planned at every call)",
     "\\set q random(1, 4)\n" + ONE_STATEMENT_HOLD.format(inv="CAST(:inv AS uuid)", q=":q", holder="'bench'") + ";\n"),
    ("plpgsql, one statement: the client's own bucket by key (no SKIP LOCKED, no inventory read) + insert into booking.holds",
     "\\set q random(1, 4)\n\\set b :client_id % 64\nSELECT * FROM booking.bench_hold_keyed(:inv, :q, 'bench', :b);\n"),
    ("plpgsql, one statement: inventory read, SKIP LOCKED bucket, insert (RETURN QUERY)",
     "\\set q random(1, 4)\nSELECT * FROM booking.bench_hold_plain(:inv, :q, 'bench');\n"),
    ("... SECURITY DEFINER with api.*'s two SET clauses",
     "\\set q random(1, 4)\nSELECT * FROM booking.bench_hold_definer(:inv, :q, 'bench');\n"),
    ("... and the statement in an EXCEPTION block (a subtransaction)",
     "\\set q random(1, 4)\nSELECT * FROM booking.bench_hold_subtransaction(:inv, :q, 'bench');\n"),
    ("api.place_hold as it is", PLACE_HOLD_SCRIPT),
]


def decompose(url: str, seconds: int, clients: int) -> None:
    with connect(url) as conn:
        conn.execute(DECOMPOSE_SETUP)
        conn.execute("ANALYZE")
    rows = []
    for label, script in DECOMPOSE:
        inventory = new_inventory(url, f"decompose-{len(rows)}")
        tps, _, _, cpu, client_cpu = sample_waits(url, script, clients, seconds, {"inv": inventory})
        rows.append([label, f"{cpu:,.0f}", f"{client_cpu:,.0f}", f"{tps:,.0f}"])
    table(f"place_hold's CPU one layer at a time: {clients} pgbench clients, {seconds} s each (CPU us per "
          "transaction varies with the machine's load by about 15%, tps much more)",
          ["script", "cluster CPU us/tx", "pgbench CPU us/tx", "tps (load-dependent)"], rows)
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--waits", type=int, default=0, metavar="SECONDS",
                        help="also sample wait events during SECONDS-long pgbench runs (load-dependent)")
    parser.add_argument("--clients", type=int, default=32, help="pgbench clients for --waits")
    parser.add_argument("--runs", default=",".join(WAIT_RUNS[:4]),
                        help=f"which --waits runs, comma-separated, of {','.join(WAIT_RUNS)} (default: the first four)")
    parser.add_argument("--skip-counts", action="store_true", help="no per-call tables (only --micro, --decompose, --waits)")
    parser.add_argument("--cases", default="baselines,place_hold,create_booking,ingest",
                        help="which cases to count, comma-separated (default: all)")
    parser.add_argument("--decompose", type=int, default=0, metavar="SECONDS",
                        help="place_hold's CPU per transaction one layer at a time, pgbench runs of SECONDS")
    parser.add_argument("--micro", action="store_true",
                        help="also measure pieces of a call alone (exception blocks, SET clauses, JSON building)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a server setting for the cluster (e.g. commit_delay=100): its measured effect")
    parser.add_argument("--explain", action="store_true",
                        help="after each case, one more call with auto_explain of every statement it runs")
    parser.add_argument("--perf", action="store_true",
                        help="record each measured case's backend with perf (cpu-clock) and print its top symbols")
    parser.add_argument("--apply", help="a SQL file run after the migrations (a variant to measure)")
    args = parser.parse_args()
    PERF[0] = args.perf
    pg = start_cluster(fsync=True, extra=PROFILE_SETTINGS + tuple(f"-c {x}" for x in args.setting))
    try:
        with connect(url_for(pg.url(), "postgres")) as conn:
            conn.execute("CREATE DATABASE bench")
            conn.execute("CREATE EXTENSION pg_stat_statements")
        url = url_for(pg.url(), "bench")
        migrate(url)
        with connect(url) as conn:
            conn.execute("CREATE EXTENSION pg_walinspect")
            if args.apply:
                with open(args.apply) as f:
                    conn.execute(f.read())
                print(f"applied {args.apply}")
        if not args.skip_counts:
            profile(url, url_for(pg.url(), "postgres"), args.calls, args.explain, set(args.cases.split(",")))
        if args.micro:
            micro(url)
        if args.decompose:
            with connect(url) as conn:
                conn.execute(BASELINE_SETUP)
            decompose(url, args.decompose, args.clients)
        if args.waits:
            with connect(url) as conn:
                conn.execute(BASELINE_SETUP)
            waits(url, args.waits, args.clients, set(args.runs.split(",")))
        with connect(url) as conn:
            broken = [conn.execute(f"SELECT count(*) FROM ops.{v}").fetchone()[0]
                      for v in ("oversold_inventory", "ledger_imbalances", "broken_rows")]
        print(f"\nops.oversold_inventory, ops.ledger_imbalances, ops.broken_rows rows: {broken}")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
