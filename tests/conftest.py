"""One real PostgreSQL 15 cluster with pg_cron for the whole run; a fresh database per test."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.shim.server import free_port
from tests.pg import (
    LOGINS, TEMPLATE_DB, Database, CRON_DB, connect, database_from_template, empty_database,
    ROOT, migrate, start_cluster, url_for, wait_until_up,
)

LOCALSTRIPE_API_KEY = "sk_test_booking_core"


@pytest.fixture(scope="session")
def cluster():
    """The running cluster; its base URL names the pg_cron database."""
    pg = start_cluster(fsync=False)
    try:
        yield pg.url()
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def migrated(cluster):
    """Migrates the pg_cron database and a template database for per-test copies."""
    migrate(cluster)
    admin = url_for(cluster, "postgres")
    with connect(admin) as conn:
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        for login, role in LOGINS.items():
            conn.execute(f"CREATE ROLE {login} LOGIN")
            conn.execute(f"GRANT {role} TO {login}")
    migrate(url_for(cluster, TEMPLATE_DB))
    return cluster


@pytest.fixture
def db(migrated) -> Database:
    """A fresh migrated database (without pg_cron: cron correctness never depends on it)."""
    with database_from_template(migrated) as database:
        yield database


@pytest.fixture(scope="module")
def module_db(migrated) -> Database:
    """A fresh migrated database shared by one module's tests (a shim process serving it
    is started once per module): each test keeps to its own rows."""
    with database_from_template(migrated) as database:
        yield database


@pytest.fixture
def cron_db(migrated) -> Database:
    """The database pg_cron runs in; shared by the whole run, so tests keep to their own rows."""
    return Database(migrated, CRON_DB)


@pytest.fixture
def blank_db(migrated) -> Database:
    """An empty database, nothing applied."""
    with empty_database(migrated) as database:
        yield database


@pytest.fixture(scope="session")
def localstripe():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.localstripe_server", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        # Any HTTP answer: it is up.
        wait_until_up(lambda: httpx.get(base + "/v1/customers", timeout=1,
                                        headers={"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}) is not None,
                      proc, "localstripe", interval=0.1, not_yet=(httpx.TransportError,))
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
