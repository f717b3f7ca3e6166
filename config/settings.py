"""The settings, read from the environment: the one place in the service that reads it.

Every setting is documented in README.md (table "Configuration") with its default; what a
deployment may not set is :mod:`config.checks`'s business.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

#: Root of the project checkout (where app.py lives).
ROOT = Path(__file__).resolve().parents[1]
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


#: What :func:`_secret` returns for a ``NAME_FILE`` it cannot read (``check_settings`` names it).
UNREADABLE = "\0unreadable:"


def _secret(name: str) -> str | None:
    """A secret from ``NAME``, or from the file named by ``NAME_FILE`` (a mounted secret)."""
    path = _str(name + "_FILE")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:  # reported by check_settings, never with the secret
            return f"{UNREADABLE}{exc.strerror}"
    return _str(name)


def _secret_list(name: str) -> tuple[str, ...]:
    """A list of secrets (``CVC_OLD_KEYS``), comma- or line-separated, from ``NAME`` or ``NAME_FILE``."""
    return tuple(k.strip() for k in re.split(r"[,\n]", _secret(name) or "") if k.strip())


def redact_url(url: str | None) -> str | None:
    """``url`` with its password replaced by ``***``, for a console or a log line."""
    from urllib.parse import urlsplit, urlunsplit

    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _money(name: str, default: str) -> Decimal:
    """A money setting such as ``5000.00`` (two decimals at most, not negative)."""
    raw = (os.environ.get(name) or "").strip() or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{name} must be an amount like {default}, not {raw!r}") from None
    if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.01")):
        raise ConfigError(f"{name} must be an amount like {default}, not {raw!r}")
    return value.quantize(Decimal("0.01"))


_DURATION_RE = re.compile(r"^([0-9]+)\s*(s|m|h|d)?$")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(name: str, default_seconds: int) -> int:
    """A duration setting in seconds, or with a unit: ``86400``, ``90s``, ``30m``, ``24h``, ``1d``."""
    raw = (os.environ.get(name) or "").strip().lower()
    if not raw:
        return default_seconds
    match = _DURATION_RE.fullmatch(raw)
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(f"{name} must be a positive duration such as 86400, 30m or 24h, not {raw!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


#: ``fetch.wait.max.ms`` by ``KAFKA_PROFILE`` (kafka/measure_settings.py measured both: on Apache
#: Kafka 500 ms costs no latency and the least idle CPU; Tansu needs 20 ms, its latency floor).
KAFKA_FETCH_WAIT_MS = {"apache": 500, "tansu": 20}
KAFKA_PROFILES = tuple(KAFKA_FETCH_WAIT_MS)


def _kafka_profile() -> str:
    """``KAFKA_PROFILE`` as given (lower-cased); an unknown one is refused by the checks."""
    return (_str("KAFKA_PROFILE") or "apache").strip().lower()


def _bool(name: str, default: bool = False) -> bool:
    raw = (os.environ.get(name) or "").strip().lower()
    return default if not raw else raw in ("1", "true", "yes", "on")


#: The development-only HS256 secret (in the repository: never accepted outside development).
DEV_JWT_SECRET = "dev-only-secret-change-me-in-production-0123"
#: The development-only key of the idempotency records' request hashes (never accepted
#: outside development).
DEV_IDEMPOTENCY_KEY = "dev-only-idempotency-key-change-me-in-production"
#: Shortest HS256 secret accepted outside development (RFC 7518 3.2: at least the hash size).
MIN_SECRET_BYTES = 32
#: The SMS text's default: Russian, code, CVC, nominal and currency, the expiry where there is
#: one, and the secrecy line. Placeholders: {code} {cvc} {nominal} {currency} {expiry}.
DEFAULT_SMS_TEMPLATE = ("Подарочный сертификат {code}: CVC {cvc}, номинал {nominal} {currency}{expiry}. "
                        "Никому не сообщайте CVC.")
#: The JSON body of the `http` gateway; each placeholder is replaced inside a JSON string.
DEFAULT_SMS_HTTP_BODY = '{"to": "{to}", "text": "{text}", "reference": "{reference}"}'
NOTIFY_PATHS = ("sms", "crm")
SMS_GATEWAYS = ("log", "http", "smpp")
#: The CVC length the contract allows a deployment to choose.
CVC_LENGTH_RANGE = (4, 12)


class ConfigError(RuntimeError):
    """A setting a restart cannot mend: the process refuses to start, naming the setting."""


@dataclass(frozen=True)
class Settings:
    """A snapshot of the environment; read once with :func:`get_settings`."""

    database_url: str | None = None
    redis_url: str | None = None
    kafka_bootstrap_servers: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    #: ``development`` relaxes the production checks (see :func:`check_settings`).
    gcp_env: str | None = None

    # Auth: HS256 with a shared secret in development, RS256 through JWKS in production.
    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    #: How long the JWKS's keys (and a token verified with them) are trusted before the JWKS is
    #: fetched again: a key withdrawn from the JWKS stops verifying within this time.
    jwks_cache_seconds: int = 300

    # Certificates.
    cvc_length: int = 6
    cvc_encryption_key: str | None = None
    cvc_old_keys: tuple[str, ...] = ()
    cvc_max_attempts: int = 5
    cvc_client_budget: str | None = "20/10 minutes"
    certificate_validity_days: int | None = None
    hold_ttl_seconds: int = 15 * 60
    reservation_ttl_seconds: int = 30 * 60
    pool_low_water_mark: int = 100
    default_currency: str = "RUB"
    #: Adjustments above this amount wait for a second admin's approval.
    adjust_approval_limit: Decimal = Decimal("5000.00")
    #: How long a pending adjustment may wait for its approval (seconds).
    adjust_approval_ttl_seconds: int = 24 * 3600
    #: The four-eyes limit counts what a certificate moved without a second approver this long.
    adjust_approval_window_seconds: int = 24 * 3600
    #: The token claim that names an admin for the four-eyes rule (compared case-insensitively).
    admin_identity_claim: str = "sub"

    # HTTP.
    #: Keys the hashes by which an ``Idempotency-Key``'s retry is told from another request;
    #: independent of the CVC keys, so a CVC key rotation never changes a retry's answer.
    idempotency_key: str = DEV_IDEMPOTENCY_KEY
    rate_limit: str = "200/second"
    max_body_bytes: int = 1_048_576
    cache_ttl_seconds: int = 300
    metrics_token: str | None = None
    #: ``METRICS_PUBLIC=true``: serve the metrics without a token outside development (the
    #: network in front of them already keeps strangers out).
    metrics_public: bool = False
    ready_requires_workers: bool = False

    # PostgreSQL, per connection.
    db_lock_timeout_ms: int = 5_000
    db_statement_timeout_ms: int = 30_000

    # Kafka topics (contract names; overridable so test runs can isolate themselves).
    topic_sales_order: str = "All_SalesOrder"
    topic_payments: str = "All_Payments"
    topic_clients: str = "All_Clients"
    topic_stream: str = "GiftCertificates.Stream"
    topic_dlq: str = "GiftCertificates.DLQ"
    #: The CloudEvents ``source`` of every stream record (a URI reference naming this service).
    cloudevents_source: str = "urn:retailer:gcp"
    topic_partitions: int = 6
    consumer_group: str = "gcp-pump"
    #: Which broker the consumer timings are tuned for: ``apache`` (Apache Kafka and its
    #: kin answer a waiting fetch as soon as data arrives) or ``tansu`` (the embedded broker,
    #: which holds a waiting fetch for the whole of ``fetch.wait.max.ms``).
    kafka_profile: str = "apache"
    kafka_fetch_wait_ms: int = 500
    kafka_max_message_bytes: int = 1_048_576
    request_read_timeout_ms: int = 10_000

    # Workers.
    actor_max_retries: int = 5
    actor_min_backoff_ms: int = 100
    actor_max_backoff_ms: int = 5_000
    worker_timeout_ms: int = 200
    sms_max_retries: int = 5
    sms_gateway_url: str | None = None

    # CVC delivery: NOTIFY_VIA sms (we send) or crm (CRM fetches /cvc once); the SMS gateway.
    notify_via: str = "crm"
    sms_gateway: str | None = None
    sms_template: str = DEFAULT_SMS_TEMPLATE
    sms_log_path: str = str(LOCAL_DIR / "sms.log")
    sms_http_method: str = "POST"
    sms_http_auth_header: str = "Authorization"
    sms_http_auth: str | None = None
    sms_http_timeout_ms: int = 5_000
    sms_http_body: str = DEFAULT_SMS_HTTP_BODY
    smpp_host: str | None = None
    smpp_port: int = 2775
    smpp_system_id: str | None = None
    smpp_password: str | None = None
    smpp_source_addr: str = "GiftCard"
    smpp_timeout_ms: int = 5_000
    smpp_receipt_wait_ms: int = 10_000
    sms_sweep_after_ms: int = 30_000
    inbox_sweep_after_ms: int = 30_000
    scheduler_interval_ms: int = 1_000
    heartbeat_interval_s: float = 5.0

    log_level: str = "INFO"
    log_json: bool = True

    @property
    def embedded(self) -> bool:
        """True when no external server URL is configured."""
        return not (self.database_url or self.redis_url or self.kafka_bootstrap_servers)

    @property
    def development(self) -> bool:
        """The embedded default, or ``GCP_ENV=development`` said explicitly."""
        return self.embedded or self.gcp_env == "development"

    @property
    def accepts_hs256(self) -> bool:
        return any(a.upper().startswith("HS") for a in self.jwt_algorithms)

    @property
    def topics_in(self) -> tuple[str, str, str]:
        return (self.topic_sales_order, self.topic_payments, self.topic_clients)

    def contract_of(self, topic: str) -> str | None:
        """The contract name of a configured topic (tests suffix the real names), or None."""
        return {self.topic_sales_order: "All_SalesOrder", self.topic_payments: "All_Payments",
                self.topic_clients: "All_Clients", self.topic_stream: "GiftCertificates.Stream"}.get(topic)


def load_settings() -> Settings:
    """Build :class:`Settings` from ``os.environ`` (no caching)."""
    validity = _str("CERTIFICATE_VALIDITY_DAYS")
    algorithms = tuple(a.strip() for a in (_str("JWT_ALGORITHMS") or "").split(",") if a.strip())
    development = (not any(_str(v) for v in URL_VARS)
                   or (_str("GCP_ENV") or "").strip().lower() == "development")
    gateway = (_str("SMS_GATEWAY") or ("http" if _str("SMS_GATEWAY_URL") else None)
               or ("log" if development else None))
    gateway = gateway.strip().lower() if gateway else None
    if not algorithms:
        algorithms = ("RS256",) if _str("JWKS_URL") else ("HS256",)
    return Settings(
        database_url=_str("DATABASE_URL"),
        redis_url=_str("REDIS_URL"),
        kafka_bootstrap_servers=_str("KAFKA_BOOTSTRAP_SERVERS"),
        host=_str("HOST", "127.0.0.1"),
        port=_int("PORT", 8080),
        gcp_env=(_str("GCP_ENV") or "").strip().lower() or None,
        jwt_secret=_secret("JWT_SECRET") or Settings.jwt_secret,
        jwt_algorithms=algorithms,
        jwks_url=_str("JWKS_URL"),
        jwt_issuer=_str("JWT_ISSUER"),
        jwt_audience=_str("JWT_AUDIENCE"),
        jwks_cache_seconds=_int("JWKS_CACHE_SECONDS", 300),
        cvc_length=_int("CVC_LENGTH", 6),
        cvc_encryption_key=_secret("CVC_ENCRYPTION_KEY"),
        cvc_old_keys=_secret_list("CVC_OLD_KEYS"),
        cvc_max_attempts=_int("CVC_MAX_ATTEMPTS", 5),
        cvc_client_budget=_budget(_str("CVC_CLIENT_BUDGET", "20/10 minutes")),
        certificate_validity_days=int(validity) if validity else None,
        hold_ttl_seconds=_int("HOLD_TTL_SECONDS", 15 * 60),
        reservation_ttl_seconds=_int("RESERVATION_TTL_SECONDS", 30 * 60),
        pool_low_water_mark=_int("POOL_LOW_WATER_MARK", 100),
        default_currency=_str("DEFAULT_CURRENCY", "RUB"),
        adjust_approval_limit=_money("ADJUST_APPROVAL_LIMIT", "5000.00"),
        adjust_approval_ttl_seconds=_duration("ADJUST_APPROVAL_TTL", 24 * 3600),
        adjust_approval_window_seconds=_duration("ADJUST_APPROVAL_WINDOW", 24 * 3600),
        admin_identity_claim=(_str("ADMIN_IDENTITY_CLAIM") or "sub").strip(),
        idempotency_key=_secret("IDEMPOTENCY_KEY") or Settings.idempotency_key,
        rate_limit=_str("RATE_LIMIT", "200/second"),
        max_body_bytes=_int("MAX_BODY_BYTES", 1_048_576),
        cache_ttl_seconds=_int("CACHE_TTL_SECONDS", 300),
        metrics_token=_secret("METRICS_TOKEN"),
        metrics_public=_bool("METRICS_PUBLIC"),
        ready_requires_workers=_bool("READY_REQUIRES_WORKERS"),
        db_lock_timeout_ms=_int("DB_LOCK_TIMEOUT_MS", 5_000),
        db_statement_timeout_ms=_int("DB_STATEMENT_TIMEOUT_MS", 30_000),
        topic_sales_order=_str("TOPIC_SALES_ORDER", "All_SalesOrder"),
        topic_payments=_str("TOPIC_PAYMENTS", "All_Payments"),
        topic_clients=_str("TOPIC_CLIENTS", "All_Clients"),
        topic_stream=_str("TOPIC_STREAM", "GiftCertificates.Stream"),
        topic_dlq=_str("TOPIC_DLQ", "GiftCertificates.DLQ"),
        cloudevents_source=_str("CLOUDEVENTS_SOURCE", "urn:retailer:gcp"),
        topic_partitions=_int("TOPIC_PARTITIONS", 6),
        consumer_group=_str("KAFKA_CONSUMER_GROUP", "gcp-pump"),
        kafka_profile=_kafka_profile(),
        kafka_fetch_wait_ms=_int("KAFKA_FETCH_WAIT_MS", KAFKA_FETCH_WAIT_MS.get(_kafka_profile(), 500)),
        kafka_max_message_bytes=_int("KAFKA_MAX_MESSAGE_BYTES", 1_048_576),
        request_read_timeout_ms=_int("REQUEST_READ_TIMEOUT_MS", 10_000),
        actor_max_retries=_int("ACTOR_MAX_RETRIES", 5),
        actor_min_backoff_ms=_int("ACTOR_MIN_BACKOFF_MS", 100),
        actor_max_backoff_ms=_int("ACTOR_MAX_BACKOFF_MS", 5_000),
        worker_timeout_ms=_int("WORKER_TIMEOUT_MS", 200),
        sms_max_retries=_int("SMS_MAX_RETRIES", 5),
        sms_gateway_url=_str("SMS_GATEWAY_URL"),
        notify_via=(_str("NOTIFY_VIA") or ("sms" if gateway else "crm")).strip().lower(),
        sms_gateway=gateway,
        sms_template=_str("SMS_TEMPLATE", DEFAULT_SMS_TEMPLATE),
        sms_log_path=_str("SMS_LOG_PATH", str(LOCAL_DIR / "sms.log")),
        sms_http_method=_str("SMS_HTTP_METHOD", "POST").upper(),
        sms_http_auth_header=_str("SMS_HTTP_AUTH_HEADER", "Authorization"),
        sms_http_auth=_secret("SMS_HTTP_AUTH"),
        sms_http_timeout_ms=_int("SMS_HTTP_TIMEOUT_MS", 5_000),
        sms_http_body=_str("SMS_HTTP_BODY", DEFAULT_SMS_HTTP_BODY),
        smpp_host=_str("SMPP_HOST"),
        smpp_port=_int("SMPP_PORT", 2775),
        smpp_system_id=_str("SMPP_SYSTEM_ID"),
        smpp_password=_secret("SMPP_PASSWORD"),
        smpp_source_addr=_str("SMPP_SOURCE_ADDR", "GiftCard"),
        smpp_timeout_ms=_int("SMPP_TIMEOUT_MS", 5_000),
        smpp_receipt_wait_ms=_int("SMPP_RECEIPT_WAIT_MS", 10_000),
        sms_sweep_after_ms=_int("SMS_SWEEP_AFTER_MS", 30_000),
        inbox_sweep_after_ms=_int("INBOX_SWEEP_AFTER_MS", 30_000),
        scheduler_interval_ms=_int("SCHEDULER_INTERVAL_MS", 1_000),
        heartbeat_interval_s=_int("HEARTBEAT_INTERVAL_MS", 5_000) / 1000.0,
        log_level=_str("LOG_LEVEL", "INFO"),
        log_json=_str("LOG_FORMAT", "json") == "json",
    )


def _budget(raw: str | None) -> str | None:
    """``CVC_CLIENT_BUDGET``: a rate such as ``20/10 minutes``; ``off`` (or 0) disables it."""
    if raw is None or raw.strip().lower() in ("off", "0", "none", "false"):
        return None
    return raw.strip()


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
