"""POST /webhooks/stripe: verify the exact bytes received, then one database call."""

from __future__ import annotations

import json
import logging
import time

import psycopg
import stripe
from starlette.requests import Request
from starlette.responses import JSONResponse

from .batching import GroupCommit
from .errors import ApiError, is_unavailable
from .http_body import read_body
from .metrics import BATCH_SIZE, WEBHOOKS
from .monitoring import capture
from .request_id import request_id_of

log = logging.getLogger("pyshim.webhook")


# A Unix time in seconds has 10 digits until the year 2286; 12 leaves room and keeps int()
# far from its 4,300-digit limit. ASCII only: str.isdigit() is also true for superscript
# digits, which int() refuses.
_TIMESTAMP_MAX_DIGITS = 12


def signed_timestamp(header: str) -> int:
    """The t= of a Stripe-Signature header (the first one, as the Stripe library reads it)."""
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            if value.isascii() and value.isdigit() and len(value) <= _TIMESTAMP_MAX_DIGITS:
                return int(value)
            raise ApiError(400, "signature_invalid", "the Stripe-Signature timestamp is not a Unix time")
    raise ApiError(400, "signature_invalid", "the Stripe-Signature header has no timestamp")


def verify(body: bytes, header: str | None, secrets, tolerance_s: int) -> None:
    """Accepts when any v1 signature matches any configured secret (rotation), and the
    timestamp is within tolerance either way (the library only refuses old ones)."""
    if not header:
        raise ApiError(400, "signature_missing", "the Stripe-Signature header is missing")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "signature_invalid", "the body is not UTF-8") from None
    timestamp = signed_timestamp(header)
    if abs(time.time() - timestamp) > tolerance_s:
        raise ApiError(400, "signature_timestamp", f"the signature timestamp is more than {tolerance_s} s away from now")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, str(secret), tolerance_s)
            return
        except (stripe.SignatureVerificationError, ValueError):
            # ValueError: the library's own int() of a header item it reads differently.
            continue
    raise ApiError(400, "signature_invalid", "no signature matches the body with a configured secret")


async def ingest_one(db, text: str, rid: str) -> str:
    """One event in its own transaction; a failure to apply is recorded for the retry job."""
    try:
        return await db.call("ingest_stripe_event", [text], rid)
    except psycopg.Error as exc:
        sqlstate = getattr(exc, "sqlstate", None)
        if is_unavailable(exc) or sqlstate == "RW001":
            raise
        if sqlstate is not None and sqlstate.startswith(("22", "54")):
            # The body is signed but is not JSON the database accepts: a bad value (class
            # 22) or one past a limit of the server (class 54, e.g. 54001 for a jsonb
            # nested too deep). Nothing was stored and nothing is: retrying cannot help.
            raise ApiError(400, "RW001", f"the body is not a JSON Stripe event: {exc.diag.message_primary}") from None
        # Applying failed and rolled back: keep the payload and the error in a fresh
        # transaction so the retry job (and Stripe's own retry) can try again.
        log.error("applying a Stripe event failed: %s %s", sqlstate, exc, extra={"request_id": rid})
        capture(exc, rid)
        await db.call("record_stripe_event_failure", [text, sqlstate, str(exc)[:2000]], rid)
        await db.call("log_error", ["error", "webhook", f"applying a Stripe event failed: {exc.diag.message_primary}"[:2000],
                                    str(exc)[:10000], json.dumps({"sqlstate": sqlstate}), sqlstate], rid)
        raise ApiError(500, sqlstate or "internal", "the event was stored but could not be applied; it will be retried") from None


def event_batcher(db, settings) -> GroupCommit[tuple[str, str]]:
    """Deliveries that arrive together are stored and applied in one transaction
    (api.ingest_stripe_events); a batch that fails is applied one event at a time."""
    async def run_batch(items):
        # One JSON array of the signed bodies as received (no array literal to escape). A
        # body that is not one JSON value breaks the array or changes its length, which the
        # database refuses (22023): the batch fails and each body goes alone.
        rids = [rid for _, rid in items]
        return await db.call("ingest_stripe_events", ["[" + ",".join(text for text, _ in items) + "]", rids], rids[0])

    async def run_one(item):
        return await ingest_one(db, *item)

    return GroupCommit(run_batch, run_one, max_size=settings.webhook_batch_max,
                       concurrency=settings.webhook_batch_concurrency, observe=BATCH_SIZE.observe)


async def stripe_webhook(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    try:
        body = await read_body(request, settings.webhook_body_max_bytes)
        verify(body, request.headers.get("stripe-signature"), settings.webhook_secrets, settings.webhook_tolerance_s)
        outcome = await request.app.state.webhooks.submit((body.decode("utf-8"), request_id_of(request.scope)))
    except BaseException as exc:
        WEBHOOKS.labels("rejected" if isinstance(exc, ApiError) and exc.status < 500 else "failed").inc()
        raise
    WEBHOOKS.labels(str(outcome)).inc()
    return JSONResponse({"outcome": outcome})
