"""Configuration from the environment: the one place that reads settings.

Every setting is documented in README.md (table "Configuration") with its default.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlparse

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


#: What :func:`_secret` returns for a ``NAME_FILE`` it cannot read (check_settings names it).
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


def _bool(name: str, default: bool = False) -> bool:
    raw = (os.environ.get(name) or "").strip().lower()
    return default if not raw else raw in ("1", "true", "yes", "on")


#: The development-only HS256 secret (in the repository: never accepted outside development).
DEV_JWT_SECRET = "dev-only-secret-change-me-in-production-0123"
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
    topic_partitions: int = 6
    consumer_group: str = "gcp-pump"
    kafka_fetch_wait_ms: int = 20
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
        topic_partitions=_int("TOPIC_PARTITIONS", 6),
        consumer_group=_str("KAFKA_CONSUMER_GROUP", "gcp-pump"),
        kafka_fetch_wait_ms=_int("KAFKA_FETCH_WAIT_MS", 20),
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


def check_settings(s: Settings) -> list[str]:
    """Every setting that makes this configuration unsafe or unusable, one line each.

    Outside development (see :attr:`Settings.development`) the built-in secrets are refused.
    """
    problems = []
    low, high = CVC_LENGTH_RANGE
    if not low <= s.cvc_length <= high:
        problems.append(f"CVC_LENGTH must be between {low} and {high} digits, not {s.cvc_length}")
    if s.cvc_client_budget is not None:
        from limits import parse

        try:
            parse(s.cvc_client_budget)
        except ValueError:
            problems.append(f"CVC_CLIENT_BUDGET must be a rate like '20/10 minutes' or 'off', "
                            f"not {s.cvc_client_budget!r}")
    problems += _delivery_problems(s)
    problems += _auth_problems(s)
    if s.development:
        return problems
    if not s.metrics_token and not s.metrics_public:
        problems.append("METRICS_TOKEN is not set: /metrics and the bi process's metrics port would show "
                        "the pool's levels and the traffic to anyone; set a token (Prometheus sends it as a "
                        "bearer token), or METRICS_PUBLIC=true where the network already keeps them private")
    if s.sms_gateway == "log":
        problems.append("SMS_GATEWAY=log writes CVCs to a local file: development only; "
                        "choose http or smpp")
    if s.accepts_hs256:
        if s.jwt_secret == DEV_JWT_SECRET:
            problems.append("JWT_SECRET is the built-in development secret: set a secret of your own "
                            f"({MIN_SECRET_BYTES}+ bytes), or accept only asymmetric JWT_ALGORITHMS")
        elif _unreadable(s.jwt_secret) is None and len(s.jwt_secret.encode()) < MIN_SECRET_BYTES:
            problems.append(f"JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes while HS256 is accepted")
        if not s.jwt_audience:
            problems.append(f"JWT_AUDIENCE is not set while {_hmac_names(s)} is accepted: a token signed "
                            "with the same JWT_SECRET for another service would be accepted")
    if not s.cvc_encryption_key:
        problems.append("CVC_ENCRYPTION_KEY is not set: CVCs cannot be hashed and encrypted safely")
    elif _unreadable(s.cvc_encryption_key) is None and len(s.cvc_encryption_key.encode()) < MIN_SECRET_BYTES:
        problems.append(f"CVC_ENCRYPTION_KEY is shorter than {MIN_SECRET_BYTES} bytes")
    for number, key in enumerate(s.cvc_old_keys, 1):
        if _unreadable(key) is None and len(key.encode()) < MIN_SECRET_BYTES:
            problems.append(f"CVC_OLD_KEYS: key {number} is shorter than {MIN_SECRET_BYTES} bytes")
    if s.jwks_url and not (s.jwt_issuer and s.jwt_audience):
        problems.append("JWKS_URL is set without JWT_ISSUER and JWT_AUDIENCE: tokens of any issuer "
                        "or audience would be accepted")
    if s.jwks_url and urlparse(s.jwks_url).scheme.lower() == "http":
        problems.append("JWKS_URL is http://: anyone on the path could replace the keys and sign "
                        "tokens of their own; use https:// outside development")
    return problems


def _unreadable(value: str | None) -> str | None:
    """Why a ``NAME_FILE`` secret could not be read (see :func:`_secret`), or None."""
    return value[len(UNREADABLE):] if value and value.startswith(UNREADABLE) else None


def _auth_problems(s: Settings) -> list[str]:
    """What can never work in any environment: secrets whose file is unreadable (named by
    ``NAME_FILE``, never with a value), the JWKS settings, HMAC algorithms with a JWKS."""
    problems = []
    secrets = [("JWT_SECRET", s.jwt_secret), ("CVC_ENCRYPTION_KEY", s.cvc_encryption_key),
               ("METRICS_TOKEN", s.metrics_token)] + [("CVC_OLD_KEYS", k) for k in s.cvc_old_keys]
    for name, value in secrets:
        why = _unreadable(value)
        if why is not None:
            problems.append(f"{name}_FILE cannot be read ({why})")
    if s.jwks_cache_seconds <= 0:
        problems.append(f"JWKS_CACHE_SECONDS must be a positive number of seconds, not {s.jwks_cache_seconds}")
    if s.jwks_url and urlparse(s.jwks_url).scheme.lower() not in ("http", "https"):
        problems.append("JWKS_URL must be an https:// URL")
    if s.jwks_url and s.accepts_hs256:
        problems.append(f"JWT_ALGORITHMS names {_hmac_names(s)} together with JWKS_URL: a JWKS's public "
                        "keys cannot verify HMAC tokens; list only asymmetric algorithms (e.g. RS256)")
    if not s.jwks_url and not s.accepts_hs256:
        problems.append("JWT_ALGORITHMS names only asymmetric algorithms but JWKS_URL is not set: no "
                        "token could ever be verified; set JWKS_URL, or accept HS256 with JWT_SECRET")
    if not s.admin_identity_claim:
        problems.append("ADMIN_IDENTITY_CLAIM must name a token claim (sub by default)")
    return problems


def _hmac_names(s: Settings) -> str:
    return ", ".join(a for a in s.jwt_algorithms if a.upper().startswith("HS"))


def _delivery_problems(s: Settings) -> list[str]:
    """NOTIFY_VIA and the SMS gateway's settings (never naming a secret's value)."""
    problems = []
    if s.notify_via not in NOTIFY_PATHS:
        problems.append(f"NOTIFY_VIA must be one of {', '.join(NOTIFY_PATHS)}, not {s.notify_via!r}")
    if s.sms_gateway is not None and s.sms_gateway not in SMS_GATEWAYS:
        problems.append(f"SMS_GATEWAY must be one of {', '.join(SMS_GATEWAYS)}, not {s.sms_gateway!r}")
    if s.notify_via == "sms" and s.sms_gateway is None:
        problems.append("NOTIFY_VIA=sms needs an SMS_GATEWAY (http or smpp)")
    if s.sms_gateway == "http" and not s.sms_gateway_url:
        problems.append("SMS_GATEWAY=http needs SMS_GATEWAY_URL")
    if s.sms_gateway == "smpp" and not (s.smpp_host and s.smpp_system_id):
        problems.append("SMS_GATEWAY=smpp needs SMPP_HOST and SMPP_SYSTEM_ID")
    if s.sms_gateway == "smpp" and s.smpp_password and len(s.smpp_password) > 8:
        problems.append("SMPP_PASSWORD is longer than 8 characters, the SMPP 3.4 limit: the SMSC "
                        "would see it cut short")
    for name, value in (("SMS_HTTP_AUTH", s.sms_http_auth), ("SMPP_PASSWORD", s.smpp_password)):
        if value and value.startswith("\0unreadable:"):
            problems.append(f"{name}_FILE cannot be read ({value.split(':', 1)[1]})")
    if s.sms_gateway == "http":
        import json

        try:
            json.loads(s.sms_http_body)
        except ValueError:
            problems.append("SMS_HTTP_BODY must be a JSON template, e.g. " + DEFAULT_SMS_HTTP_BODY)
    try:
        s.sms_template.format(code="", cvc="", nominal="", currency="", expiry="")
    except (KeyError, IndexError, ValueError) as exc:
        problems.append(f"SMS_TEMPLATE has an unknown placeholder: {exc}")
    return problems


def require_safe_settings(s: Settings | None = None) -> Settings:
    """Refuse to start (:class:`ConfigError`, naming the settings) on an unsafe configuration."""
    s = s or get_settings()
    problems = check_settings(s)
    if problems:
        raise ConfigError("refusing to start: " + "; ".join(problems))
    return s


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
