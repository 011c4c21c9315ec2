"""GET /ops: the on-call console, server-rendered HTML (no framework, no script).

Each panel reads one ops view or function (sql/views/ops.sql, sql/views/ops_console.sql)
as OPS_DATABASE_URL's login, which holds only booking_ops, in one read-only repeatable-read
transaction: every panel shows the same moment. Every value is escaped (html.escape); the
views return no payload, client secret, token or error detail, so none can be shown.
"""

from __future__ import annotations

import datetime as dt
import html
import time
from decimal import Decimal
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from . import ops_auth
from .db import connection_kwargs
from .settings import Settings

# How many rows a panel shows at most (the count of all is shown beside it).
PANEL_ROWS_MAX = 50

# One query per panel, each on one ops view or function. tests/bench/console_bench.py times them.
PANELS: dict[str, str] = {
    "now": "SELECT now()",
    "success_metrics": "SELECT metric, value, target, ok, period FROM ops.success_metrics",
    "open_errors": f"""
        SELECT fingerprint, severity, source, message, count, first_seen, last_seen, count(*) OVER () AS total
        FROM ops.open_errors
        ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'error' THEN 1 WHEN 'warning' THEN 2
                               WHEN 'info' THEN 3 ELSE 4 END, last_seen DESC
        LIMIT {PANEL_ROWS_MAX}""",
    "activity": "SELECT hour, holds, bookings, webhooks, errors FROM ops.activity_per_hour()",
    "holds": f"""
        SELECT sku, inventory_id, capacity, sold, live_held, expired_unswept, available, next_deadline,
               count(*) OVER () AS total
        FROM ops.holds_overview
        ORDER BY live_held + expired_unswept DESC, sku
        LIMIT {PANEL_ROWS_MAX}""",
    "jobs": "SELECT kind, status, count, oldest_due_at FROM ops.job_queue ORDER BY kind, status",
    "cron": """
        SELECT jobname, schedule, status, last_started_at, seconds_since_last_run, late_by_seconds,
               runs, failures, last_error
        FROM ops.cron_lateness
        ORDER BY jobname""",
    "stripe_events": f"""
        SELECT event_id, type, status, attempts, last_sqlstate, last_error, received_at, next_attempt_at,
               count(*) OVER () AS total
        FROM ops.stripe_events_failing
        ORDER BY received_at DESC
        LIMIT {PANEL_ROWS_MAX}""",
    "reconciliation": f"""
        SELECT ran_at, problem, kind, stripe_object_id, stripe_amount, ledger_amount, currency, booking_id,
               count(*) OVER () AS total
        FROM ops.reconciliation_mismatches
        ORDER BY mismatch_id DESC
        LIMIT {PANEL_ROWS_MAX}""",
}


def ops_pool(settings: Settings) -> AsyncConnectionPool | None:
    """The pool /ops and /metrics read through (None while OPS_TOKEN is unset)."""
    if settings.ops_token is None:
        return None
    url = settings.ops_database_url or settings.database_url
    return AsyncConnectionPool(
        str(url), min_size=1, max_size=settings.ops_pool_max_size, timeout=settings.pool_timeout_s,
        kwargs=connection_kwargs("pyshim-ops", settings.prepared_statements), open=False,
    )


async def read_panels(pool: AsyncConnectionPool, prepare: bool = True) -> dict[str, list[tuple]]:
    async with pool.connection() as conn:
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            # A console that is slow must not hold a snapshot (and vacuum) for long. Its
            # queries are many small index reads: compiling them (JIT) or starting parallel
            # workers for them costs more than it saves, on cores the webhooks need.
            await conn.execute("SET LOCAL statement_timeout = '5s'")
            await conn.execute("SET LOCAL jit = off")
            await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            out = {}
            for name, sql in PANELS.items():
                # Prepared: the success metrics' view alone takes milliseconds to plan.
                cur = await conn.execute(sql, prepare=prepare)
                out[name] = await cur.fetchall()
            return out


# ---------------------------------------------------------------------------------------
# Rendering. e() is the only way a value reaches the page.

