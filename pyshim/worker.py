"""python -m pyshim worker: claims jobs from the database and does them.

Kinds it does: email.booking_confirmed and email.waitlist_offer (when SMTP_URL is set), alert.notify (a
Slack-style JSON POST to ALERT_WEBHOOK_URL, when set), stripe.refund (when
STRIPE_API_KEY is set), stripe.reconcile (the same). Other kinds stay queued
for a worker that does them. Each job runs under a lease; a worker that stalls past its
lease cannot complete the job any more (api.complete_jobs checks the lease token), and
another worker takes it over.

SIGTERM or SIGINT: no claim starts after it; running jobs get WORKER_GRACE_S seconds from
the signal, then what is still running is given back (api.fail_job, retryable, 'worker
stopped': a later worker does it again) and the process exits within the grace plus a few
seconds, even when a job's thread is stuck in a mail server (job threads are daemon
threads, which nothing joins).

The database may go away at any time (a restart, a failover, a pooler): every call of the
loop (claim, complete, fail) logs the error, backs off exponentially (capped) and carries
on; a completion or failure that cannot be recorded before the job's lease ends is left to
the lease, which hands the job to the next claim."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import smtplib
import socket
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from urllib.parse import urlparse

import sentry_sdk
from psycopg_pool import AsyncConnectionPool

from .db import WORKER_QUERIES, connection_kwargs, fetch_all
from .monitoring import capture, init_sentry
from .payments import new_stripe_client
from .settings import ConfigError, flag
from . import worker_metrics

log = logging.getLogger("pyshim.worker")


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the job and the correlation id of its cause."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                "level": record.levelname.lower(), "message": record.getMessage()}
        for key in ("job_id", "kind", "attempt", "correlation_id", "worker", "jobs", "retry_in_s", "detail"):
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


# Pauses between database retries: doubling from the first, at most the last (each with
# jitter, so workers that lost the same database do not come back in lockstep).
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
# After the grace: how long giving back and the last completions may take before the
# process exits regardless (the lease covers whatever was not recorded). With closing the
# pool (at most 1 s) and the last pending tasks (0.5 s), the process is gone within the
# grace plus 4 s.
STOP_RECORDING_S = 2.5
JOB_THREAD_PREFIX = "pyshim-job"


class Backoff:
    def __init__(self, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S):
        self.first_s, self.max_s, self.next_s = first_s, max_s, first_s

    def pause_s(self) -> float:
        pause, self.next_s = self.next_s, min(self.next_s * 2, self.max_s)
        return pause * random.uniform(0.75, 1.25)

    def reset(self) -> None:
        self.next_s = self.first_s


def in_thread(fn, *args, **kwargs) -> asyncio.Future:
    """Runs fn(*args) in a new daemon thread and returns a future of its result.
    asyncio.to_thread would not do: a thread stuck in smtplib cannot be cancelled, and the
    default executor's threads are joined when asyncio.run ends and at interpreter exit, so
    one stalled mail server would keep the stopping worker alive. Cancelling the future
    abandons the thread; a daemon thread does not hold the process."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def target() -> None:
        try:
            outcome = (True, fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: the worker stopped without this job
            pass

    threading.Thread(target=target, name=f"{JOB_THREAD_PREFIX}-{getattr(fn, '__name__', 'call')}",
                     daemon=True).start()
    return future


def job_threads_alive() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(JOB_THREAD_PREFIX) and t.is_alive())


class Job:
    """A claimed job while this worker runs it."""

    def __init__(self, row: tuple, worker: str, lease_s: float, claimed_at: float):
        self.job_id, self.kind, self.payload, self.attempt, self.token = row
        self.correlation_id = self.payload.get("correlation_id")
        # Measured from before the claim was sent: never later than the database's own expiry.
        self.lease_ends_at = claimed_at + lease_s
        # "working" while its handler runs; "recording" once its outcome is being written.
        self.phase = "working"
        self.log_extra = {"job_id": str(self.job_id), "kind": self.kind, "attempt": self.attempt,
                          "correlation_id": self.correlation_id, "worker": worker}


