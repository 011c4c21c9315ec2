"""The OPS_TOKEN rule of GET /ops and GET /metrics (CONTRACT.md, Environment).

- OPS_TOKEN unset: both routes answer 404, as if they did not exist.
- `Authorization: Bearer <OPS_TOKEN>`, compared in constant time: allowed.
- Otherwise 401 with `{"error": {"code": "unauthorized", ...}}`.

A browser cannot send a header on a link, so /ops also takes a console session cookie,
given by `POST /ops/login` (form field `token`) to whoever knows the token: HttpOnly,
SameSite=Strict, path /ops, 12 hours. Its value is an expiry time and an HMAC of it keyed
with the token, so the token itself is never stored in the browser and changing OPS_TOKEN
ends every session. GET /metrics takes the Bearer header only.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .errors import error_response

SESSION_COOKIE = "ops_session"
SESSION_TTL_S = 12 * 3600
LOGIN_BODY_MAX_BYTES = 4096


def _token(request: Request) -> bytes:
    """The configured token; 404 when there is none (the routes are off)."""
    token = request.app.state.settings.ops_token
    if token is None:
        raise HTTPException(404)
    return str(token).encode()


def unauthorized(message: str) -> JSONResponse:
    response = error_response(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="ops"'
    return response


def _bearer_matches(request: Request, token: bytes) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)


def _session_value(token: bytes, expires: int) -> str:
    mac = hmac.new(token, f"ops-session:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def _session_valid(request: Request, token: bytes) -> bool:
    value = request.cookies.get(SESSION_COOKIE, "")
    expires, _, _ = value.partition(".")
    if not expires.isascii() or not expires.isdigit() or len(expires) > 12 or int(expires) < time.time():
        return False
    return hmac.compare_digest(value.encode(), _session_value(token, int(expires)).encode())


def check(request: Request, *, session_ok: bool) -> JSONResponse | None:
    """None when the request may go on; else the 401 answer (404 is raised)."""
    token = _token(request)
    if _bearer_matches(request, token) or (session_ok and _session_valid(request, token)):
        return None
    return unauthorized(f"{request.url.path} needs Authorization: Bearer <OPS_TOKEN>")


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>booking-core console: sign in</title>
<link rel="icon" href="data:,">
<style>body{font:15px system-ui,sans-serif;margin:3em auto;max-width:30em}input{font:inherit;width:100%}</style>
</head><body><h1>On-call console</h1>
<form method="post" action="/ops/login"><p><label for="token">OPS_TOKEN</label>
<input id="token" name="token" type="password" autocomplete="off" required></p>
<p><button type="submit">Open the console</button></p></form></body></html>
"""


async def login_page(request: Request) -> Response:
    _token(request)
    return HTMLResponse(LOGIN_PAGE, headers=SECURITY_HEADERS)


async def login(request: Request) -> Response:
    """POST /ops/login, form field `token`: 303 to /ops with a session cookie, or 401."""
    token = _token(request)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_BODY_MAX_BYTES:
            return error_response(413, "body_too_large", f"the body is over {LOGIN_BODY_MAX_BYTES} bytes")
    given = b""
    for pair in body.split(b"&"):
        name, _, value = pair.partition(b"=")
        if name == b"token":
            given = unquote_to_bytes(value.replace(b"+", b" "))
    if not hmac.compare_digest(given, token):
        return unauthorized("the token does not match OPS_TOKEN")
    expires = int(time.time()) + SESSION_TTL_S
    response = RedirectResponse("/ops", status_code=303)
    response.set_cookie(
        SESSION_COOKIE, _session_value(token, expires), max_age=SESSION_TTL_S, path="/ops",
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )
    return response


# No script runs on these pages and nothing is loaded from elsewhere; they are never
# cached, framed or sent as a referrer.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
