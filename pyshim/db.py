"""The pool, and the short lists of named calls the shim and the worker make (one SQL
function each)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from .settings import Settings

# Every call is one statement in its own transaction (autocommit). The FROM clause sets
# app.correlation_id for that transaction first: a subquery with a volatile function is
# never flattened, so it runs before the call in the select list.
_WITH_CORRELATION = (
    "SELECT {call} FROM (SELECT pg_catalog.set_config('app.correlation_id', %s, true)) AS ctx"
)

# The shim's calls (Database.call and call_rows): the function call alone, put in a
# statement that sets the correlation id.
QUERIES = {
    "ingest_stripe_event": "api.ingest_stripe_event(%s::jsonb)",
    "ingest_stripe_events": "api.ingest_stripe_events(%s::jsonb, %s::text[])",
    "record_stripe_event_failure": "api.record_stripe_event_failure(%s::jsonb, %s, %s)",
    "health": "api.health()",
    "idempotency_begin": "api.idempotency_begin(%s, %s, %s, %s::jsonb)",
    "idempotency_complete": "api.idempotency_complete(%s, %s, %s, %s::jsonb, %s)",
    "idempotency_fail": "api.idempotency_fail(%s, %s, %s, %s, %s)",
    "payment_intent_params": "api.payment_intent_params(%s::uuid)",
    "record_payment_intent": "api.record_payment_intent(%s::uuid, %s, %s, %s)",
    "rotate_refresh_token": "api.rotate_refresh_token(%s, %s)",
    "log_error": "api.log_error(%s, %s, %s, %s, %s::jsonb, %s)",
}

# The worker's calls (pyshim/worker.py), one SQL function each: whole statements, run by
# fetch_all in a transaction that sets the job's correlation id first.
WORKER_QUERIES = {
    "claim_jobs": "SELECT * FROM api.claim_jobs(%s, %s, %s, make_interval(secs => %s))",
    "complete_jobs": "SELECT api.complete_jobs(%s::uuid[], %s::uuid[], %s::jsonb[])",
    "fail_job": "SELECT api.fail_job(%s, %s, %s, %s)",
    "refunds_due": "SELECT * FROM api.refunds_due(%s::uuid, %s)",
    "record_stripe_refund": "SELECT api.record_stripe_refund(%s::jsonb)",
    "reconcile": "SELECT api.reconcile(%s::timestamptz, %s::timestamptz, %s::jsonb)",
    "window_epochs": "SELECT jsonb_build_object('start', extract(epoch FROM %s::timestamptz), "
                     "'end', extract(epoch FROM %s::timestamptz))",
}


def connection_kwargs(application_name: str, prepared_statements: bool) -> dict[str, Any]:
    """The arguments of every pooled connection. Without prepared statements (behind a
    pooler in transaction mode) psycopg's automatic preparation is off too:
    prepare_threshold=None; the calls then pass prepare=False."""
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": application_name}
    if not prepared_statements:
        kwargs["prepare_threshold"] = None
    return kwargs


async def fetch_all(pool: AsyncConnectionPool, sql: str, params: list[Any], correlation_id: str | None,
                    prepare: bool = True) -> list[tuple]:
    """Runs sql in a transaction that first sets app.correlation_id (when there is one);
    returns its rows. Used by the shim's named calls and by the worker. The setting is
    transaction-local (set_config(..., true)), so nothing outlives the transaction: safe
    behind a pooler in transaction mode."""
    async with pool.connection() as conn:
        async with conn.transaction():
            if correlation_id:
                await conn.execute("SELECT pg_catalog.set_config('app.correlation_id', %s, true)", [correlation_id],
                                   prepare=None if prepare else False)
            cur = await conn.execute(sql, params, prepare=prepare)
            return await cur.fetchall()


class Database:
    def __init__(self, settings: Settings):
        # Whether the calls prepare their statements (DB_PREPARED_STATEMENTS).
        self.prepare = settings.prepared_statements
        self.pool = AsyncConnectionPool(
            str(settings.database_url),
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.pool_timeout_s,
            reconnect_timeout=settings.pool_reconnect_timeout_s,
            kwargs=connection_kwargs("pyshim", settings.prepared_statements),
            open=False,
        )

    async def open(self) -> None:
        # Do not wait for connections: the shim starts (and answers 503) while the
        # database is down, and the pool keeps trying in the background.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def call_rows(self, name: str, params: list[Any], correlation_id: str) -> list[tuple]:
        """Runs a set-returning call (SELECT * FROM ...); returns its rows."""
        return await fetch_all(self.pool, f"SELECT * FROM {QUERIES[name]}", params, correlation_id, self.prepare)

    async def call(self, name: str, params: list[Any], correlation_id: str) -> Any:
        """Runs the named function call; returns the first column of its one row."""
        sql = _WITH_CORRELATION.format(call=QUERIES[name])
        async with self.pool.connection() as conn:
            # The call's placeholders come first in the text, the correlation id last.
            cur = await conn.execute(sql, [*params, correlation_id], prepare=self.prepare)
            row = await cur.fetchone()
        return row[0]
