"""What a deployment may not set: each check names the setting, never a secret's value.

Some settings can never work (an unreadable ``NAME_FILE``, an HMAC algorithm with a JWKS): they
are refused everywhere. Outside development the built-in secrets are refused as well.
"""
from __future__ import annotations

import json
from urllib.parse import urlparse

from config.kafka import kafka_problems
from config.settings import (
    CVC_LENGTH_RANGE,
    DEFAULT_SMS_HTTP_BODY,
    DEV_IDEMPOTENCY_KEY,
    DEV_JWT_SECRET,
    KAFKA_PROFILES,
    MIN_SECRET_BYTES,
    NOTIFY_PATHS,
    SMS_GATEWAYS,
    UNREADABLE,
    ConfigError,
    Settings,
    get_settings,
)


def check_settings(settings: Settings) -> list[str]:
    """Every setting that makes this configuration unsafe or unusable, one line each.

    Outside development (see :attr:`Settings.development`) the built-in secrets are refused.
    """
    problems = []
    low, high = CVC_LENGTH_RANGE
    if not low <= settings.cvc_length <= high:
        problems.append(f"CVC_LENGTH must be between {low} and {high} digits, not {settings.cvc_length}")
    if settings.cvc_client_budget is not None:
        from limits import parse

        try:
            parse(settings.cvc_client_budget)
        except ValueError:
            problems.append(f"CVC_CLIENT_BUDGET must be a rate like '20/10 minutes' or 'off', "
                            f"not {settings.cvc_client_budget!r}")
    if settings.kafka_profile not in KAFKA_PROFILES:
        problems.append(f"KAFKA_PROFILE must be one of {', '.join(KAFKA_PROFILES)}, not {settings.kafka_profile!r}")
    problems += _delivery_problems(settings)
    problems += _auth_problems(settings)
    problems += kafka_problems(settings)  # what can never work, and plaintext outside development
    if settings.development:
        return problems
    return problems + _production_problems(settings)


def _production_problems(settings: Settings) -> list[str]:
    """What only development may do: run on the built-in secrets, show the metrics to anyone,
    write CVCs to a local file, accept tokens of any issuer or audience."""
    problems = []
    if not settings.metrics_token and not settings.metrics_public:
        problems.append("METRICS_TOKEN is not set: /metrics and the bi process's metrics port would show "
                        "the pool's levels and the traffic to anyone; set a token (Prometheus sends it as a "
                        "bearer token), or METRICS_PUBLIC=true where the network already keeps them private")
    if settings.sms_gateway == "log":
        problems.append("SMS_GATEWAY=log writes CVCs to a local file: development only; "
                        "choose http or smpp")
    if settings.accepts_hs256:
        if settings.jwt_secret == DEV_JWT_SECRET:
            problems.append("JWT_SECRET is the built-in development secret: set a secret of your own "
                            f"({MIN_SECRET_BYTES}+ bytes), or accept only asymmetric JWT_ALGORITHMS")
        elif _too_short(settings.jwt_secret):
            problems.append(f"JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes while HS256 is accepted")
        if not settings.jwt_audience:
            problems.append(f"JWT_AUDIENCE is not set while {_hmac_names(settings)} is accepted: a token "
                            "signed with the same JWT_SECRET for another service would be accepted")
    if not settings.cvc_encryption_key:
        problems.append("CVC_ENCRYPTION_KEY is not set: CVCs cannot be hashed and encrypted safely")
    elif _too_short(settings.cvc_encryption_key):
        problems.append(f"CVC_ENCRYPTION_KEY is shorter than {MIN_SECRET_BYTES} bytes")
    for number, key in enumerate(settings.cvc_old_keys, 1):
        if _too_short(key):
            problems.append(f"CVC_OLD_KEYS: key {number} is shorter than {MIN_SECRET_BYTES} bytes")
    if settings.idempotency_key == DEV_IDEMPOTENCY_KEY:
        problems.append("IDEMPOTENCY_KEY is the built-in development key: set a random key of your own "
                        f"({MIN_SECRET_BYTES}+ bytes); it keys the hashes that tell an Idempotency-Key's "
                        "retry from another request")
    elif _too_short(settings.idempotency_key):
        problems.append(f"IDEMPOTENCY_KEY is shorter than {MIN_SECRET_BYTES} bytes")
    if settings.jwks_url and not (settings.jwt_issuer and settings.jwt_audience):
        problems.append("JWKS_URL is set without JWT_ISSUER and JWT_AUDIENCE: tokens of any issuer "
                        "or audience would be accepted")
    if settings.jwks_url and urlparse(settings.jwks_url).scheme.lower() == "http":
        problems.append("JWKS_URL is http://: anyone on the path could replace the keys and sign "
                        "tokens of their own; use https:// outside development")
    return problems


