"""The queue bench's worker: python -m pyshim worker's Worker with one more kind,
bench.noop, whose jobs do nothing, so that what is measured is the queue itself (claim,
lease, complete). The kind is the bench's own: tests/bench/queue_bench.py adds it to its
bench database's jobs.job_kind domain (allow_noop_kind); production databases refuse it.

    .venv/bin/python -m tests.bench.noop_worker   (the environment of python -m pyshim worker)
"""

from __future__ import annotations

import logging
import re
import sys

from psycopg import sql

from pyshim.worker import Worker, main

NOOP_KIND = "bench.noop"


def allow_noop_kind(conn) -> None:
    """Adds bench.noop to jobs.job_kind's allowed values in this (the bench's) database: the
    domain's check is made again with the values it lists now plus this one. Checked at
    once (no NOT VALID): a longer list refuses no stored row."""
    (definition,), = conn.execute(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint AS c "
        "WHERE c.contypid = 'jobs.job_kind'::regtype AND c.conname = 'job_kind_check'").fetchall()
    kinds = [*re.findall(r"'([^']+)'", definition), NOOP_KIND]
    conn.execute("ALTER DOMAIN jobs.job_kind DROP CONSTRAINT job_kind_check")
    conn.execute(sql.SQL("ALTER DOMAIN jobs.job_kind ADD CONSTRAINT job_kind_check CHECK (VALUE IN ({}))").format(
        sql.SQL(", ").join(map(sql.Literal, kinds))))


class NoopWorker(Worker):
    def handlers_configured(self) -> dict:
        return {**super().handlers_configured(), NOOP_KIND: self.noop}

    async def noop(self, payload: dict, correlation_id: str | None, job_id=None) -> dict:
        return {}


if __name__ == "__main__":
    # Two log lines a job ("job started", "job done") would be most of a no-op job's cost:
    # the bench measures the queue, so only warnings and errors are written.
    logging.getLogger("pyshim.worker").setLevel(logging.WARNING)
    sys.exit(main(sys.argv[1:], make_worker=NoopWorker))
