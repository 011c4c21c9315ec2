"""pyshim.worker_metrics: the worker's metrics on a port of its own, parsed with
prometheus_client's parser (jobs by kind and outcome, durations, in flight)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyshim import worker_metrics
from tests.shim.server import free_port


def scrape(port: int) -> dict:
    resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert resp.status_code == 200
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def value(family, name, **labels) -> float:
    return next(s.value for s in family.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_jobs_by_kind_and_outcome_durations_and_in_flight(monkeypatch):
    port = free_port()
    monkeypatch.setenv("WORKER_METRICS_PORT", str(port))
    assert worker_metrics.start_server() == port
    try:
        check(port)
    finally:
        worker_metrics.stop_server()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def check(port: int) -> None:
    worker_metrics.job_started("alert.notify")
    worker_metrics.job_started("stripe.refund")
    m = scrape(port)
    assert m["booking_worker_jobs_in_flight"].type == "gauge"
    assert value(m["booking_worker_jobs_in_flight"], "booking_worker_jobs_in_flight", kind="alert.notify") == 1
    before = 0.0
    if any(s.labels.get("kind") == "alert.notify" for s in m["booking_worker_jobs"].samples):
        before = value(m["booking_worker_jobs"], "booking_worker_jobs_total", kind="alert.notify", outcome="done")
    worker_metrics.job_finished("alert.notify", "done", 0.2)
    worker_metrics.job_finished("stripe.refund", "failed", 3.0)
    m = scrape(port)
    assert m["booking_worker_jobs"].type == "counter"
    assert value(m["booking_worker_jobs"], "booking_worker_jobs_total", kind="alert.notify", outcome="done") == before + 1
    assert value(m["booking_worker_jobs"], "booking_worker_jobs_total", kind="stripe.refund", outcome="failed") >= 1
    assert value(m["booking_worker_jobs_in_flight"], "booking_worker_jobs_in_flight", kind="alert.notify") == 0
    duration = m["booking_worker_job_duration_seconds"]
    assert duration.type == "histogram"
    assert value(duration, "booking_worker_job_duration_seconds_bucket", kind="stripe.refund", le="2.5") == 0
    assert value(duration, "booking_worker_job_duration_seconds_bucket", kind="stripe.refund", le="5.0") >= 1


@pytest.mark.parametrize("bad", ["0", "70000", "http", "８０"])
def test_a_bad_port_is_refused(monkeypatch, bad):
    monkeypatch.setenv("WORKER_METRICS_PORT", bad)
    with pytest.raises(ValueError, match="WORKER_METRICS_PORT"):
        worker_metrics.start_server()


def test_no_port_no_server(monkeypatch):
    monkeypatch.delenv("WORKER_METRICS_PORT", raising=False)
    assert worker_metrics.start_server() is None