def _too_short(secret: str) -> bool:
    """A readable secret of fewer than :data:`MIN_SECRET_BYTES` bytes (an unreadable one is
    named by :func:`_auth_problems`)."""
    return _unreadable(secret) is None and len(secret.encode()) < MIN_SECRET_BYTES


def _unreadable(value: str | None) -> str | None:
    """Why a ``NAME_FILE`` secret could not be read (see ``config.settings``), or None."""
    return value[len(UNREADABLE):] if value and value.startswith(UNREADABLE) else None


def _auth_problems(settings: Settings) -> list[str]:
    """What can never work in any environment: secrets whose file is unreadable (named by
    ``NAME_FILE``, never with a value), the JWKS settings, HMAC algorithms with a JWKS."""
    problems = []
    secrets = [("JWT_SECRET", settings.jwt_secret), ("CVC_ENCRYPTION_KEY", settings.cvc_encryption_key),
               ("IDEMPOTENCY_KEY", settings.idempotency_key), ("METRICS_TOKEN", settings.metrics_token)]
    secrets += [("CVC_OLD_KEYS", key) for key in settings.cvc_old_keys]
    for name, value in secrets:
        why = _unreadable(value)
        if why is not None:
            problems.append(f"{name}_FILE cannot be read ({why})")
    if settings.jwks_cache_seconds <= 0:
        problems.append("JWKS_CACHE_SECONDS must be a positive number of seconds, "
                        f"not {settings.jwks_cache_seconds}")
    if settings.jwks_url and urlparse(settings.jwks_url).scheme.lower() not in ("http", "https"):
        problems.append("JWKS_URL must be an https:// URL")
    if settings.jwks_url and settings.accepts_hs256:
        problems.append(f"JWT_ALGORITHMS names {_hmac_names(settings)} together with JWKS_URL: a JWKS's "
                        "public keys cannot verify HMAC tokens; list only asymmetric algorithms (e.g. RS256)")
    if not settings.jwks_url and not settings.accepts_hs256:
        problems.append("JWT_ALGORITHMS names only asymmetric algorithms but JWKS_URL is not set: no "
                        "token could ever be verified; set JWKS_URL, or accept HS256 with JWT_SECRET")
    if not settings.admin_identity_claim:
        problems.append("ADMIN_IDENTITY_CLAIM must name a token claim (sub by default)")
    return problems


def _hmac_names(settings: Settings) -> str:
    return ", ".join(a for a in settings.jwt_algorithms if a.upper().startswith("HS"))


def _delivery_problems(settings: Settings) -> list[str]:
    """NOTIFY_VIA and the SMS gateway's settings (never naming a secret's value)."""
    problems = []
    if settings.notify_via not in NOTIFY_PATHS:
        problems.append(f"NOTIFY_VIA must be one of {', '.join(NOTIFY_PATHS)}, not {settings.notify_via!r}")
    if settings.sms_gateway is not None and settings.sms_gateway not in SMS_GATEWAYS:
        problems.append(f"SMS_GATEWAY must be one of {', '.join(SMS_GATEWAYS)}, not {settings.sms_gateway!r}")
    if settings.notify_via == "sms" and settings.sms_gateway is None:
        problems.append("NOTIFY_VIA=sms needs an SMS_GATEWAY (http or smpp)")
    if settings.sms_gateway == "http" and not settings.sms_gateway_url:
        problems.append("SMS_GATEWAY=http needs SMS_GATEWAY_URL")
    if settings.sms_gateway == "smpp" and not (settings.smpp_host and settings.smpp_system_id):
        problems.append("SMS_GATEWAY=smpp needs SMPP_HOST and SMPP_SYSTEM_ID")
    if settings.sms_gateway == "smpp" and settings.smpp_password and len(settings.smpp_password) > 8:
        problems.append("SMPP_PASSWORD is longer than 8 characters, the SMPP 3.4 limit: the SMSC "
                        "would see it cut short")
    for name, value in (("SMS_HTTP_AUTH", settings.sms_http_auth), ("SMPP_PASSWORD", settings.smpp_password)):
        why = _unreadable(value)
        if why is not None:
            problems.append(f"{name}_FILE cannot be read ({why})")
    if settings.sms_gateway == "http":
        try:
            json.loads(settings.sms_http_body)
        except ValueError:
            problems.append("SMS_HTTP_BODY must be a JSON template, e.g. " + DEFAULT_SMS_HTTP_BODY)
    try:
        settings.sms_template.format(code="", cvc="", nominal="", currency="", expiry="")
    except (KeyError, IndexError, ValueError) as exc:
        problems.append(f"SMS_TEMPLATE has an unknown placeholder: {exc}")
    return problems


def require_safe_settings(settings: Settings | None = None) -> Settings:
    """Refuse to start (:class:`ConfigError`, naming the settings) on an unsafe configuration."""
    settings = settings or get_settings()
    problems = check_settings(settings)
    if problems:
        raise ConfigError("refusing to start: " + "; ".join(problems))
    return settings
