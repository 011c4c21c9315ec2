"""Helpers for tests: the test cluster, databases made from the migrated template, SQL calls."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
import testing.postgresql

ROOT = Path(__file__).resolve().parents[1]
SQL = ROOT / "sql"
CRON_DB = "test"  # testing.postgresql's database; pg_cron lives here (cron.database_name)
TEMPLATE_DB = "booking_template"
# One login per duty (CONTRACT.md, Roles), each holding only its role.
LOGINS = {
    "app_login": "booking_app",  # an application server
    "shim_login": "booking_shim",  # the webhook shim
    "worker_login": "booking_worker",  # the job worker
    "ops_login": "booking_ops",  # on-call, psql
}


def start_cluster(fsync: bool = False, extra: tuple[str, ...] = ()) -> testing.postgresql.Postgresql:
    """A new PostgreSQL 15 cluster with pg_cron loaded, on 127.0.0.1 and a free port."""
    args = [
        "-h 127.0.0.1",
        "-c logging_collector=off",
        "-c shared_preload_libraries=pg_cron",
        f"-c cron.database_name={CRON_DB}",
        "-c cron.use_background_workers=on",
        "-c max_worker_processes=32",
        "-c max_connections=300",
        "-c log_min_messages=warning",
        *extra,
    ]
    if not fsync:
        args.append("-F")  # tests need no durability; benchmarks keep it
    # initdb and postgres refuse to run as root: these wrappers run them as 'postgres' then.
    return testing.postgresql.Postgresql(
        initdb=str(ROOT / "scripts" / "initdb"),
        postgres=str(ROOT / "scripts" / "postgres"),
        initdb_args="-U postgres -A trust -E UTF8 --locale=C.UTF-8",
        postgres_args=" ".join(args),
    )


def url_for(base_url: str, dbname: str, user: str = "postgres") -> str:
    head, _, _ = base_url.rpartition("/")
    scheme, _, hostpart = head.partition("://")
    hostpart = hostpart.split("@", 1)[-1]
    return f"{scheme}://{user}@{hostpart}/{dbname}"


def migrate(url: str, *extra: str, sql_dir: Path = SQL, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(sql_dir / "migrate.sh"), *extra, url],
        capture_output=True, text=True, check=check, timeout=300,
    )


def connect(url: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, **kwargs)


def one(url_or_conn, sql: str, params=None):
    """The first column of the first row (None when there is no row)."""
    if isinstance(url_or_conn, str):
        with connect(url_or_conn) as conn:
            return one(conn, sql, params)
    row = url_or_conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


class Database:
    """A database of the test cluster: `url` as superuser; `app_url`, `shim_url`,
    `worker_url`, `ops_url` as a login holding only that duty's role."""

    def __init__(self, base_url: str, name: str):
        self.name = name
        self.url = url_for(base_url, name)
        self.app_url = url_for(base_url, name, "app_login")
        self.shim_url = url_for(base_url, name, "shim_login")
        self.worker_url = url_for(base_url, name, "worker_login")
        self.ops_url = url_for(base_url, name, "ops_login")

    def one(self, sql: str, params=None):
        return one(self.url, sql, params)

    def rows(self, sql: str, params=None):
        with connect(self.url) as conn:
            return conn.execute(sql, params).fetchall()


@contextmanager
def database_from_template(base_url: str, template: str = TEMPLATE_DB):
    name = "t_" + uuid.uuid4().hex[:12]
    admin = url_for(base_url, "postgres")
    with connect(admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield Database(base_url, name)
    finally:
        with connect(admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def empty_database(base_url: str):
    with database_from_template(base_url, template="template0") as db:
        yield db


def wait_until(predicate, seconds: float = 20, interval: float = 0.1) -> bool:
    """Polls predicate until it is true or `seconds` have passed; returns whether it came true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_until_up(is_up, proc: subprocess.Popen, what: str, seconds: float = 30, interval: float = 0.05,
                  not_yet: tuple[type[BaseException], ...] = (OSError,)) -> None:
    """Polls is_up() until it is true: a server `proc` started. Raises if proc exits first or
    `seconds` pass; an error of not_yet (connection refused ...) counts as not up yet."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if is_up():
                return
        except not_yet:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {seconds:g} s")
        time.sleep(interval)


def env_with(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE_URL", "JWT_", "REFRESH_"))}
    env.update(overrides)
    return env
