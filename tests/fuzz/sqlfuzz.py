"""A property-based fuzzer of every api.* function (issue 12), read from the catalog.

Each function found in pg_proc (pronamespace = 'api') is called, as the login whose duty it
is, with arguments drawn per SQL type from hostile pools mixed with valid ids made in a
fixture database. Per call: an error must carry an allowed SQLSTATE (class 22 or a contract
code) and must have written nothing (exact count(*) of every table of our schemas before
and after); after every call the invariant views must be empty. A call as a login outside
the function's duty must be 42501, exactly, and write nothing.

Findings are collected rather than raised, so that one run reports every function; the
caller asserts that there are none. `FUZZ_EXAMPLES` sets the examples per function.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import psycopg
from hypothesis import HealthCheck, given, settings, strategies as st
from psycopg.types.json import Jsonb

from tests.pg import connect
from tests.stripe_events import dispute, event, payment_intent, refund

OUR_SCHEMAS = ("api", "ops", "core", "stripe", "booking", "ledger", "jobs", "migrate")
INVARIANT_VIEWS = ("ops.oversold_inventory", "ops.ledger_imbalances", "ops.broken_rows")
# Contract, "SQLSTATE codes": what a bad argument may raise. Class 22 is matched by prefix.
CONTRACT_CODES = {"RB001", "RB002", "RB003", "RB004", "RB005", "RB006", "RI001", "RI002", "RW001", "RA001", "RA002"}
LOGIN_ORDER = ("app_login", "shim_login", "worker_login", "ops_login")
STATEMENT_TIMEOUT_MS = 20_000  # a call that hangs is a finding (57014), not a stuck test


def allowed(sqlstate: str | None) -> bool:
    return sqlstate is not None and (sqlstate.startswith("22") or sqlstate in CONTRACT_CODES)


# --- the catalog --------------------------------------------------------------------------

@dataclass
class Arg:
    name: str
    type: str  # format_type(): 'text', 'integer', 'uuid[]', ...
    has_default: bool


@dataclass
class Function:
    name: str
    signature: str  # regprocedure text, e.g. api.place_hold(uuid,integer,text,text)
    args: list[Arg]
    duty_logins: list[str]
    other_logins: list[str]


def api_functions(superuser_url: str, logins: dict[str, str]) -> list[Function]:
    """Every api function with its input arguments, and which test logins may call it."""
    with connect(superuser_url) as conn:
        rows = conn.execute(
            """
            SELECT p.oid, p.proname, p.oid::regprocedure::text, p.pronargdefaults,
                   coalesce(p.proargnames, '{}'), coalesce(p.proargmodes::text[], '{}'),
                   ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) AS t)
            FROM pg_proc AS p
            WHERE p.pronamespace = 'api'::regnamespace
            ORDER BY p.proname, p.oid
            """
        ).fetchall()
        functions = []
        for oid, name, signature, ndefaults, argnames, argmodes, intypes in rows:
            # proargnames covers OUT/TABLE columns too; keep the inputs only.
            in_names = [n for i, n in enumerate(argnames) if not argmodes or argmodes[i] in ("i", "b", "v")]
            args = [Arg(in_names[i], intypes[i], i >= len(intypes) - ndefaults) for i in range(len(intypes))]
            duty, other = [], []
            for login in LOGIN_ORDER:
                ok = conn.execute(
                    "SELECT has_function_privilege(%s, %s::oid, 'EXECUTE') AND has_schema_privilege(%s, 'api', 'USAGE')",
                    (logins[login], oid, logins[login]),
                ).fetchone()[0]
                (duty if ok else other).append(login)
            functions.append(Function(name, signature, args, duty, other))
    return functions


def count_query(conn) -> str:
    """One query: the exact count(*) of every table in our schemas."""
    tables = [
        r[0] for r in conn.execute(
            """
            SELECT format('%%I.%%I', n.nspname, c.relname)
            FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
            ORDER BY 1
            """,
            (list(OUR_SCHEMAS),),
        ).fetchall()
    ]
    assert tables, "no tables found in our schemas"
    return "SELECT jsonb_build_object(" + ", ".join(f"'{t}', (SELECT count(*) FROM {t})" for t in tables) + ")"


# --- the fixture: valid values ------------------------------------------------------------

@dataclass
class Valid:
    """Real rows of the fixture database, for the strategies to mix with hostile values."""
    inventory_ids: list = field(default_factory=list)
    hold_ids: list = field(default_factory=list)
    booking_ids: list = field(default_factory=list)
    job_ids: list = field(default_factory=list)
    lease_tokens: list = field(default_factory=list)
    family_ids: list = field(default_factory=list)
    token_hashes: list = field(default_factory=list)
    payment_intent_ids: list = field(default_factory=list)
    events: list = field(default_factory=list)  # JSON texts of Stripe events
    refunds: list = field(default_factory=list)  # JSON texts of Stripe refund objects

    def uuids(self):
        return self.inventory_ids + self.hold_ids + self.booking_ids + self.job_ids + self.lease_tokens + self.family_ids


def make_fixture(db) -> Valid:
    """Inventories, holds in each state, bookings pending and paid, claimed jobs, refresh
    tokens and Stripe events, made through the api as each duty would."""
    v = Valid()
    with connect(db.app_url) as app, connect(db.shim_url) as shim, connect(db.worker_url) as worker:
        for capacity, amount in ((50, 2500), (2, 100), (1_000_000, 1)):
            v.inventory_ids.append(app.execute(
                "SELECT api.create_inventory(%s, %s, %s, 'usd')", (f"fz-{uuid.uuid4().hex[:8]}", capacity, amount)
            ).fetchone()[0])
        inv = v.inventory_ids[0]
        for i in range(8):
            hold_id, _ = app.execute("SELECT * FROM api.place_hold(%s, 1, 'alice', %s)", (inv, f"fz-{i}")).fetchone()
            v.hold_ids.append(hold_id)
        app.execute("SELECT api.release_hold(%s)", (v.hold_ids[7],))
        for i in range(5):
            booking = app.execute("SELECT api.create_booking(%s, 'alice', %s)", (f"fz-b{i}", [v.hold_ids[i]])).fetchone()[0]
            v.booking_ids.append(uuid.UUID(booking["booking_id"]))
        # Booking 0 is paid (then partly refunded and disputed); 1..4 await payment, each with a
        # payment intent; 5 and 6 are live holds of nobody's booking.
        for booking_id in v.booking_ids:
            pi = "pi_fz" + uuid.uuid4().hex[:10]
            v.payment_intent_ids.append(pi)
            shim.execute("SELECT api.record_payment_intent(%s, %s, %s, 'requires_payment_method')",
                         (booking_id, pi, "secret_" + pi))
        pi = v.payment_intent_ids[0]
        paid = event("payment_intent.succeeded", payment_intent(pi, v.booking_ids[0], 2500))
        partial = event("charge.refunded", {"id": "ch_fz", "object": "charge", "payment_intent": pi, "amount": 2500,
                                            "amount_refunded": 100, "currency": "usd",
                                            "refunds": {"data": [refund("re_fz1", pi, 100)]}})
        disputed = event("charge.dispute.created", dispute("dp_fz1", pi, 50))
        for evt in (paid, partial, disputed):
            shim.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(evt),))
        # Events not yet stored, valid for the bookings: the fuzzer mutates them (and gives
        # them fresh ids, so that a mutation is applied rather than taken for a duplicate).
        for booking_id, pi1 in zip(v.booking_ids[1:], v.payment_intent_ids[1:]):
            v.events += [json.dumps(e) for e in (
                event("payment_intent.succeeded", payment_intent(pi1, booking_id, 2500)),
                event("payment_intent.payment_failed", payment_intent(pi1, booking_id, 2500, status="requires_payment_method")),
                event("payment_intent.canceled", payment_intent(pi1, booking_id, 2500, status="canceled")),
                event("checkout.session.completed", {"id": "cs_fz" + pi1, "object": "checkout.session",
                                                     "payment_status": "paid", "payment_intent": pi1, "amount_total": 2500,
                                                     "currency": "usd", "metadata": {"booking_id": str(booking_id)}}),
                event("refund.created", refund("re_fz" + pi1, pi1, 2500)),
                event("charge.dispute.created", dispute("dp_fz" + pi1, pi1, 2500)),
            )]
        v.events += [json.dumps(e) for e in (
            event("refund.created", refund("re_fz2", pi, 200)),
            event("charge.dispute.closed", dispute("dp_fz1", pi, 50, status="won")),
            paid, event(),
        )]
        v.refunds += [json.dumps(refund("re_fz3", pi, 300)), json.dumps(refund("re_fz4", v.payment_intent_ids[1], 2500))]
        for i in range(3):
            h = os.urandom(32)
            v.token_hashes.append(h)
            v.family_ids.append(app.execute("SELECT api.issue_refresh_token(%s, %s)", (f"user-{i}", h)).fetchone()[0])
    with connect(db.url) as conn:
        for kind in ("stripe.refund", "alert.notify", "stripe.reconcile"):
            conn.execute("SELECT jobs.enqueue(%s, %s)", (kind, Jsonb({"fuzz": True})))
    with connect(db.worker_url) as worker:
        for job_id, _, _, _, token in worker.execute(
                "SELECT * FROM api.claim_jobs('fz-worker', ARRAY['email.booking_confirmed', 'alert.notify'], 10)"):
            v.job_ids.append(job_id)
            v.lease_tokens.append(token)
        v.job_ids += [r[0] for r in connect(db.url).execute("SELECT job_id FROM jobs.jobs WHERE status = 'queued'")]
    return v


# --- strategies ---------------------------------------------------------------------------

NULL = st.none()
CONTROL = "".join(chr(c) for c in range(1, 32)) + "\x7f\u0085\u2028\u2029\u202e\ufeff"
QUOTES = ["'", "''", '"', "\\", "'; DROP TABLE stripe.events; --", "%s", "%(x)s", "$1", "$$", "E'\\x00'", "\\u0000"]
text_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")  # NUL cannot reach PostgreSQL
HOSTILE_TEXT = st.one_of(
    NULL, st.just(""), st.just("a" * 10_000), st.just("é" * 5_000), st.just(" "),
    st.sampled_from(QUOTES), st.text(alphabet=CONTROL, min_size=1, max_size=20),
    st.text(alphabet=text_chars, max_size=40), st.text(alphabet=text_chars, min_size=200, max_size=300),
)
INT4, INT8 = 2**31, 2**63
HOSTILE_INT = st.one_of(NULL, st.sampled_from([0, -1, 1, INT4 - 1, -INT4, INT4, -INT4 - 1]), st.integers(-INT4, INT4 - 1))
HOSTILE_BIGINT = st.one_of(NULL, st.sampled_from([0, -1, 1, INT8 - 1, -INT8, INT8, -INT8 - 1, INT4]),
                           st.integers(-INT8, INT8 - 1))
HOSTILE_UUID = st.one_of(NULL, st.just(uuid.UUID(int=0)), st.just(uuid.UUID(int=2**128 - 1)), st.uuids())
# Passed as text and cast by the server, so that PostgreSQL's own limits are reached.
HOSTILE_INTERVAL = st.one_of(NULL, st.sampled_from([
    "0", "-1 second", "-15 minutes", "1 microsecond", "-178000000 years", "178000000 years", "2147483647 days",
    "-2147483648 days", "2147483647 months", "9223372036854775807 microseconds", "1 second", "15 minutes",
    "100 years", "-1 day +1 second",
]))
HOSTILE_TIMESTAMPTZ = st.one_of(NULL, st.sampled_from([
    "infinity", "-infinity", "epoch", "4713-01-01 00:00:00+00 BC", "294276-12-31 23:59:59+00", "now",
    "2000-01-01 00:00:00+00", "1970-01-01 00:00:00+14",
]), st.datetimes(timezones=st.just(dt.timezone.utc)).map(lambda d: d.isoformat()))
HOSTILE_BOOL = st.one_of(NULL, st.booleans())
HOSTILE_BYTEA = st.one_of(NULL, st.just(b""), st.just(bytes(range(256))), st.just(b"\x00" * 32), st.binary(max_size=64),
                          st.just(os.urandom(1 << 20)))


def deep(n: int, kind: str) -> str:
    return "[" * n + "]" * n if kind == "array" else '{"a":' * n + "1" + "}" * n


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-INT8 * 4, INT8 * 4), st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=text_chars, max_size=20), st.sampled_from(QUOTES + ["\u0000", "usd", "USD", ""]),
)
# Values close to what Stripe sends, where the code must still say no (or yes) properly.
NEAR_VALID = [0, -1, 1, 2499, 2501, 2**31, 2**63, -2**63, 1.5, "2500", "usd", "USD", "eur", "us", "", "usdd",
              "succeeded", "paid", "unpaid", "canceled", "payment_intent.succeeded", "refund.created", "pi_unknown",
              "00000000-0000-0000-0000-000000000000", "not-a-uuid", {"booking_id": "not-a-uuid"}, True, None]
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(alphabet=text_chars, max_size=10), inner, max_size=4)),
    max_leaves=12)
HOSTILE_JSONB = st.one_of(
    NULL, st.sampled_from([
        "null", "true", "false", "0", "-0", "1e308", "-1e-308", "1e1000", "123456789012345678901234567890",
        '""', '"x"', "[]", "{}", "[null]", '{"": null}', '"\\u0000"',
        deep(5_000, "array"), deep(5_000, "object"),
        json.dumps({"x": "a" * (1 << 20)}), json.dumps(list(range(150_000))),
    ]),
    JSON_VALUES.map(json.dumps),
)


def mutated(texts: list[str]):
    """A valid payload with one value, anywhere in it, replaced by any JSON (or removed)."""
    @st.composite
    def build(draw):
        doc = json.loads(draw(st.sampled_from(texts)))
        paths, stack = [], [((), doc)]
        while stack:
            path, node = stack.pop()
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            for k, child in items:
                paths.append(path + (k,))
                stack.append((path + (k,), child))
        if not paths:
            return json.dumps(doc)
        # The money, ids and states live in data.object: mutate there more often.
        inner = sorted((p for p in paths if p[:2] == ("data", "object") and len(p) > 2), key=str)
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(inner if inner and draw(st.integers(0, 9)) < 7 else sorted(paths, key=str)))
            try:
                parent = doc
                for k in path[:-1]:
                    parent = parent[k]
                if isinstance(parent, dict) and draw(st.booleans()):
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = draw(st.one_of(JSON_VALUES, st.sampled_from(NEAR_VALID)))
            except (KeyError, IndexError, TypeError):
                pass  # an earlier mutation removed or replaced this path
        if isinstance(doc, dict) and isinstance(doc.get("id"), str) and draw(st.integers(0, 9)) > 0:
            doc["id"] = doc["id"].split("_", 1)[0] + "_fz" + draw(st.uuids()).hex
        return json.dumps(doc)
    return build()


def arrays_of(element, valid: list | None = None):
    pools = [NULL, st.just([]), st.just([None]), st.lists(element, max_size=5)]
    if valid:
        pools += [st.lists(st.sampled_from(valid), min_size=1, max_size=4)]
    return st.one_of(*pools)


TEXT_HINTS = {
    "p_currency": ["usd", "eur", "USD", "us", "usdd", "xxx"],
    "p_severity": ["debug", "info", "warning", "error", "critical", "fatal"],
    "p_status": ["succeeded", "requires_payment_method", "processing", "canceled"],
    "p_sqlstate": ["22023", "RB001", "XX000", "23505"],
    "p_scope": ["payments", "fz-scope"], "p_key": ["k1", "fz-key"], "p_principal": ["", "alice"],
    "p_holder": ["alice", "bob"], "p_user_id": ["user-0", "user-1"], "p_worker": ["fz-worker", "w2"],
    "p_hold_key": ["fz-0", "fz-9"], "p_idempotency_key": ["fz-b0", "fz-b9"], "p_sku": ["fz-new"],
    "p_reason": ["customer asked"], "p_source": ["webhook", "worker"], "p_message": ["boom"],
    "p_client_secret": ["secret_x"],
}
KINDS = ["email.booking_confirmed", "email.waitlist_offer", "stripe.refund", "stripe.reconcile", "alert.notify"]


def strategy_for(arg: Arg, v: Valid):
    """Hostile values of the argument's type, mixed with valid ones (by type and by name)."""
    t, name = arg.type, arg.name
    uuids = v.uuids()
    if t == "text":
        hints = TEXT_HINTS.get(name, []) + (v.payment_intent_ids if "payment_intent" in name else [])
        return st.one_of(HOSTILE_TEXT, st.sampled_from(hints)) if hints else HOSTILE_TEXT
    if t == "integer":
        return st.one_of(HOSTILE_INT, st.integers(1, 5), st.sampled_from([200, 500, 100]))
    if t == "bigint":
        return st.one_of(HOSTILE_BIGINT, st.sampled_from([1, 100, 2500]))
    if t == "uuid":
        return st.one_of(HOSTILE_UUID, st.sampled_from(uuids), st.sampled_from(uuids))
    if t == "interval":
        return HOSTILE_INTERVAL
    if t == "timestamp with time zone":
        return HOSTILE_TIMESTAMPTZ
    if t == "boolean":
        return HOSTILE_BOOL
    if t == "bytea":
        return st.one_of(HOSTILE_BYTEA, st.sampled_from(v.token_hashes))
    if t == "jsonb":
        valid = {"p_event": v.events, "p_refund": v.refunds}.get(name)
        if name == "p_events":
            one_event = st.one_of(mutated(v.events), st.sampled_from(v.events))
            return st.one_of(HOSTILE_JSONB, st.lists(one_event, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"))
        if valid:
            return st.one_of(HOSTILE_JSONB, st.sampled_from(valid), mutated(valid), mutated(valid))
        return HOSTILE_JSONB
    if t == "text[]":
        pool = KINDS if name == "p_kinds" else ["req-1", "req-2"]
        return st.one_of(arrays_of(HOSTILE_TEXT, pool), st.just(["x"] * 10_000))
    if t == "uuid[]":
        return st.one_of(arrays_of(st.one_of(HOSTILE_UUID, st.sampled_from(uuids)), uuids),
                         st.just([uuid.uuid4() for _ in range(10_000)]), st.just([None] * 10_000))
    if t == "jsonb[]":
        return st.one_of(arrays_of(HOSTILE_JSONB, ["{}", "null"]), st.just(["{}"] * 10_000))
    raise NotImplementedError(f"no strategy for {t} (argument {name}): add one to tests/fuzz/sqlfuzz.py")


def call_strategy(fn: Function, v: Valid):
    """A list of (arg, value) to pass by name; arguments with a default are sometimes left out."""
    parts = []
    for arg in fn.args:
        s = strategy_for(arg, v).map(lambda value, a=arg: (a, value))
        parts.append(st.one_of(st.just(None), s) if arg.has_default else s)
    return st.tuples(*parts).map(lambda xs: [x for x in xs if x is not None])


def adapt(arg: Arg, value):
    if value is None:
        return None
    if arg.type == "jsonb":
        return Jsonb(value, dumps=lambda s: s)  # already JSON text: sent as is
    if arg.type == "jsonb[]":
        return [None if x is None else Jsonb(x, dumps=lambda s: s) for x in value]
    return value


def call_sql(fn: Function, chosen) -> str:
    schema_name = fn.signature.split("(", 1)[0]
    named = ", ".join(f'"{a.name}" => %s::{a.type}' for a, _ in chosen)
    return f"SELECT * FROM {schema_name}({named})"


# --- the run ------------------------------------------------------------------------------

@dataclass
class Stats:
    calls: Counter = field(default_factory=Counter)
    errors: defaultdict = field(default_factory=lambda: defaultdict(Counter))
    findings: list = field(default_factory=list)

    def finding(self, fn: str, what: str, chosen=None):
        args = "" if chosen is None else ", ".join(f"{a.name}={short(x)}" for a, x in chosen)
        self.findings.append(f"{fn}: {what} [{args}]")

    def table(self) -> str:
        per_fn = Counter(f.split(":", 1)[0] for f in self.findings)
        lines = [f"{'function':<44} {'calls':>6}  {'findings':>8}  errors by SQLSTATE", "-" * 110]
        for fn in sorted(self.calls):
            errs = " ".join(f"{k}:{n}" for k, n in sorted(self.errors[fn].items())) or "-"
            lines.append(f"{fn:<44} {self.calls[fn]:>6}  {per_fn[fn]:>8}  {errs}")
        lines.append(f"{'total':<44} {sum(self.calls.values()):>6}  {len(self.findings):>8}")
        return "\n".join(lines)


def short(x, n: int = 80) -> str:
    r = repr(x)
    return r if len(r) <= n else f"{r[:n]}... ({len(r)} chars)"


class Fuzzer:
    def __init__(self, db, valid: Valid, examples: int):
        self.db, self.valid, self.examples = db, valid, examples
        self.stats = Stats()
        self.admin = connect(db.url)
        self.counts_sql = count_query(self.admin)
        self.conns = {}
        for login, url in (("app_login", db.app_url), ("shim_login", db.shim_url),
                           ("worker_login", db.worker_url), ("ops_login", db.ops_url)):
            self.conns[login] = connect(url, options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")

    def close(self):
        for conn in [self.admin, *self.conns.values()]:
            conn.close()

    def counts(self) -> dict:
        return self.admin.execute(self.counts_sql).fetchone()[0]

    def invariants_broken(self) -> list[str]:
        return [view for view in INVARIANT_VIEWS if self.admin.execute(f"SELECT EXISTS (SELECT FROM {view})").fetchone()[0]]

    def call(self, fn: Function, login: str, chosen, expect: str | None = None) -> None:
        """One call; records its outcome and any finding. expect: the one SQLSTATE required."""
        label = fn.name if expect is None else f"{fn.name} as {login}"
        self.stats.calls[label] += 1
        conn = self.conns[login]
        before = self.counts()
        try:
            conn.execute(call_sql(fn, chosen), [adapt(a, x) for a, x in chosen]).fetchall()
        except psycopg.Error as exc:
            sqlstate = exc.sqlstate
            self.stats.errors[label][sqlstate or "client"] += 1
            ok = sqlstate == expect if expect else allowed(sqlstate)
            if not ok:
                message = (exc.diag.message_primary or str(exc))[:200]
                self.stats.finding(label, f"SQLSTATE {sqlstate}: {message}", chosen)
            if conn.closed or conn.broken:
                self.conns[login] = connect(conn.info.dsn, options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
            after = self.counts()
            if after != before:
                changed = {t: (before[t], after[t]) for t in before if before[t] != after.get(t)}
                self.stats.finding(label, f"an error ({sqlstate}) wrote rows: {changed}", chosen)
        except Exception as exc:  # noqa: BLE001 - a client-side failure is a finding too
            self.stats.finding(label, f"{type(exc).__name__}: {str(exc)[:200]}", chosen)
        else:
            if expect:
                self.stats.finding(label, f"succeeded where {expect} was required", chosen)
        broken = self.invariants_broken()
        if broken:
            self.stats.finding(label, f"invariant views not empty: {broken}", chosen)

    def settings(self, examples: int):
        return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                        suppress_health_check=list(HealthCheck), print_blob=False)

    def fuzz(self, fn: Function) -> None:
        """Hostile calls as the function's duty login."""
        login = fn.duty_logins[0]

        @self.settings(self.examples)
        @given(call_strategy(fn, self.valid))
        def run(chosen):
            self.call(fn, login, chosen)

        run()

    def fuzz_outside_duty(self, fn: Function, examples: int) -> None:
        """Well-typed calls as a login outside the duty: 42501 exactly, and nothing written."""
        if not fn.other_logins:
            return
        rng = random.Random(fn.signature)
        login = rng.choice(fn.other_logins)

        @self.settings(examples)
        @given(call_strategy(fn, self.valid))
        def run(chosen):
            # Only values the server accepts as they are: a cast failing at plan time would
            # answer before the privilege check.
            chosen = [(a, x) for a, x in chosen if a.type in ("uuid", "boolean", "bytea") or x is None]
            required = {a.name for a in fn.args if not a.has_default}
            chosen += [(a, None) for a in fn.args if a.name in required and a.name not in {c.name for c, _ in chosen}]
            self.call(fn, login, chosen, expect="42501")

        run()
