"""The webhook bench's baseline: an app that does nothing but SELECT 1 through a pool built
as the shim builds its own (pyshim.db.Database from the same settings), served the way the
shim is (pyshim/serve.py, the same uvicorn limits). What the shim adds over it is the
webhook's own cost.

    .venv/bin/python -m tests.bench.bare_app [uvicorn options]
"""

from __future__ import annotations

import contextlib
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pyshim.db import Database
from pyshim.serve import main as serve_main
from pyshim.settings import Settings

# The path wrk loads; /healthz is what the tests' launcher waits for (tests/shim/server.py).
SELECT1_PATH = "/select1"


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def select1(request: Request) -> JSONResponse:
    db = request.app.state.db
    async with db.pool.connection() as conn:
        cur = await conn.execute("SELECT 1", prepare=db.prepare)
        await cur.fetchone()
    return JSONResponse({"ok": True})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    app.state.db = Database(Settings.from_env())
    await app.state.db.open()
    try:
        yield
    finally:
        await app.state.db.close()


app = Starlette(routes=[Route("/healthz", healthz, methods=["GET"]), Route(SELECT1_PATH, select1, methods=["GET"])],
                lifespan=lifespan)

# How the bench starts it: as the shim's SHIM_COMMAND, with this app.
BARE_APP_COMMAND = [sys.executable, "-m", "tests.bench.bare_app"]

if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:], app="tests.bench.bare_app:app"))
