"""GET /openapi.json: the shim's routes as OpenAPI 3, written from CONTRACT.md's HTTP table.

A static description (no introspection): it says what the contract promises, so a fuzzer
(schemathesis, tests/fuzz/test_http_fuzz.py) can check the shim against it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _ok(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


UNAVAILABLE = _error("the database cannot be reached (code database_unavailable), or the route is not configured")
REQUEST_ID = {"name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "kept when it is 1..200 characters of [A-Za-z0-9._-], otherwise a new one is made"}

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "booking-core shim", "version": "1",
             "description": "The webhook and payment shim of booking-core. Every error answer is "
                            '{"error": {"code", "message"}}, with the SQLSTATE as the code where there is one.'},
    "paths": {
        "/webhooks/stripe": {"post": {
            "operationId": "stripe_webhook",
            "summary": "A Stripe event, verified against Stripe-Signature over the raw body, stored and applied once",
            "parameters": [REQUEST_ID, {"name": "Stripe-Signature", "in": "header", "required": False,
                                        "schema": {"type": "string"},
                                        "description": "t=<unix>,v1=<hex HMAC-SHA256>; missing or bad is 400"}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {
                "200": _ok("processed, duplicate, ignored or deferred", {
                    "type": "object", "required": ["outcome"],
                    "properties": {"outcome": {"enum": ["processed", "duplicate", "ignored", "deferred"]}}}),
                "400": _error("a missing or bad signature, or a body that is not a Stripe event (RW001)"),
                "413": _error("the body is over 1 MiB"),
                "500": _error("applying the event failed; it was stored and will be retried"),
                "503": UNAVAILABLE,
            },
        }},
        "/payment-intents": {"post": {
            "operationId": "create_payment_intent",
            "summary": "One Stripe PaymentIntent per Idempotency-Key for a booking awaiting payment",
            "parameters": [REQUEST_ID, {"name": "Idempotency-Key", "in": "header", "required": True,
                                        "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["booking_id"],
                "properties": {"booking_id": {"type": "string", "format": "uuid"}}}}}},
            "responses": {
                "200": _ok("the PaymentIntent (the same answer on replay)", {
                    "type": "object", "required": ["payment_intent_id", "client_secret", "amount", "currency"],
                    "properties": {"payment_intent_id": {"type": "string"}, "client_secret": {"type": "string"},
                                   "amount": {"type": "integer"}, "currency": {"type": "string"}}}),
                "400": _error("no Idempotency-Key, or a body that is not {\"booking_id\": uuid}"),
                "404": _error("unknown booking (RB005)"),
                "409": _error("the booking is not payable now (RB002), or a request with this key is in progress (RI002)"),
                "413": _error("the body is too large"),
                "422": _error("the key was used with another body (RI001)"),
                "502": _error("Stripe answered with an error or could not be reached"),
                "503": UNAVAILABLE,
            },
        }},
        "/auth/refresh": {"post": {
            "operationId": "refresh",
            "summary": "Rotates a refresh token: a new one and an HS256 access token",
            "parameters": [REQUEST_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["refresh_token"],
                "properties": {"refresh_token": {"type": "string", "minLength": 1, "maxLength": 512}}}}}},
            "responses": {
                "200": _ok("rotated", {
                    "type": "object", "required": ["refresh_token", "access_token", "token_type", "expires_in"],
                    "properties": {"refresh_token": {"type": "string"}, "access_token": {"type": "string"},
                                   "token_type": {"enum": ["Bearer"]}, "expires_in": {"type": "integer"}}}),
                "400": _error("a body that is not {\"refresh_token\": string}"),
                "401": _error("unknown, expired or revoked (RA001), or reuse detected (RA002)"),
                "413": _error("the body is too large"),
                "503": UNAVAILABLE,
            },
        }},
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "The process is up (no database call)", "parameters": [REQUEST_ID],
            "responses": {"200": _ok("up", {"type": "object", "required": ["status"]})},
        }},
        "/readyz": {"get": {
            "operationId": "readyz", "summary": "api.health(): 200 when ok or degraded, 503 when down",
            "parameters": [REQUEST_ID],
            "responses": {
                "200": _ok("ok or degraded", {"type": "object", "required": ["status", "checks"]}),
                "503": _ok("down, or the database cannot be reached", {"type": "object", "required": ["status", "checks"]}),
            },
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This description", "parameters": [REQUEST_ID],
            "responses": {"200": _ok("OpenAPI 3", {"type": "object"})},
        }},
    },
    "components": {"schemas": {"Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {"code": {"type": "string", "minLength": 1}, "message": {"type": "string", "minLength": 1}}}},
    }}},
}


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)
