"""Sentry, when SENTRY_DSN is set; nothing is sent when it is not."""

from __future__ import annotations

import logging
import os

import sentry_sdk

log = logging.getLogger("pyshim")


def init_sentry(component: str) -> None:
    dsn = os.environ.get("SENTRY_DSN", "").strip()
    if not dsn:
        return
    sentry_sdk.init(dsn=dsn, send_default_pii=False, traces_sample_rate=0.0,
                    server_name=component, environment=os.environ.get("SENTRY_ENVIRONMENT", "production"))
    log.info("Sentry enabled for %s", component)


def capture(exc: BaseException, request_id: str | None = None) -> None:
    """Reports an exception if Sentry is enabled, with the request's correlation id."""
    if not sentry_sdk.is_initialized():
        return
    with sentry_sdk.new_scope() as scope:
        if request_id:
            scope.set_tag("correlation_id", request_id)
        sentry_sdk.capture_exception(exc)
