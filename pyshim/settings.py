"""Settings, read once from the environment. Secrets are wrapped so they never print."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.datastructures import Secret


class ConfigError(RuntimeError):
    """The environment lacks or misstates a setting; the message names it."""


def _required(env: Mapping[str, str], name: str, why: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required: {why}")
    return value


def flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A 'true' or 'false' setting; anything else is refused (a typo must not flip it)."""
    value = env.get(name, "").strip().lower() or ("true" if default else "false")
    if value not in ("true", "false"):
        raise ConfigError(f"{name} must be 'true' or 'false', not {value!r}")
    return value == "true"


def _positive_int(env: Mapping[str, str], name: str, default: int, most: int) -> int:
    value = env.get(name, "").strip() or str(default)
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise ConfigError(f"{name} must be a whole number from 1 to {most}, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    database_url: Secret
    webhook_secrets: tuple[Secret, ...]
    stripe_api_key: Secret | None = None
    stripe_api_base: str | None = None
    stripe_livemode: bool = False
    pool_min_size: int = 2
    pool_max_size: int = 10
    # How long a request waits for a pooled connection before answering 503.
    pool_timeout_s: float = 5.0
    # How long the pool retries one lost connection (backing off 1, 2, 4 ... s) before it
    # gives up; the next request then starts a new attempt at once. psycopg_pool's default
    # (300 s) let the backoff grow to 8 and 16 s, so a shim served again up to that long
    # after its database came back (tests/e2e/test_crashes.py).
    pool_reconnect_timeout_s: float = 5.0
    webhook_tolerance_s: int = 300
    webhook_body_max_bytes: int = 1024 * 1024
    request_body_max_bytes: int = 16 * 1024
    # How long POST /payment-intents waits for Stripe before freeing the key for a retry.
    stripe_timeout_s: float = 20.0
    jwt_secret: Secret | None = None
    refresh_token_pepper: Secret | None = None
    access_token_ttl_s: int = 900
    # Group commit of webhooks (pyshim/batching.py): at most this many transactions of
    # events in flight, each with at most webhook_batch_max events.
    webhook_batch_concurrency: int = 4
    webhook_batch_max: int = 32
    # GET /ops and GET /metrics (pyshim/console.py, pyshim/metrics.py): off (404) without a
    # token; they read the database as OPS_DATABASE_URL's login (booking_ops), in a pool of
    # their own so that an on-call page never takes a webhook's connection.
    ops_token: Secret | None = None
    ops_database_url: Secret | None = None
    ops_pool_max_size: int = 2
    # How long GET /metrics reuses the gauges read from the database: a scrape storm makes
    # one query per this many seconds, not one per scrape.
    metrics_db_cache_s: float = 5.0
    # False behind a pooler in transaction mode that keeps no prepared statements
    # (pgbouncer before 1.21): successive transactions of one client land on different
    # server connections, so a statement prepared on one is missing on the next.
    prepared_statements: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = _required(env, "DATABASE_URL", "the PostgreSQL database the shim calls")
        secrets = _required(
            env, "STRIPE_WEBHOOK_SECRET",
            "the webhook signing secret (several, comma-separated, while rotating)",
        )
        webhook_secrets = tuple(Secret(s.strip()) for s in secrets.split(",") if s.strip())
        if not webhook_secrets:
            raise ConfigError("STRIPE_WEBHOOK_SECRET is required: it holds no secret")
        livemode = env.get("STRIPE_LIVEMODE", "false").strip().lower()
        if livemode not in ("true", "false"):
            raise ConfigError(f"STRIPE_LIVEMODE must be 'true' or 'false', not {livemode!r}")
        api_key = env.get("STRIPE_API_KEY", "").strip()
        auth = {}
        for name, field in (("JWT_SECRET", "jwt_secret"), ("REFRESH_TOKEN_PEPPER", "refresh_token_pepper")):
            value = env.get(name, "")
            if value and len(value.encode()) < 32:
                raise ConfigError(f"{name} must be at least 32 bytes (it signs or peppers tokens)")
            auth[field] = Secret(value) if value else None
        ops_token = env.get("OPS_TOKEN", "")
        if ops_token and len(ops_token.encode()) < 32:
            raise ConfigError("OPS_TOKEN must be at least 32 bytes (it guards GET /ops and GET /metrics)")
        ops_database_url = env.get("OPS_DATABASE_URL", "").strip()
        cache_s = env.get("METRICS_DB_CACHE_S", "").strip() or "5"
        try:
            metrics_db_cache_s = float(cache_s)
        except ValueError:
            metrics_db_cache_s = -1.0
        if not 0 <= metrics_db_cache_s <= 300:
            raise ConfigError(f"METRICS_DB_CACHE_S must be a number of seconds from 0 to 300, not {cache_s!r}")
        return cls(
            **auth,
            database_url=Secret(database_url),
            webhook_secrets=webhook_secrets,
            stripe_api_key=Secret(api_key) if api_key else None,
            stripe_api_base=env.get("STRIPE_API_BASE", "").strip() or None,
            stripe_livemode=livemode == "true",
            pool_min_size=int(env.get("DB_POOL_MIN_SIZE", "2")),
            pool_max_size=int(env.get("DB_POOL_MAX_SIZE", "10")),
            webhook_batch_concurrency=_positive_int(env, "WEBHOOK_BATCH_CONCURRENCY", 4, 1000),
            webhook_batch_max=_positive_int(env, "WEBHOOK_BATCH_MAX", 32, 100),
            ops_token=Secret(ops_token) if ops_token else None,
            ops_database_url=Secret(ops_database_url) if ops_database_url else None,
            metrics_db_cache_s=metrics_db_cache_s,
            prepared_statements=flag(env, "DB_PREPARED_STATEMENTS", True),
        )