def e(value: Any) -> str:
    if value is None:
        return '<span class="none">&mdash;</span>'
    if isinstance(value, dt.datetime):
        return html.escape(value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
    if isinstance(value, Decimal):
        value = value.normalize() if value == value.to_integral_value() else value
        return html.escape(f"{value:f}")
    return html.escape(str(value))


def short(value: Any, limit: int = 240) -> str:
    text = "" if value is None else str(value)
    return e(text if len(text) <= limit else text[: limit - 1] + "\u2026")


def badge(text: str, kind: str) -> str:
    return f'<span class="badge {html.escape(kind)}">{e(text)}</span>'


def table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def tr(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def section(anchor: str, title: str, body: str, note: str = "") -> str:
    note_html = f' <span class="note">{note}</span>' if note else ""
    return f'<section id="{html.escape(anchor)}"><h2>{e(title)}{note_html}</h2>{body}</section>'


def shown_of(rows: list[tuple]) -> str:
    total = rows[0][-1] if rows else 0
    return f"{len(rows)} of {total}" if total > len(rows) else e(total)


def bar_chart(title: str, hours: list[dt.datetime], values: list[int]) -> str:
    """An inline SVG bar chart: one bar per hour, a title per bar, the peak labelled."""
    width, height, pad = 360, 110, 18
    peak = max(values) if values and max(values) > 0 else 1
    bar_w = (width - 2 * pad) / max(len(values), 1)
    bars = []
    for i, (hour, v) in enumerate(zip(hours, values)):
        h = (height - 2 * pad) * v / peak
        x = pad + i * bar_w
        y = height - pad - h
        label = f"{hour.astimezone(dt.timezone.utc):%H}:00 UTC: {v}"
        bars.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}">'
                    f'<title>{e(label)}</title></rect>')
    first = f"{hours[0].astimezone(dt.timezone.utc):%H}:00 UTC" if hours else ""
    total = sum(values)
    return (
        f'<figure><figcaption>{e(title)} <span class="note">{e(total)} in 24 h, peak {e(max(values, default=0))}/h'
        f'</span></figcaption><svg role="img" aria-label="{e(title)} per hour" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"><line x1="{pad}" y1="{height - pad}" x2="{width - pad}" '
        f'y2="{height - pad}" class="axis"/>{"".join(bars)}'
        f'<text x="{pad}" y="{height - 4}">{e(first)}</text>'
        f'<text x="{width - pad}" y="{height - 4}" text-anchor="end">now</text>'
        f'<text x="{pad}" y="12">{e(peak if max(values, default=0) else 0)}</text></svg></figure>'
    )


SEVERITY = {"critical": "bad", "error": "bad", "warning": "warn", "info": "info", "debug": "info"}
CRON = {"ok": "good", "not_run_yet": "info", "late": "bad", "failed": "bad"}
JOB = {"queued": "info", "running": "info", "done in 24 h": "good", "failed": "warn", "dead": "bad"}
EVENT = {"failed": "warn", "dead": "bad"}


