"""One real PostgreSQL 15 cluster with pg_cron for the whole run; a fresh database per test."""

from __future__ import annotations

import pytest
import testing.postgresql

from tests.pg import (
    APP_LOGIN, CRON_DB, OPS_LOGIN, ROOT, TEMPLATE_DB, Database, connect, database_from_template,
    empty_database, migrate, url_for,
)

POSTGRES_ARGS = " ".join([
    "-h 127.0.0.1",
    "-F",  # no fsync: a test cluster
    "-c logging_collector=off",
    "-c shared_preload_libraries=pg_cron",
    f"-c cron.database_name={CRON_DB}",
    "-c cron.use_background_workers=on",
    "-c max_worker_processes=32",
    "-c max_connections=300",
    "-c log_min_messages=warning",
])


@pytest.fixture(scope="session")
def cluster():
    """The running cluster; its base URL names the pg_cron database."""
    # initdb and postgres refuse to run as root: these wrappers run them as 'postgres' then.
    pg = testing.postgresql.Postgresql(
        initdb=str(ROOT / "scripts" / "initdb"),
        postgres=str(ROOT / "scripts" / "postgres"),
        initdb_args="-U postgres -A trust -E UTF8 --locale=C.UTF-8",
        postgres_args=POSTGRES_ARGS,
    )
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
        for login, role in ((APP_LOGIN, "booking_app"), (OPS_LOGIN, "booking_ops")):
            conn.execute(f"CREATE ROLE {login} LOGIN")
            conn.execute(f"GRANT {role} TO {login}")
    migrate(url_for(cluster, TEMPLATE_DB))
    return cluster


@pytest.fixture
def db(migrated) -> Database:
    """A fresh migrated database (without pg_cron: cron correctness never depends on it)."""
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
