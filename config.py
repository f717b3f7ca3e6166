"""Configuration from the environment: the one place that reads settings.

Every setting is documented in README.md (table "Configuration") with its default.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Root of the project checkout (where app.py lives).
ROOT = Path(__file__).resolve().parent
#: Where the embedded servers keep their data and `make run` writes stack.env.
LOCAL_DIR = Path(os.environ.get("GCP_LOCAL_DIR") or ROOT / ".local")
#: The URLs that select external servers; with none set, the embedded stack is used.
URL_VARS = ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def _str(name: str, default: str | None = None) -> str | None:
    raw = os.environ.get(name)
    return raw if raw not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    """A snapshot of the environment; read once with :func:`get_settings`."""

    database_url: str | None = None
    redis_url: str | None = None
    kafka_bootstrap_servers: str | None = None
    host: str = "0.0.0.0"
    port: int = 8080

    # Auth: HS256 with a shared secret in development, RS256 through JWKS in production.
    jwt_secret: str = "dev-only-secret-change-me-in-production-0123"
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None

    # Certificates.
    cvc_length: int = 6
    cvc_encryption_key: str | None = None
    cvc_max_attempts: int = 5
    certificate_validity_days: int | None = None
    hold_ttl_seconds: int = 15 * 60
    reservation_ttl_seconds: int = 30 * 60
    pool_low_water_mark: int = 100
    default_currency: str = "RUB"

    # HTTP.
    rate_limit: str = "200/second"
    max_body_bytes: int = 1_048_576
    cache_ttl_seconds: int = 300

    # Kafka topics (contract names; overridable so test runs can isolate themselves).
    topic_sales_order: str = "All_SalesOrder"
    topic_payments: str = "All_Payments"
    topic_clients: str = "All_Clients"
    topic_stream: str = "GiftCertificates.Stream"
    topic_dlq: str = "GiftCertificates.DLQ"
    topic_partitions: int = 6
    consumer_group: str = "gcp-pump"
    kafka_fetch_wait_ms: int = 20

    # Workers.
    actor_max_retries: int = 5
    actor_min_backoff_ms: int = 100
    actor_max_backoff_ms: int = 5_000
    worker_timeout_ms: int = 200
    sms_max_retries: int = 5
    sms_gateway_url: str | None = None
    inbox_sweep_after_ms: int = 30_000
    scheduler_interval_ms: int = 1_000

    log_level: str = "INFO"
    log_json: bool = True

    @property
    def embedded(self) -> bool:
        """True when no external server URL is configured."""
        return not (self.database_url or self.redis_url or self.kafka_bootstrap_servers)

    @property
    def topics_in(self) -> tuple[str, str, str]:
        return (self.topic_sales_order, self.topic_payments, self.topic_clients)


def load_settings() -> Settings:
    """Build :class:`Settings` from ``os.environ`` (no caching)."""
    validity = _str("CERTIFICATE_VALIDITY_DAYS")
    algorithms = tuple(a.strip() for a in (_str("JWT_ALGORITHMS") or "").split(",") if a.strip())
    if not algorithms:
        algorithms = ("RS256",) if _str("JWKS_URL") else ("HS256",)
    return Settings(
        database_url=_str("DATABASE_URL"),
        redis_url=_str("REDIS_URL"),
        kafka_bootstrap_servers=_str("KAFKA_BOOTSTRAP_SERVERS"),
        host=_str("HOST", "0.0.0.0"),
        port=_int("PORT", 8080),
        jwt_secret=_str("JWT_SECRET", Settings.jwt_secret),
        jwt_algorithms=algorithms,
        jwks_url=_str("JWKS_URL"),
        jwt_issuer=_str("JWT_ISSUER"),
        jwt_audience=_str("JWT_AUDIENCE"),
        cvc_length=_int("CVC_LENGTH", 6),
        cvc_encryption_key=_str("CVC_ENCRYPTION_KEY"),
        cvc_max_attempts=_int("CVC_MAX_ATTEMPTS", 5),
        certificate_validity_days=int(validity) if validity else None,
        hold_ttl_seconds=_int("HOLD_TTL_SECONDS", 15 * 60),
        reservation_ttl_seconds=_int("RESERVATION_TTL_SECONDS", 30 * 60),
        pool_low_water_mark=_int("POOL_LOW_WATER_MARK", 100),
        default_currency=_str("DEFAULT_CURRENCY", "RUB"),
        rate_limit=_str("RATE_LIMIT", "200/second"),
        max_body_bytes=_int("MAX_BODY_BYTES", 1_048_576),
        cache_ttl_seconds=_int("CACHE_TTL_SECONDS", 300),
        topic_sales_order=_str("TOPIC_SALES_ORDER", "All_SalesOrder"),
        topic_payments=_str("TOPIC_PAYMENTS", "All_Payments"),
        topic_clients=_str("TOPIC_CLIENTS", "All_Clients"),
        topic_stream=_str("TOPIC_STREAM", "GiftCertificates.Stream"),
        topic_dlq=_str("TOPIC_DLQ", "GiftCertificates.DLQ"),
        topic_partitions=_int("TOPIC_PARTITIONS", 6),
        consumer_group=_str("KAFKA_CONSUMER_GROUP", "gcp-pump"),
        kafka_fetch_wait_ms=_int("KAFKA_FETCH_WAIT_MS", 20),
        actor_max_retries=_int("ACTOR_MAX_RETRIES", 5),
        actor_min_backoff_ms=_int("ACTOR_MIN_BACKOFF_MS", 100),
        actor_max_backoff_ms=_int("ACTOR_MAX_BACKOFF_MS", 5_000),
        worker_timeout_ms=_int("WORKER_TIMEOUT_MS", 200),
        sms_max_retries=_int("SMS_MAX_RETRIES", 5),
        sms_gateway_url=_str("SMS_GATEWAY_URL"),
        inbox_sweep_after_ms=_int("INBOX_SWEEP_AFTER_MS", 30_000),
        scheduler_interval_ms=_int("SCHEDULER_INTERVAL_MS", 1_000),
        log_level=_str("LOG_LEVEL", "INFO"),
        log_json=_str("LOG_FORMAT", "json") == "json",
    )


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def reset_settings() -> None:
    """Forget the cached settings (tests and `app.py run` change the environment)."""
    global _settings
    _settings = None


def load_stack_env(path: Path = LOCAL_DIR / "stack.env") -> bool:
    """Adopt the URLs of a running embedded stack (written by `make run`) when none is set.

    Lets `python app.py token|dlq ...` in a second terminal find the servers of `make run`.
    Returns True when the file was used.
    """
    if any(os.environ.get(v) for v in URL_VARS) or not path.exists():
        return False
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            os.environ.setdefault(key.strip(), value.strip())
    reset_settings()
    return True
