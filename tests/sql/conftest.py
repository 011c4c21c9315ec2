"""Fixtures of the SQL tests (the cluster and `db` come from tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.pg import connect


@pytest.fixture
def app(db):
    """A connection as a booking_app login, to the test's database."""
    with connect(db.app_url) as conn:
        yield conn


@pytest.fixture
def shim(db):
    """A connection as a booking_shim login (Stripe events, PaymentIntents, token rotation)."""
    with connect(db.shim_url) as conn:
        yield conn


@pytest.fixture
def worker(db):
    """A connection as a booking_worker login (the job queue, refunds, reconciliation)."""
    with connect(db.worker_url) as conn:
        yield conn
