"""The shim and the worker behind a real pgbouncer (Debian's 1.18) in pool_mode=transaction,
started by the test on 127.0.0.1: with DB_PREPARED_STATEMENTS=false every signed webhook is
answered 200 and applied once and the worker finishes its jobs; with prepared statements on
the same pooler breaks (pgbouncer before 1.21 keeps no prepared statements)."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from aiosmtpd.controller import Controller

from pyshim.db import Database
from pyshim.settings import Settings
from tests.e2e.test_worker_stop import StallingInbox, log_lines, message_id
from tests.e2e.workers import start_worker, stop
from tests.pg import connect, wait_until
from tests.pgbouncer import pgbouncer, version
from tests.shim.server import free_port, shim
from tests.sql.helpers import new_inventory, place
from tests.stripe_events import encode, event, payment_intent, sign

SECRET = "whsec_pgbouncer_0123456789abcdef"


@pytest.fixture
def bouncer(db, migrated):
    # One more alias with a single server connection: every client shares it, so a
    # statement one client prepared is there when the next one prepares its own.
    host_port = migrated.split("@", 1)[-1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with pgbouncer(migrated, pool_size=8,
                   extra_databases={"one_server": f"host={host} port={port} dbname={db.name} pool_size=1"}) as b:
        yield b


def booking_for_payment(conn) -> tuple[str, int]:
    inventory = new_inventory(conn, 1)
    holder = f"guest-{uuid.uuid4().hex[:8]}@example.com"
    hold, _ = place(conn, inventory, 1, holder=holder)
    answer = conn.execute("SELECT api.create_booking(%s, %s, ARRAY[%s::uuid])",
                          (uuid.uuid4().hex, holder, hold)).fetchone()[0]
    return answer["booking_id"], answer["amount"]


def deliver_all(base: str, bodies: list[bytes], workers: int = 32) -> list[int]:
    statuses, lock = [], threading.Lock()

    def deliver(body: bytes) -> None:
        with httpx.Client(timeout=60) as client:
            resp = client.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET)})
        with lock:
            statuses.append(resp.status_code)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(deliver, bodies))
    return statuses


def test_the_webhook_path_and_the_worker_through_pgbouncer_in_transaction_mode(db, bouncer, tmp_path):
    print(f"\n{version()}, pool_mode=transaction, default_pool_size=8")
    rng = random.Random(20261201)
    with connect(db.app_url) as conn:
        bookings = [booking_for_payment(conn) for _ in range(100)]
    events = [event("payment_intent.succeeded", payment_intent("pi_" + uuid.uuid4().hex[:16], b, amount))
              for b, amount in bookings]
    bodies = [encode(e) for e in events]
    bodies += [encode(e) for e in rng.sample(events, 30)]  # Stripe's redeliveries
    rng.shuffle(bodies)

    env = {"DB_PREPARED_STATEMENTS": "false", "WEBHOOK_BATCH_CONCURRENCY": "2"}
    with shim(bouncer.url(db.name, "shim_login"), SECRET, extra_env=env, log=tmp_path / "shim.log") as base:
        statuses = deliver_all(base, bodies)
    assert statuses.count(200) == len(bodies), ({s: statuses.count(s) for s in set(statuses)},
                                                (tmp_path / "shim.log").read_text()[-3000:])
    # Applied once: one stored event each, every booking confirmed, one ledger transaction each.
    assert db.one("SELECT count(*) FROM stripe.events") == len(events)
    assert db.one("SELECT count(*) FROM booking.bookings WHERE status = 'confirmed'") == len(bookings)
    assert db.one("SELECT count(*) FROM ledger.transactions") == len(bookings)
    assert db.rows("SELECT * FROM ops.ledger_imbalances") == []
    # Group commit went through the pooler too: some events share a transaction.
    stored, transactions = db.rows("SELECT count(*), count(DISTINCT xmin::text) FROM stripe.events")[0]
    print(f"{len(bodies)} deliveries, all 200; {stored} events in {transactions} transactions")
    assert transactions < stored

    # The worker through the same pooler: every confirmation e-mail sent.
    box = StallingInbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    worker = start_worker(bouncer.url(db.name, "worker_login"), f"smtp://127.0.0.1:{controller.port}",
                          DB_PREPARED_STATEMENTS="false", WORKER_CONCURRENCY="8")
    try:
        assert wait_until(lambda: db.one("SELECT count(*) FROM jobs.jobs WHERE status = 'done'") == len(bookings), 60), \
            db.rows("SELECT status, count(*) FROM jobs.jobs GROUP BY 1")
        out = stop(worker)
        assert worker.returncode == 0
        errors = [line for line in log_lines(out) if line["level"] in ("error", "warning")]
        assert errors == [], errors[:3]
        delivered = box.message_ids()
        assert all(delivered[message_id(b)] >= 1 for b, _ in bookings)
    finally:
        stop(worker)
        controller.stop()
    assert "prepared statement" not in bouncer.log()


def test_with_prepared_statements_the_same_pooler_breaks_the_shim(db, bouncer, tmp_path):
    """The issue's failure, reproduced so that the test above could fail: the shim with
    DB_PREPARED_STATEMENTS=true (the default) behind the alias whose clients share one
    server connection."""
    with connect(db.app_url) as conn:
        bookings = [booking_for_payment(conn) for _ in range(20)]
    bodies = [encode(event("payment_intent.succeeded", payment_intent("pi_" + uuid.uuid4().hex[:16], b, amount)))
              for b, amount in bookings]
    with shim(bouncer.url("one_server", "shim_login"), SECRET, extra_env={"DB_PREPARED_STATEMENTS": "true"},
              log=tmp_path / "shim.log") as base:
        statuses = deliver_all(base, bodies, workers=8)
    failed = len(statuses) - statuses.count(200)
    print(f"\nwith prepared statements: {failed} of {len(statuses)} deliveries failed")
    assert failed > 0
    log = (tmp_path / "shim.log").read_text()
    assert "prepared statement" in log or "42P05" in log or "26000" in log, log[-3000:]


@pytest.mark.parametrize("prepared", [True, False])
def test_db_prepared_statements_reaches_the_pool_connections(db, bouncer, prepared):
    """pyshim.db.Database behind the one-server alias: two client connections each prepare
    their first statement as _pg3_0 on the same server connection when prepared statements
    are on (42P05 already exists); with DB_PREPARED_STATEMENTS=false nothing is prepared."""
    settings = Settings.from_env({
        "DATABASE_URL": bouncer.url("one_server", "shim_login"), "STRIPE_WEBHOOK_SECRET": SECRET,
        "DB_PREPARED_STATEMENTS": "true" if prepared else "false", "DB_POOL_MIN_SIZE": "2", "DB_POOL_MAX_SIZE": "2"})
    assert settings.prepared_statements is prepared

    async def calls() -> list:
        database = Database(settings)
        await database.open()
        await database.pool.wait(timeout=10)
        try:
            results = []
            for _ in range(10):
                results += await asyncio.gather(*(database.call("health", [], f"rid-{i}") for i in range(4)),
                                                return_exceptions=True)
            return results
        finally:
            await database.close()

    results = asyncio.run(calls())
    errors = [r for r in results if isinstance(r, BaseException)]
    if prepared:
        assert errors and all(isinstance(e, psycopg.Error) for e in errors), results
        print(f"\nprepared statements on: {len(errors)} of {len(results)} calls failed, e.g. {errors[0]!r}")
    else:
        assert errors == [], errors[:3]


def test_settings_refuse_a_misspelt_db_prepared_statements():
    from pyshim.settings import ConfigError

    with pytest.raises(ConfigError, match="DB_PREPARED_STATEMENTS must be 'true' or 'false'"):
        Settings.from_env({"DATABASE_URL": "postgresql://x/y", "STRIPE_WEBHOOK_SECRET": SECRET,
                           "DB_PREPARED_STATEMENTS": "off"})
    assert Settings.from_env({"DATABASE_URL": "postgresql://x/y", "STRIPE_WEBHOOK_SECRET": SECRET}).prepared_statements
