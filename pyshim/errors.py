"""One table from SQLSTATE to HTTP status, and the JSON error body every error answer uses."""

from __future__ import annotations

import logging

import psycopg
import psycopg_pool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from .monitoring import capture

log = logging.getLogger("pyshim")

# The contract's SQLSTATE table.
SQLSTATE_HTTP = {
    "RB001": 409, "RB002": 409, "RB003": 409, "RB004": 409, "RB005": 404,
    "RI001": 422, "RI002": 409,
    "RW001": 400,
    "RA001": 401, "RA002": 401,
    "RX001": 500,
}


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def http_status_for(sqlstate: str | None) -> int | None:
    """The HTTP status a SQLSTATE maps to, or None for an unexpected database error."""
    if sqlstate is None:
        return None
    if sqlstate in SQLSTATE_HTTP:
        return SQLSTATE_HTTP[sqlstate]
    if sqlstate.startswith("22"):  # data exception: a bad argument
        return 400
    return None


class ApiError(Exception):
    """An error answer decided in Python (bad header, body too large ...)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# SQLSTATEs that mean the database (not the statement) is the problem: connection
# exceptions (class 08), the server shutting down or crashed (57P01, 57P02, 57P03) and
# too many connections (53300).
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_unavailable(exc: BaseException) -> bool:
    """True when the database could not be reached at all (answer 503, not 500).

    Decided by SQLSTATE, not by the exception class: psycopg raises statement errors such
    as 54001 (a jsonb nested too deep) as OperationalError subclasses too, and those are
    the request's fault, not the database's. An OperationalError with no SQLSTATE is a
    connection that failed or closed (no server answered it)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:
        return isinstance(exc, psycopg.OperationalError)
    return sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, f"http_{exc.status_code}", str(exc.detail))


async def database_error(request: Request, exc: psycopg.Error) -> JSONResponse:
    if is_unavailable(exc):
        log.warning("database unavailable: %s", exc)
        return error_response(503, "database_unavailable", "the database cannot be reached; retry later")
    sqlstate = getattr(exc, "sqlstate", None)
    status = http_status_for(sqlstate)
    if status is None or status >= 500:
        log.error("database error %s: %s", sqlstate, exc)
        capture(exc, request.scope.get("state", {}).get("request_id"))
        return error_response(500, sqlstate or "internal", "internal error")
    diag = exc.diag
    return error_response(status, sqlstate, diag.message_primary or str(exc))


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    capture(exc, request.scope.get("state", {}).get("request_id"))
    return error_response(500, "internal", "internal error")


HANDLERS = {
    ApiError: api_error,
    HTTPException: http_error,
    psycopg.Error: database_error,
    psycopg_pool.PoolTimeout: database_error,
    Exception: unexpected_error,
}
