"""Reading a request's body within a limit, for every route that takes one."""

from __future__ import annotations

import json

from starlette.requests import Request

from .errors import ApiError


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 past `limit` bytes without reading it all."""
    declared = request.headers.get("content-length")
    # ASCII digits only (str.isdigit() is also true for superscript digits, which int()
    # refuses), and no int() of thousands of them: more digits than the limit has is over
    # the limit.
    if declared is not None and declared.isascii() and declared.isdigit():
        digits = declared.lstrip("0") or "0"
        if len(digits) > len(str(limit)) or int(digits) > limit:
            raise ApiError(413, "body_too_large", f"the body is over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int):
    """The body parsed as JSON; 400 (22023) when it is not JSON. Nesting deeper than the
    parser's recursion limit (a 10 KB body can be 5,000 deep) raises RecursionError: that
    is a bad body too, not a server error."""
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "22023", "the body is not JSON (or is nested too deep)") from None
