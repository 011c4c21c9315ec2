"""The worker's own Prometheus metrics, on a port of its own (WORKER_METRICS_PORT).

The worker calls job_started(kind) when it starts a job and job_finished(kind, outcome,
seconds) when it is over (outcome: done; failed: recorded as failed, the database retries
it or declares it dead; lost: its completion could not be recorded or the lease had been
taken over; given_back: the worker stopped before it ended); start_server() once at
start-up. Kinds and outcomes are closed sets
(jobs.jobs' CHECK; the four outcomes), so the series stay few.

The port serves the default registry's text format at any path, without a token: bind it
to 127.0.0.1 (the default, WORKER_METRICS_ADDR to change) or to a network only Prometheus
reaches.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS = Counter("booking_worker_jobs", "Jobs the worker finished, by kind and outcome", ["kind", "outcome"])
DURATION = Histogram("booking_worker_job_duration_seconds", "Time the worker spent on a job, by kind",
                     ["kind"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
IN_FLIGHT = Gauge("booking_worker_jobs_in_flight", "Jobs the worker is running now, by kind", ["kind"])

OUTCOMES = ("done", "failed", "lost", "given_back")
_server = None  # (WSGIServer, thread) while serving


def job_started(kind: str) -> None:
    IN_FLIGHT.labels(kind).inc()


def job_finished(kind: str, outcome: str, seconds: float) -> None:
    IN_FLIGHT.labels(kind).dec()
    JOBS.labels(kind, outcome if outcome in OUTCOMES else "other").inc()
    DURATION.labels(kind).observe(seconds)


def start_server(port: int | None = None, addr: str | None = None) -> int | None:
    """Serves the metrics on port (default WORKER_METRICS_PORT; unset: no server); the port."""
    if port is None:
        value = os.environ.get("WORKER_METRICS_PORT", "").strip()
        if not value:
            return None
        if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= 65535:
            raise ValueError(f"WORKER_METRICS_PORT must be a port number, not {value!r}")
        port = int(value)
    global _server
    _server = start_http_server(port, addr=addr or os.environ.get("WORKER_METRICS_ADDR", "127.0.0.1"))
    return port


def stop_server() -> None:
    global _server
    if _server is not None:
        server, thread = _server
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        _server = None
