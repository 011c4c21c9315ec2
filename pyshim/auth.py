"""POST /auth/refresh: rotate a refresh token, answer with a new one and an access token.

The database only ever sees HMAC-SHA256(REFRESH_TOKEN_PEPPER, token)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid

import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse

from .errors import ApiError, error_response
from .http_body import read_json
from .request_id import request_id_of


def is_utf8_encodable(text: str) -> bool:
    """False for a string with a lone surrogate (JSON allows "\\ud800"; UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def token_hash(pepper: str, token: str) -> bytes:
    return hmac.new(pepper.encode(), token.encode(), hashlib.sha256).digest()


async def refresh(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    if settings.jwt_secret is None or settings.refresh_token_pepper is None:
        raise ApiError(503, "not_configured", "POST /auth/refresh needs JWT_SECRET and REFRESH_TOKEN_PEPPER")
    body = await read_json(request, settings.request_body_max_bytes)
    old = body.get("refresh_token") if isinstance(body, dict) else None
    if not isinstance(old, str) or not 1 <= len(old) <= 512 or not is_utf8_encodable(old):
        raise ApiError(400, "22023", 'the body must be {"refresh_token": "..."}')
    pepper = str(settings.refresh_token_pepper)
    new = secrets.token_urlsafe(32)
    # RA001 (unknown, expired, revoked) comes back as an error and becomes 401.
    outcome, user_id, family_id = (await request.app.state.db.call_rows(
        "rotate_refresh_token", [token_hash(pepper, old), token_hash(pepper, new)], request_id_of(request.scope)))[0]
    if outcome == "reuse_detected":
        return error_response(401, "RA002", "refresh token reuse detected; every session of this login was revoked")
    now = int(time.time())
    access = jwt.encode({"sub": user_id, "fam": str(family_id), "iat": now, "exp": now + settings.access_token_ttl_s,
                         "jti": uuid.uuid4().hex}, str(settings.jwt_secret), algorithm="HS256")
    return JSONResponse({"refresh_token": new, "access_token": access, "token_type": "Bearer",
                         "expires_in": settings.access_token_ttl_s},
                        headers={"Cache-Control": "no-store"})
