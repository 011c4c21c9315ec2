"""Stripe-shaped test events, signed with Stripe's real scheme."""

from __future__ import annotations

import json
import time
import uuid

import stripe


def event(type_: str = "test.ping", obj: dict | None = None, **fields) -> dict:
    body = {
        "id": "evt_" + uuid.uuid4().hex,
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "type": type_,
        "data": {"object": obj or {"id": "obj_" + uuid.uuid4().hex[:10], "object": "test"}},
    }
    body.update(fields)
    return body


def sign(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for payload: t=<unix>,v1=<HMAC-SHA256>."""
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    return stripe.WebhookSignature.generate_signature_header(
        text, secret, timestamp=int(time.time()) if timestamp is None else timestamp
    )


def encode(evt: dict) -> bytes:
    return json.dumps(evt, separators=(",", ":")).encode()


def payment_intent(pi_id: str, booking_id, amount: int, currency: str = "usd", status: str = "succeeded") -> dict:
    return {"id": pi_id, "object": "payment_intent", "amount": amount, "amount_received": amount if status == "succeeded" else 0,
            "currency": currency, "status": status, "metadata": {"booking_id": str(booking_id)}}


def refund(re_id: str, pi_id: str, amount: int, currency: str = "usd", status: str = "succeeded") -> dict:
    return {"id": re_id, "object": "refund", "amount": amount, "currency": currency, "payment_intent": pi_id,
            "status": status}


def dispute(dp_id: str, pi_id: str, amount: int, currency: str = "usd", status: str = "needs_response") -> dict:
    return {"id": dp_id, "object": "dispute", "amount": amount, "currency": currency, "payment_intent": pi_id,
            "status": status}