def render(panels: dict[str, list[tuple]], elapsed_ms: float) -> str:
    now = panels["now"][0][0]
    parts = []

    metric_rows = [
        tr(e(m), e(v), e(t), badge("met" if ok else "missed", "good" if ok else "bad"), e(p))
        for m, v, t, ok, p in panels["success_metrics"]
    ]
    missed = sum(1 for r in panels["success_metrics"] if not r[3])
    parts.append(section("success-metrics", "Success metrics", table(
        ["metric", "value", "target", "", "window"], metric_rows, "no metrics"),
        e(f"{missed} missed") if missed else "all met"))

    error_rows = [
        tr(badge(sev, SEVERITY.get(sev, "info")), e(cnt), e(first), e(last), e(src), short(msg),
           f'<code>{e(fp[:12])}</code>')
        for fp, sev, src, msg, cnt, first, last, _ in panels["open_errors"]
    ]
    parts.append(section("open-errors", "Open errors", table(
        ["severity", "count", "first seen", "last seen", "source", "message", "fingerprint"], error_rows,
        "no open error"), shown_of(panels["open_errors"]) + " open groups; ops.resolve_error(fingerprint, by) closes one"))

    activity = panels["activity"]
    hours = [r[0] for r in activity]
    charts = "".join(
        bar_chart(title, hours, [int(r[i]) for r in activity])
        for i, title in ((1, "Holds placed"), (2, "Bookings created"), (3, "Webhooks received"), (4, "Errors logged"))
    )
    parts.append(section("activity", "Last 24 hours, per hour", f'<div class="charts">{charts}</div>'))

    hold_rows = [
        tr(e(sku), e(cap), e(sold), e(live), (badge(str(unswept), "warn") if unswept else e(0)), e(avail),
           e(nxt), f"<code>{e(inv)}</code>")
        for sku, inv, cap, sold, live, unswept, avail, nxt, _ in panels["holds"]
    ]
    parts.append(section("holds", "Holds per inventory", table(
        ["sku", "capacity", "sold", "held", "dead, unswept", "available", "next deadline", "inventory"],
        hold_rows, "no inventory"), shown_of(panels["holds"]) + " inventories, busiest first"))

    job_rows = [tr(e(kind), badge(status, JOB.get(status, "info")), e(cnt), e(due))
                for kind, status, cnt, due in panels["jobs"]]
    parts.append(section("jobs", "Job queue", table(["kind", "status", "jobs", "oldest due"], job_rows, "no job")))

    cron_rows = [
        tr(e(name), f"<code>{e(sched)}</code>", badge(status, CRON.get(status, "info")), e(started), e(since),
           e(late), e(runs), e(fails), short(err, 160))
        for name, sched, status, started, since, late, runs, fails, err in panels["cron"]
    ]
    parts.append(section("cron", "Cron jobs", table(
        ["job", "schedule", "status", "last run", "seconds since", "late by (s)", "runs", "failures", "last error"],
        cron_rows, "no cron job registered")))

    event_rows = [
        tr(f"<code>{e(eid)}</code>", e(typ), badge(status, EVENT.get(status, "warn")), e(att), e(sqlstate),
           short(err, 160), e(received), e(nxt))
        for eid, typ, status, att, sqlstate, err, received, nxt, _ in panels["stripe_events"]
    ]
    parts.append(section("stripe-events", "Failed and dead Stripe events", table(
        ["event", "type", "status", "attempts", "SQLSTATE", "last error", "received", "next attempt"],
        event_rows, "none failing"), shown_of(panels["stripe_events"]) + "; ops.replay_stripe_event(id) re-applies one"))

    recon_rows = [
        tr(e(ran), e(problem), e(kind), f"<code>{e(obj)}</code>", e(s_amt), e(l_amt), e(cur), e(bid))
        for ran, problem, kind, obj, s_amt, l_amt, cur, bid, _ in panels["reconciliation"]
    ]
    parts.append(section("reconciliation", "Reconciliation mismatches", table(
        ["run", "problem", "kind", "Stripe object", "Stripe amount", "ledger amount", "currency", "booking"],
        recon_rows, "no mismatch"), shown_of(panels["reconciliation"])))

    return PAGE.format(
        now=e(now), elapsed=e(f"{elapsed_ms:.0f}"), body="\n".join(parts),
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>booking-core on-call console</title>
<link rel="icon" href="data:,">
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#1d1d1f;background:#fafafa}}
header{{display:flex;justify-content:space-between;align-items:baseline;border-bottom:1px solid #ccc}}
h1{{font-size:20px;margin:.6em 0}} h2{{font-size:16px;margin:1.4em 0 .4em}}
table{{border-collapse:collapse;background:#fff;width:100%}}
th,td{{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}}
th{{background:#f0f0f0;font-weight:600}} code{{font-size:12px}}
.note{{font-weight:400;color:#666;font-size:13px}} .empty{{color:#666}} .none{{color:#aaa}}
.badge{{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;color:#fff}}
.good{{background:#2e7d32}} .bad{{background:#c62828}} .warn{{background:#ef6c00}} .info{{background:#546e7a}}
.charts{{display:flex;flex-wrap:wrap;gap:1em}} figure{{margin:0;background:#fff;border:1px solid #ddd;padding:6px}}
figcaption{{font-weight:600}} svg rect{{fill:#1565c0}} svg text{{font-size:10px;fill:#555}}
svg .axis{{stroke:#999}}
</style></head><body>
<header><h1>booking-core on-call console</h1>
<span class="note">database time {now} UTC &middot; read in {elapsed} ms as booking_ops &middot; read-only</span></header>
{body}
</body></html>
"""


async def ops_console(request: Request) -> Response:
    denied = ops_auth.check(request, session_ok=True)
    if denied is not None:
        return denied
    started = time.perf_counter()
    panels = await read_panels(request.app.state.ops_pool, request.app.state.settings.prepared_statements)
    page = render(panels, (time.perf_counter() - started) * 1000)
    return HTMLResponse(page, headers=ops_auth.SECURITY_HEADERS)
