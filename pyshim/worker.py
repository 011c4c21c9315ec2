"""python -m pyshim worker: claims jobs from the database and does them.

Kinds it does: email.booking_confirmed (when SMTP_URL is set), alert.notify (a
Slack-style JSON POST to ALERT_WEBHOOK_URL, when set), stripe.refund (when
STRIPE_API_KEY is set), stripe.reconcile (the same). Other kinds stay queued
for a worker that does them. Each job runs under a lease; a worker that stalls past its
lease cannot complete the job any more (api.complete_jobs checks the lease token), and
another worker takes it over. SIGTERM or SIGINT: stop claiming, let running jobs finish
for up to WORKER_GRACE_S seconds, then give back the rest as failed-retryable."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import smtplib
import socket
import sys
import time
import urllib.request
import uuid
from email.message import EmailMessage
from urllib.parse import urlparse

from psycopg_pool import AsyncConnectionPool

from .db import fetch_all
from .monitoring import capture, init_sentry
from .payments import new_stripe_client
from .settings import ConfigError

log = logging.getLogger("pyshim.worker")


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the job and the correlation id of its cause."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                "level": record.levelname.lower(), "message": record.getMessage()}
        for key in ("job_id", "kind", "attempt", "correlation_id", "worker"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def send_confirmation(smtp_url: str, sender: str, booking: dict, timeout_s: float) -> dict:
    """`booking`: the job's payload, the message as of the confirmation (booking_id, holder,
    amount, currency, items); the worker's role does not read bookings."""
    to = booking.get("holder", "")
    if "@" not in to:
        return {"skipped": "the holder is not an e-mail address"}
    u = urlparse(smtp_url)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Your booking is confirmed"
    # The same Message-ID on every attempt: a copy sent twice is recognisably the same mail.
    msg["Message-ID"] = f"<booking-{booking['booking_id']}-confirmed@booking-core>"
    lines = [f"Booking {booking['booking_id']} is confirmed.",
             f"Amount: {booking['amount']} {booking['currency'].upper()} (minor units)"]
    lines += [f"- {item['quantity']} x {item['sku']}" for item in booking.get("items", [])]
    msg.set_content("\n".join(lines) + "\n")
    with smtplib.SMTP(u.hostname or "127.0.0.1", u.port or 25, timeout=timeout_s) as smtp:
        smtp.send_message(msg)
    return {"sent_to": to, "message_id": msg["Message-ID"]}


