"""The ASGI app, configured from the environment; `python -m pyshim serve` runs it (pyshim/serve.py)."""

from __future__ import annotations

import contextlib
import logging

import psycopg
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .auth import refresh
from .console import ops_console, ops_pool
from .db import Database
from .errors import HANDLERS, ApiError, is_unavailable
from .metrics import MetricsMiddleware, metrics
from .monitoring import init_sentry
from .openapi import openapi
from .ops_auth import login, login_page
from .payments import create_payment_intent, stripe_client
from .request_id import RequestIdMiddleware, request_id_of
from .settings import ConfigError, Settings
from .stripe_webhook import event_batcher, stripe_webhook

log = logging.getLogger("pyshim")


async def healthz(request: Request) -> JSONResponse:
    """The process is up; no database call."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """api.health(): 200 when ok or degraded, 503 when down or unreachable."""
    try:
        health = await request.app.state.db.call("health", [], request_id_of(request.scope))
    except psycopg.Error as exc:
        if not is_unavailable(exc):
            raise
        return JSONResponse(
            {"status": "down", "checks": {"database": {"status": "down", "error": type(exc).__name__}}},
            status_code=503,
        )
    # Events of the other mode are ignored by the database (stripe.config): a shim set up
    # for another mode than the database would acknowledge every event and apply none.
    db_livemode = health.get("checks", {}).get("stripe_events", {}).get("livemode")
    if db_livemode is not None and db_livemode != request.app.state.settings.stripe_livemode:
        health["status"] = "degraded"
        health["checks"]["stripe_mode"] = {
            "status": "degraded",
            "message": f"STRIPE_LIVEMODE={str(request.app.state.settings.stripe_livemode).lower()} "
                       f"but the database applies livemode={str(db_livemode).lower()} events (stripe.config)",
        }
    return JSONResponse(health, status_code=503 if health.get("status") == "down" else 200)


async def payment_intents(request: Request) -> JSONResponse:
    if request.app.state.stripe is None:
        raise ApiError(503, "not_configured", "POST /payment-intents needs STRIPE_API_KEY")
    return await create_payment_intent(request)


def create_app(settings: Settings | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            app.state.settings = settings or Settings.from_env()
        except ConfigError as exc:
            log.error("refusing to start: %s", exc)
            raise
        init_sentry("pyshim")
        app.state.db = Database(app.state.settings)
        app.state.webhooks = event_batcher(app.state.db, app.state.settings)
        app.state.stripe = stripe_client(app.state.settings)
        if app.state.stripe is None:
            log.warning("POST /payment-intents answers 503: STRIPE_API_KEY is not set")
        app.state.ops_pool = ops_pool(app.state.settings)  # None while OPS_TOKEN is unset
        await app.state.db.open()
        if app.state.ops_pool is not None:
            await app.state.ops_pool.open(wait=False)
        try:
            yield
        finally:
            if app.state.ops_pool is not None:
                await app.state.ops_pool.close()
            await app.state.db.close()

    routes = [
        Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
        Route("/payment-intents", payment_intents, methods=["POST"]),
        Route("/auth/refresh", refresh, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/ops", ops_console, methods=["GET"]),
        Route("/ops/login", login_page, methods=["GET"]),
        Route("/ops/login", login, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestIdMiddleware), Middleware(MetricsMiddleware, routes=[r.path for r in routes])],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )


app = create_app()