class Completion:
    def __init__(self, job: Job, result: dict, done: asyncio.Future):
        self.job, self.result, self.done = job, json.dumps(result), done
        self.tries = 0


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
        stripe_key = env.get("STRIPE_API_KEY", "").strip()
        self.stripe = (new_stripe_client(stripe_key, env.get("STRIPE_API_BASE", "").strip() or None, 2)
                       if stripe_key else None)
        self.handlers = self.handlers_configured()
        if not self.handlers:
            raise ConfigError("nothing to do: set SMTP_URL (email.booking_confirmed), ALERT_WEBHOOK_URL "
                              "(alert.notify) or STRIPE_API_KEY (stripe.refund)")
        # False behind a pooler in transaction mode (pgbouncer before 1.21): no statement is
        # prepared, neither explicitly nor by psycopg's automatic preparation.
        self.prepare = flag(env, "DB_PREPARED_STATEMENTS", True)
        pool_size = int(env.get("WORKER_POOL_SIZE", str(min(self.concurrency + 1, 16))))
        kwargs = connection_kwargs("pyshim-worker", self.prepare)
        # A database that is gone is noticed in seconds, not at the OS's TCP timeout.
        kwargs["connect_timeout"] = int(env.get("WORKER_CONNECT_TIMEOUT_S", "5"))
        self.pool = AsyncConnectionPool(database_url, min_size=1, max_size=pool_size, kwargs=kwargs,
                                        timeout=float(env.get("WORKER_POOL_TIMEOUT_S", "10")), open=False)
        self.stopping = asyncio.Event()
        self.stop_at: float | None = None
        # Past this (monotonic) time nothing more is recorded: set when a stop is requested.
        self.recording_ends_at = float("inf")
        self.running: dict[asyncio.Task, Job] = {}
        self.slot_freed = asyncio.Event()
        # Completions are batched: one api.complete_jobs call for all that finished within
        # a few milliseconds of each other (one commit instead of one each).
        self.completions: list[Completion] = []
        self.completion_wakeup = asyncio.Event()

    def handlers_configured(self) -> dict:
        """The kinds this worker does, each with its handler (claimed by these names): those
        whose outside service is configured."""
        handlers = {}
        if self.smtp_url:
            handlers["email.booking_confirmed"] = self.email_booking_confirmed
            handlers["email.waitlist_offer"] = self.email_waitlist_offer
        if self.alert_url:
            handlers["alert.notify"] = self.alert_notify
        if self.stripe is not None:
            handlers["stripe.refund"] = self.stripe_refund
            handlers["stripe.reconcile"] = self.stripe_reconcile
        return handlers

    async def call(self, name: str, params: list, correlation_id: str | None = None):
        return await fetch_all(self.pool, WORKER_QUERIES[name], params, correlation_id, self.prepare)

    async def stripe_refund(self, payload: dict, correlation_id: str | None, job_id) -> dict:
        """Refunds what the ledger says is still due. Stripe's idempotency key is derived from
        the job id, and before creating a refund the worker looks for one it made already
        (a re-run after a crash between Stripe's answer and the database's), so a job
        refunds once even against a Stripe double that ignores idempotency keys."""
        due = await self.call("refunds_due", [payload["booking_id"], payload.get("payment_intent_id")], correlation_id)
        done = []
        for payment_intent_id, amount, _currency in due:
            listed = await in_thread(self.stripe.v1.refunds.list,
                                     params={"payment_intent": payment_intent_id, "limit": 100})
            mine = [r for r in listed.data if (r.to_dict().get("metadata") or {}).get("job_id") == str(job_id)]
            refund = mine[0] if mine else await in_thread(
                self.stripe.v1.refunds.create,
                params={"payment_intent": payment_intent_id, "amount": amount,
                        "metadata": {"booking_id": payload["booking_id"], "job_id": str(job_id)}},
                options={"idempotency_key": f"booking-core-refund-{job_id}-{payment_intent_id}"},
            )
            outcome = await self.call("record_stripe_refund", [json.dumps(refund.to_dict())], correlation_id)
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
        (window,), = await self.call("window_epochs", [payload["window_start"], payload["window_end"]])
        stripe_side = await in_thread(self.stripe_money_in_window, float(window["start"]), float(window["end"]))
        (summary,), = await self.call("reconcile", [payload["window_start"], payload["window_end"],
                                                    json.dumps(stripe_side)], correlation_id)
        return summary

    async def email_booking_confirmed(self, payload: dict, correlation_id: str | None, job_id=None) -> dict:
        return await in_thread(send_confirmation, self.smtp_url, self.sender, payload, 30.0)

    async def email_waitlist_offer(self, payload: dict, correlation_id: str | None, job_id=None) -> dict:
        return await in_thread(send_waitlist_offer, self.smtp_url, self.sender, payload, 30.0)

    async def alert_notify(self, payload: dict, correlation_id: str | None, job_id=None) -> dict:
        return await in_thread(post_alert, self.alert_url, payload, 10.0)

    # -- recording outcomes -------------------------------------------------------------

    def recording_deadline(self, job: Job) -> float:
        """Until when recording a job's outcome is worth trying: its lease (after that the
        token check refuses it anyway and another worker may own the job), and no later
        than the end of a stop."""
        return min(job.lease_ends_at, self.recording_ends_at)

    async def complete(self, job: Job, result: dict) -> bool | None:
        """True: recorded; False: the lease was no longer ours; None: not recorded (left
        to the lease)."""
        done = asyncio.get_running_loop().create_future()
        self.completions.append(Completion(job, result, done))
        self.completion_wakeup.set()
        return await done

    async def flush_completions(self) -> None:
        backoff = Backoff()
        while True:
            await self.completion_wakeup.wait()
            self.completion_wakeup.clear()
            await asyncio.sleep(0.002)  # let the jobs finishing now join this batch
            now = time.monotonic()
            for c in [c for c in self.completions if self.recording_deadline(c.job) <= now]:
                self.completions.remove(c)
                if not c.done.done():
                    c.done.set_result(None)
            batch, self.completions = self.completions[:1000], self.completions[1000:]
            if not batch:
                continue
            for c in batch:
                c.tries += 1
            try:
                (oks,), = await self.call("complete_jobs", [[c.job.job_id for c in batch],
                                                            [c.job.token for c in batch],
                                                            [c.result for c in batch]])
            except Exception as exc:  # noqa: BLE001 - any database error: retry the batch
                self.completions[:0] = batch
                pause = backoff.pause_s()
                log.warning("recording completed jobs failed; retrying", extra={
                    "worker": self.name, "jobs": len(batch), "retry_in_s": round(pause, 2),
                    "detail": f"{type(exc).__name__}: {exc}"[:500]})
                await asyncio.sleep(pause)
                self.completion_wakeup.set()
                continue
            backoff.reset()
            if self.completions:
                self.completion_wakeup.set()
            for ok, c in zip(oks, batch):
                if not c.done.done():
                    # A retried batch may have landed the first time with the answer lost:
                    # then its token is spent and the second try says false.
                    c.done.set_result(ok if ok or c.tries == 1 else None)

    async def record_failure(self, job: Job, error: str, retryable: bool = True) -> bool | None:
        """api.fail_job, retried with backoff until the job's lease ends; None: not recorded."""
        backoff = Backoff()
        while True:
            try:
                (ok,), = await self.call("fail_job", [job.job_id, job.token, error[:4000], retryable],
                                         job.correlation_id)
                return ok
            except Exception as exc:  # noqa: BLE001 - any database error: retry
                pause = backoff.pause_s()
                if time.monotonic() + pause >= self.recording_deadline(job):
                    log.error("recording a failed job failed; its lease hands it over when it ends",
                              extra={**job.log_extra, "detail": f"{type(exc).__name__}: {exc}"[:500]})
                    return None
                log.warning("recording a failed job failed; retrying", extra={
                    **job.log_extra, "retry_in_s": round(pause, 2), "detail": f"{type(exc).__name__}: {exc}"[:500]})
                await asyncio.sleep(pause)

    async def run_job(self, job: Job) -> None:
        extra = job.log_extra
        log.info("job started", extra=extra)
        try:
            result = await self.handlers[job.kind](job.payload, job.correlation_id, job.job_id)
        except asyncio.CancelledError:
            raise  # the stop path gives the job back
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
            job.phase = "recording"
            log.error("job failed", extra=extra, exc_info=True)
            capture(exc, job.correlation_id)
            ok = await self.record_failure(job, f"{type(exc).__name__}: {exc}")
            job.outcome = "failed" if ok else "lost"
            if ok is False:
                log.warning("the failed job's lease was already lost", extra=extra)
            return
        job.phase = "recording"
        ok = await self.complete(job, result)
        job.outcome = "done" if ok else "lost"
        if ok:
            log.info("job done", extra=extra)
        elif ok is None:
            log.error("job done but not recorded; its lease hands it over when it ends (it will run again)",
                      extra=extra)
        else:
            log.warning("job finished after its lease was taken over; the other worker's result stands", extra=extra)

    # -- the loop ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self.stop_at is None:
            self.stop_at = time.monotonic()
            self.recording_ends_at = self.stop_at + self.grace_s + STOP_RECORDING_S
            log.info("worker stopping: no more claims", extra={
                "worker": self.name, "jobs": len(self.running), "detail": f"grace {self.grace_s} s"})
        self.stopping.set()

    def start_job(self, job: Job) -> None:
        task = asyncio.create_task(self.run_job(job))
        self.running[task] = job
        worker_metrics.job_started(job.kind)
        started = time.monotonic()

        def finished(t: asyncio.Task) -> None:
            worker_metrics.job_finished(job.kind, getattr(job, "outcome", "given_back"), time.monotonic() - started)
            self.running.pop(t, None)
            self.slot_freed.set()

        task.add_done_callback(finished)

    async def claim(self, free: int) -> list[Job]:
        claimed_at = time.monotonic()
        rows = await self.call("claim_jobs", [self.name, list(self.handlers), free, self.lease_s])
        return [Job(row, self.name, self.lease_s, claimed_at) for row in rows]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.pool.open(wait=False)  # the worker starts while the database is down
        log.info("worker started", extra={"worker": self.name})
        flusher = asyncio.create_task(self.flush_completions())
        stop_wait = asyncio.create_task(self.stopping.wait())
        claim_backoff = Backoff()
        claim_in_flight = None
        try:
            # Each turn waits on "a slot freed OR stop requested OR poll timeout", never on
            # the jobs alone, so a stop is seen at once however long the jobs take.
            while not self.stopping.is_set():
                self.slot_freed.clear()
                free = self.concurrency - len(self.running)
                if free <= 0:
                    slot_wait = asyncio.create_task(self.slot_freed.wait())
                    await asyncio.wait({slot_wait, stop_wait}, timeout=self.poll_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                    slot_wait.cancel()
                    continue
                claim = asyncio.create_task(self.claim(free))
                await asyncio.wait({claim, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not claim.done():
                    claim_in_flight = claim  # a stop arrived mid-claim
                    break
                try:
                    jobs = claim.result()
                except Exception as exc:  # noqa: BLE001 - any database error: back off, claim again
                    pause = claim_backoff.pause_s()
                    log.warning("claiming jobs failed; retrying", extra={
                        "worker": self.name, "retry_in_s": round(pause, 2),
                        "detail": f"{type(exc).__name__}: {exc}"[:500]})
                    await asyncio.wait({stop_wait}, timeout=pause)
                    continue
                claim_backoff.reset()
                for job in jobs:
                    self.start_job(job)
                if len(jobs) < free:
                    # The queue is empty for now: wait a poll interval (or for a stop).
                    await asyncio.wait({stop_wait}, timeout=self.poll_s)
            await self.stop_running(claim_in_flight)
        finally:
            for task, job in self.running.items():
                if job.phase == "recording":
                    log.error("exiting before the job's outcome was recorded; its lease hands it over when it ends",
                              extra=job.log_extra)
            for task in (flusher, stop_wait, *self.running):
                task.cancel()
            for c in self.completions:
                if not c.done.done():
                    c.done.set_result(None)
            try:
                await asyncio.wait_for(self.pool.close(timeout=0.5), timeout=1.0)
            except Exception:  # noqa: BLE001 - exiting anyway; the server drops the connections
                log.warning("closing the database pool timed out", extra={"worker": self.name})
            log.info("worker stopped", extra={"worker": self.name})

    async def stop_running(self, claim_in_flight: asyncio.Task | None) -> None:
        """The stop path: running jobs get the grace from the signal; what still works after it
        is given back; completions being recorded get until recording_ends_at."""
        grace_ends_at = self.stop_at + self.grace_s
        if claim_in_flight is not None:
            # Jobs claimed after the stop are given back without being started.
            await asyncio.wait({claim_in_flight}, timeout=max(0.0, grace_ends_at - time.monotonic()))
            if not claim_in_flight.done():
                claim_in_flight.cancel()  # whatever it leased comes back when the lease ends
            elif claim_in_flight.exception() is None:
                await self.give_back(claim_in_flight.result())
        if self.running:
            await asyncio.wait(list(self.running), timeout=max(0.0, grace_ends_at - time.monotonic()))
        working = {task: job for task, job in self.running.items() if job.phase == "working"}
        for task in working:
            task.cancel()  # abandons a thread stuck in smtplib: it is a daemon thread
        if working:
            await asyncio.wait(list(working), timeout=1.0)
            await self.give_back(list(working.values()))
        recording = [task for task, job in self.running.items() if job.phase == "recording"]
        if recording:
            await asyncio.wait(recording, timeout=max(0.0, self.recording_ends_at - time.monotonic()))

    async def give_back(self, jobs: list[Job]) -> None:
        """api.fail_job(retryable, 'worker stopped') for each: a later worker runs it again. Giving
        back survives a dead database: it logs, and the lease hands the job over anyway."""

        async def one(job: Job) -> None:
            try:
                (ok,), = await asyncio.wait_for(
                    self.call("fail_job", [job.job_id, job.token, "worker stopped", True], job.correlation_id),
                    timeout=max(0.1, self.recording_ends_at - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - includes the timeout
                log.error("job not given back (the database did not answer); its lease hands it over when it ends",
                          extra={**job.log_extra, "detail": f"{type(exc).__name__}: {exc}"[:500]})
                return
            if ok:
                log.warning("job given back: the worker is stopping", extra=job.log_extra)
            else:
                log.warning("job not given back: its lease was already taken over", extra=job.log_extra)

        await asyncio.gather(*(one(job) for job in jobs))


def main(argv: list[str], make_worker: Callable[[], Worker] = Worker) -> int:
    """make_worker: the worker to run (a Worker; a test or benchmark passes a subclass)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    init_sentry("pyshim-worker")
    try:
        worker = make_worker()
        worker_metrics.start_server()  # WORKER_METRICS_PORT; none when unset
    except ConfigError as exc:
        log.error("refusing to start: %s", exc)
        return 2
    asyncio.run(run_and_exit(worker))
    return 0


async def run_and_exit(worker: Worker) -> None:
    await worker.run()
    # What run() cancelled on its way out gets a moment to finish; anything still pending
    # (a query being cancelled on a database that does not answer) or a job thread still
    # waiting (a stalled mail server) must not hold the process: asyncio.run would wait
    # for the tasks, and interpreter teardown would run beside the threads.
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=0.5)
        pending = [t for t in pending if not t.done()]
    stuck = job_threads_alive()
    if pending or stuck:
        log.warning("exiting with work still waiting", extra={"worker": worker.name, "jobs": stuck,
                                                             "detail": f"{len(pending)} tasks pending"})
        if sentry_sdk.is_initialized():
            sentry_sdk.flush(timeout=1.0)  # os._exit skips its atexit hook
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def send_waitlist_offer(smtp_url: str, sender: str, offer: dict, timeout_s: float) -> dict:
    """`offer`: the job's payload (entry_id, hold_id, holder, sku, quantity, amount, currency,
    expires_at), written with the offer; the worker's role reads no waitlist."""
    if "@" not in offer.get("holder", ""):
        return {"skipped": "the holder is not an e-mail address"}
    u = urlparse(smtp_url)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, offer["holder"], "Tickets are waiting for you"
    msg["Message-ID"] = f"<waitlist-{offer['entry_id']}-offer@booking-core>"  # the same on every attempt
    msg.set_content(f"{offer['quantity']} x {offer['sku']} are held for you until {offer['expires_at']} "
                    f"(hold {offer['hold_id']}): {offer['amount']} {offer['currency'].upper()} (minor units).\n")
    with smtplib.SMTP(u.hostname or "127.0.0.1", u.port or 25, timeout=timeout_s) as smtp:
        smtp.send_message(msg)
    return {"sent_to": offer["holder"], "message_id": msg["Message-ID"]}
