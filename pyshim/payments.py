"""POST /payment-intents: one Stripe PaymentIntent per Idempotency-Key, even under
concurrent retries, recorded through the database's idempotency keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid

import psycopg
import stripe
from starlette.requests import Request
from starlette.responses import JSONResponse

from .errors import ApiError, error_body, http_status_for
from .http_body import read_json
from .request_id import request_id_of

log = logging.getLogger("pyshim.payments")
SCOPE = "payment_intent"
PRINCIPAL = ""  # the booking id is in the request; keys are per shim, not per user


def new_stripe_client(api_key: str, api_base: str | None, max_network_retries: int) -> stripe.StripeClient:
    """The one way the shim and the worker talk to Stripe (or localstripe at api_base)."""
    options = {"max_network_retries": max_network_retries}
    if api_base:
        options["base_addresses"] = {"api": api_base}
    return stripe.StripeClient(api_key, **options)


def stripe_client(settings) -> stripe.StripeClient | None:
    # No retries inside a request: a failure frees the idempotency key for the caller's retry.
    if settings.stripe_api_key is None:
        return None
    return new_stripe_client(str(settings.stripe_api_key), settings.stripe_api_base, 0)


def parse_request(data) -> dict:
    if not isinstance(data, dict) or not isinstance(data.get("booking_id"), str):
        raise ApiError(400, "22023", 'the body must be {"booking_id": "<uuid>"}')
    try:
        booking_id = str(uuid.UUID(data["booking_id"]))
    except ValueError:
        raise ApiError(400, "22P02", "booking_id is not a UUID") from None
    return {"booking_id": booking_id}


async def create_payment_intent(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    db = request.app.state.db
    client = request.app.state.stripe
    rid = request_id_of(request.scope)
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise ApiError(400, "idempotency_key_missing", "the Idempotency-Key header is required")
    req = parse_request(await read_json(request, settings.request_body_max_bytes))

    # RI001 (another request with this key) and RI002 (in progress) become 422 and 409.
    outcome, stored, stored_status = (await db.call_rows(
        "idempotency_begin", [SCOPE, key, PRINCIPAL, json.dumps(req)], rid))[0]
    if outcome == "replay":
        return JSONResponse(stored, status_code=stored_status)

    async def final(body: dict, status: int) -> JSONResponse:
        await db.call("idempotency_complete", [SCOPE, key, PRINCIPAL, json.dumps(body), status], rid)
        return JSONResponse(body, status_code=status)

    async def retry_later(exc: BaseException) -> None:
        await db.call("idempotency_fail", [SCOPE, key, PRINCIPAL, str(exc)[:2000] or type(exc).__name__, True], rid)

    try:
        params = await db.call("payment_intent_params", [req["booking_id"]], rid)
    except psycopg.Error as exc:
        status = http_status_for(getattr(exc, "sqlstate", None))
        if status is None or status >= 500:
            await retry_later(exc)
            raise
        # Not payable (RB002) or unknown (RB005): the answer for this key from now on.
        return await final(error_body(exc.sqlstate, exc.diag.message_primary or str(exc)), status)

    # Our key, hashed, is Stripe's key: a retry after a crash asks Stripe for the same object.
    stripe_key = "booking-core-pi-" + hashlib.sha256(key.encode()).hexdigest()[:40]
    try:
        intent = await asyncio.wait_for(asyncio.to_thread(
            client.v1.payment_intents.create,
            params={"amount": params["amount"], "currency": params["currency"], "metadata": params["metadata"]},
            options={"idempotency_key": stripe_key},
        ), timeout=settings.stripe_timeout_s)
    except (stripe.APIConnectionError, stripe.RateLimitError, asyncio.TimeoutError) as exc:
        await retry_later(exc)
        raise ApiError(502, "stripe_unavailable", "Stripe could not be reached; retry with the same key") from None
    except stripe.StripeError as exc:
        status = exc.http_status or 502
        if status >= 500:
            await retry_later(exc)
            raise ApiError(502, "stripe_unavailable", "Stripe failed; retry with the same key") from None
        log.warning("Stripe refused a PaymentIntent: %s", exc.user_message or exc, extra={"request_id": rid})
        return await final(error_body(exc.code or "stripe_error", exc.user_message or "Stripe refused the request"),
                           402 if isinstance(exc, stripe.CardError) else 400)

    await db.call("record_payment_intent", [req["booking_id"], intent.id, intent.client_secret, intent.status], rid)
    return await final({
        "payment_intent_id": intent.id,
        "client_secret": intent.client_secret,
        "amount": intent.amount,
        "currency": intent.currency,
    }, 200)