def post_alert(url: str, payload: dict, timeout_s: float) -> dict:
    """A Slack-style incoming-webhook message: {"text": ...} plus the fields themselves."""
    text = (f":rotating_light: {payload.get('severity', 'critical').upper()} in {payload.get('source')}: "
            f"{payload.get('message')} (correlation id {payload.get('correlation_id') or '-'}, "
            f"fingerprint {str(payload.get('fingerprint', ''))[:12]})")
    body = json.dumps({"text": text, **payload}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - the configured alert URL
        return {"status": resp.status}


class Worker:
    def __init__(self):
        env = os.environ
        database_url = env.get("DATABASE_URL", "").strip()
        if not database_url:
            raise ConfigError("DATABASE_URL is required: the database the worker takes jobs from")
        self.smtp_url = env.get("SMTP_URL", "").strip() or None
        self.sender = env.get("SMTP_FROM", "bookings@localhost")
        self.concurrency = int(env.get("WORKER_CONCURRENCY", "4"))
        self.lease_s = int(env.get("WORKER_LEASE_S", "300"))
        self.grace_s = float(env.get("WORKER_GRACE_S", "20"))
        self.poll_s = float(env.get("WORKER_POLL_S", "1"))
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.alert_url = env.get("ALERT_WEBHOOK_URL", "").strip() or None
        self.handlers = {}
        if self.smtp_url:
            self.handlers["email.booking_confirmed"] = self.email_booking_confirmed
        if self.alert_url:
            self.handlers["alert.notify"] = self.alert_notify
        stripe_key = env.get("STRIPE_API_KEY", "").strip()
        if stripe_key:
            self.stripe = new_stripe_client(stripe_key, env.get("STRIPE_API_BASE", "").strip() or None, 2)
            self.handlers["stripe.refund"] = self.stripe_refund
            self.handlers["stripe.reconcile"] = self.stripe_reconcile
        if env.get("WORKER_NOOP") == "1":  # for make bench: jobs that do nothing
            self.handlers["bench.noop"] = self.noop
        # Fault injection for tests: pause after an outside side effect, before recording it.
        self.fault_pause_s = float(env.get("WORKER_FAULT_PAUSE_AFTER_SIDE_EFFECT_S", "0"))
        if not self.handlers:
            raise ConfigError("nothing to do: set SMTP_URL (email.booking_confirmed), ALERT_WEBHOOK_URL "
                              "(alert.notify) or STRIPE_API_KEY (stripe.refund)")
        pool_size = int(env.get("WORKER_POOL_SIZE", str(min(self.concurrency + 1, 16))))
        self.pool = AsyncConnectionPool(database_url, min_size=1, max_size=pool_size,
                                        kwargs={"autocommit": True, "application_name": "pyshim-worker"},
                                        open=False)
        self.stopping = asyncio.Event()
        self.running: dict[asyncio.Task, tuple] = {}
        # Completions are batched: one api.complete_jobs call for all that finished within
        # a few milliseconds of each other (one commit instead of one each).
        self.completions: list[tuple] = []
        self.completion_wakeup = asyncio.Event()

    async def call(self, sql: str, params: list, correlation_id: str | None = None):
        return await fetch_all(self.pool, sql, params, correlation_id)

    async def stripe_refund(self, payload: dict, correlation_id: str | None, job_id) -> dict:
        """Refunds what the ledger says is still due. Stripe's idempotency key is derived from
        the job id, and before creating a refund the worker looks for one it made already
        (a re-run after a crash between Stripe's answer and the database's), so a job
        refunds once even against a Stripe double that ignores idempotency keys."""
        due = await self.call("SELECT * FROM api.refunds_due(%s::uuid, %s)",
                              [payload["booking_id"], payload.get("payment_intent_id")], correlation_id)
        done = []
        for payment_intent_id, amount, _currency in due:
            listed = await asyncio.to_thread(self.stripe.v1.refunds.list,
                                             params={"payment_intent": payment_intent_id, "limit": 100})
            mine = [r for r in listed.data if (r.to_dict().get("metadata") or {}).get("job_id") == str(job_id)]
            refund = mine[0] if mine else await asyncio.to_thread(
                self.stripe.v1.refunds.create,
                params={"payment_intent": payment_intent_id, "amount": amount,
                        "metadata": {"booking_id": payload["booking_id"], "job_id": str(job_id)}},
                options={"idempotency_key": f"booking-core-refund-{job_id}-{payment_intent_id}"},
            )
            if self.fault_pause_s:
                await asyncio.sleep(self.fault_pause_s)
            outcome = await self.call("SELECT api.record_stripe_refund(%s::jsonb)",
                                      [json.dumps(refund.to_dict())], correlation_id)
            done.append({"refund_id": refund.id, "payment_intent_id": payment_intent_id, "amount": amount,
                         "recorded": outcome[0][0], "reused": bool(mine)})
        return {"refunds": done}

    def stripe_money_in_window(self, start: float, end: float) -> list[dict]:
        """Succeeded PaymentIntents (as the charges the ledger keys on them) and succeeded
        refunds created in [start, end), from Stripe's own lists."""
        found = []
        for intent in self.stripe.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter():
            d = intent.to_dict()
            if d.get("status") == "succeeded" and start <= d["created"] < end:
                found.append({"kind": "charge", "id": d["id"], "amount": d.get("amount_received") or d["amount"],
                              "currency": d["currency"]})
        for refund in self.stripe.v1.refunds.list(params={"limit": 100}).auto_paging_iter():
            d = refund.to_dict()
            if d.get("status") == "succeeded" and start <= d["created"] < end:
                found.append({"kind": "refund", "id": d["id"], "amount": d["amount"], "currency": d["currency"]})
        return found

    async def stripe_reconcile(self, payload: dict, correlation_id: str | None, job_id=None) -> dict:
        (window,), = await self.call("SELECT jsonb_build_object('start', extract(epoch FROM %s::timestamptz), "
                                     "'end', extract(epoch FROM %s::timestamptz))",
                                     [payload["window_start"], payload["window_end"]])
        stripe_side = await asyncio.to_thread(self.stripe_money_in_window, float(window["start"]), float(window["end"]))
        (summary,), = await self.call("SELECT api.reconcile(%s::timestamptz, %s::timestamptz, %s::jsonb)",
                                      [payload["window_start"], payload["window_end"], json.dumps(stripe_side)],
                                      correlation_id)
        return summary

    async def email_booking_confirmed(self, payload: dict, correlation_id: str | None, job_id=None) -> dict:
        return await asyncio.to_thread(send_confirmation, self.smtp_url, self.sender, payload, 30.0)

    async def noop(self, payload: dict, correlation_id: str | None, job_id=None) -> dict:
        return {}

    async def alert_notify(self, payload: dict, correlation_id: str | None, job_id=None) -> dict:
        return await asyncio.to_thread(post_alert, self.alert_url, payload, 10.0)

    async def complete(self, job_id, token, result) -> bool:
        done = asyncio.get_running_loop().create_future()
        self.completions.append((job_id, token, json.dumps(result), done))
        self.completion_wakeup.set()
        return await done

    async def flush_completions(self) -> None:
        while True:
            await self.completion_wakeup.wait()
            self.completion_wakeup.clear()
            await asyncio.sleep(0.002)  # let the jobs finishing now join this batch
            batch, self.completions = self.completions[:1000], self.completions[1000:]
            if self.completions:
                self.completion_wakeup.set()
            if not batch:
                continue
            try:
                (oks,), = await self.call("SELECT api.complete_jobs(%s::uuid[], %s::uuid[], %s::jsonb[])",
                                          [[b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch]])
            except Exception as exc:  # noqa: BLE001 - each job's own task reports it
                for *_, done in batch:
                    done.set_exception(exc)
                continue
            for ok, (*_, done) in zip(oks, batch):
                done.set_result(ok)

    async def run_job(self, job_id, kind, payload, attempt, token) -> None:
        cid = payload.get("correlation_id")
        extra = {"job_id": str(job_id), "kind": kind, "attempt": attempt, "correlation_id": cid, "worker": self.name}
        if kind != "bench.noop":
            log.info("job started", extra=extra)
        try:
            result = await self.handlers[kind](payload, cid, job_id)
        except asyncio.CancelledError:
            await self.call("SELECT api.fail_job(%s, %s, %s, true)", [job_id, token, "worker stopped"], cid)
            log.warning("job given back: the worker is stopping", extra=extra)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
            (ok,), = await self.call("SELECT api.fail_job(%s, %s, %s, true)",
                                     [job_id, token, f"{type(exc).__name__}: {exc}"[:4000]], cid)
            log.error("job failed" if ok else "job failed, and its lease was already lost", extra=extra,
                      exc_info=True)
            capture(exc, cid)
            return
        ok = await self.complete(job_id, token, result)
        if ok:
            if kind != "bench.noop":
                log.info("job done", extra=extra)
        else:
            log.warning("job finished after its lease was taken over; the other worker's result stands", extra=extra)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.pool.open()
        log.info("worker started", extra={"worker": self.name})
        flusher = asyncio.create_task(self.flush_completions())
        try:
            while not self.stopping.is_set():
                free = self.concurrency - len(self.running)
                if free <= 0:
                    # Every slot busy: claim again as soon as one frees up.
                    await asyncio.wait(list(self.running), return_when=asyncio.FIRST_COMPLETED)
                    continue
                jobs = await self.call("SELECT * FROM api.claim_jobs(%s, %s, %s, make_interval(secs => %s))",
                                       [self.name, list(self.handlers), free, self.lease_s])
                for job in jobs:
                    task = asyncio.create_task(self.run_job(*job))
                    self.running[task] = job
                    task.add_done_callback(self.running.pop)
                if len(jobs) < free:
                    # The queue is empty for now: wait a poll interval (or for a stop).
                    try:
                        await asyncio.wait_for(self.stopping.wait(), timeout=self.poll_s)
                    except asyncio.TimeoutError:
                        pass
            if self.running:
                done, pending = await asyncio.wait(list(self.running), timeout=self.grace_s)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            flusher.cancel()
            await self.pool.close()
            log.info("worker stopped", extra={"worker": self.name})


def main(argv: list[str]) -> int:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    init_sentry("pyshim-worker")
    try:
        worker = Worker()
    except ConfigError as exc:
        log.error("refusing to start: %s", exc)
        return 2
    asyncio.run(worker.run())
    return 0
