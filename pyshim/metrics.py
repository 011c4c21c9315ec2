"""GET /metrics: the shim's own metrics and gauges read from the database (prometheus-client).

The process metrics live in prometheus-client's default registry (with its process_*
and python_* collectors). The database gauges come from one call, ops.metrics_gauges(),
made as OPS_DATABASE_URL's login and reused for `metrics_db_cache_s` seconds; concurrent
scrapes wait for the one call in flight instead of making their own.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import ops_auth

log = logging.getLogger("pyshim.metrics")

REQUESTS = Counter("booking_http_requests", "HTTP requests answered, by route and status code",
                   ["route", "status"])
LATENCY = Histogram("booking_http_request_duration_seconds", "Time to answer an HTTP request, by route",
                    ["route"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
WEBHOOKS = Counter("booking_webhook_deliveries", "Stripe webhook deliveries, by outcome (the database's "
                   "answer, or rejected: a 4xx, failed: a 5xx)", ["outcome"])
BATCH_SIZE = Histogram("booking_webhook_batch_size", "Stripe events per group-commit transaction",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 100))
POOL = Gauge("booking_db_pool_connections", "Connections of the shim's pools (psycopg_pool get_stats): "
             "state size, available, or requests_waiting", ["pool", "state"])

# The database gauges, by the metric name ops.metrics_gauges() returns.
DB_GAUGES = {
    "live_holds": Gauge("booking_live_holds", "Holds before their deadline (live or booked)"),
    "expired_unswept_holds": Gauge("booking_expired_unswept_holds", "Holds past their deadline not yet swept"),
    "oldest_unswept_hold_seconds": Gauge("booking_oldest_unswept_hold_seconds",
                                         "Seconds since the deadline of the oldest unswept hold (0: none)"),
    "jobs_due": Gauge("booking_jobs_due", "Jobs queued or failed whose run time has come"),
    "jobs_dead": Gauge("booking_jobs_dead", "Jobs out of attempts (ops.retry_job makes one due again)"),
    "stripe_events_failed": Gauge("booking_stripe_events_failed", "Stripe events failing, to be retried"),
    "stripe_events_dead": Gauge("booking_stripe_events_dead", "Stripe events out of retries"),
    "open_critical_errors": Gauge("booking_open_critical_errors", "Unresolved error groups of severity critical"),
}
CRON_SILENCE = Gauge("booking_cron_seconds_since_last_run", "Seconds since each cron job last started "
                     "(since it was registered if it never ran)", ["job"])
CRON_FAILED = Gauge("booking_cron_last_run_failed", "1 when the cron job's last run failed", ["job"])
DB_GAUGES_OK = Gauge("booking_db_gauges_ok", "1 when the last read of the database gauges succeeded")
DB_GAUGES_AGE = Gauge("booking_db_gauges_age_seconds", "Age of the database gauges served")


class MetricsMiddleware:
    """Counts and times every HTTP request by route (its path if it is one of the app's
    routes, else 'other', so that scanners cannot make new series). Pure ASGI."""

    def __init__(self, app: ASGIApp, routes: list[str]) -> None:
        self.app, self.routes = app, frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            LATENCY.labels(route).observe(time.perf_counter() - started)
            REQUESTS.labels(route, str(status)).inc()


class GaugeCache:
    """ops.metrics_gauges(), read at most once per `ttl_s` seconds."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self.read_at = float("-inf")  # the last read that worked (booking_db_gauges_age_seconds)
        self.tried_at = float("-inf")  # the last attempt: a database that is down is tried once per ttl too
        self.lock = asyncio.Lock()

    async def refresh(self, pool) -> None:
        if time.monotonic() - self.tried_at < self.ttl_s:
            return
        async with self.lock:
            if time.monotonic() - self.tried_at < self.ttl_s:
                return  # another scrape read them (or tried) while this one waited
            self.tried_at = time.monotonic()
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute("SELECT metric, label, value FROM ops.metrics_gauges()")
                    rows = await cur.fetchall()
            except Exception as exc:  # noqa: BLE001 - served stale, flagged by booking_db_gauges_ok
                log.warning("reading the database gauges failed: %s", exc)
                DB_GAUGES_OK.set(0)
                return
            CRON_SILENCE.clear()
            CRON_FAILED.clear()
            for metric, label, value in rows:
                if metric in DB_GAUGES:
                    DB_GAUGES[metric].set(value)
                elif metric == "cron_seconds_since_last_run":
                    CRON_SILENCE.labels(label).set(value)
                elif metric == "cron_last_run_failed":
                    CRON_FAILED.labels(label).set(value)
            DB_GAUGES_OK.set(1)
            self.read_at = time.monotonic()


def _pool_stats(name: str, pool) -> None:
    stats = pool.get_stats()
    for state in ("pool_size", "pool_available", "requests_waiting"):
        POOL.labels(name, state.removeprefix("pool_")).set(stats.get(state, 0))


async def metrics(request: Request) -> Response:
    denied = ops_auth.check(request, session_ok=False)
    if denied is not None:
        return denied
    state = request.app.state
    if not hasattr(state, "gauge_cache"):
        state.gauge_cache = GaugeCache(state.settings.metrics_db_cache_s)
    await state.gauge_cache.refresh(state.ops_pool)
    DB_GAUGES_AGE.set(max(0.0, time.monotonic() - state.gauge_cache.read_at)
                      if state.gauge_cache.read_at > float("-inf") else -1)
    _pool_stats("shim", state.db.pool)
    _pool_stats("ops", state.ops_pool)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
