"""Configuration: the settings read from the environment (:mod:`config.settings`, the one place
that reads it) and what a deployment may not set (:mod:`config.checks`).

Every name is importable from ``config`` itself (``from config import get_settings``).
"""
from config.checks import check_settings, require_safe_settings
from config.settings import (
    CVC_LENGTH_RANGE,
    DEFAULT_SMS_HTTP_BODY,
    DEFAULT_SMS_TEMPLATE,
    DEV_IDEMPOTENCY_KEY,
    DEV_JWT_SECRET,
    LOCAL_DIR,
    MIN_SECRET_BYTES,
    NOTIFY_PATHS,
    ROOT,
    SMS_GATEWAYS,
    UNREADABLE,
    URL_VARS,
    ConfigError,
    Settings,
    get_settings,
    load_settings,
    load_stack_env,
    redact_url,
    reset_settings,
)

__all__ = [
    "CVC_LENGTH_RANGE", "DEFAULT_SMS_HTTP_BODY", "DEFAULT_SMS_TEMPLATE", "DEV_IDEMPOTENCY_KEY",
    "DEV_JWT_SECRET", "LOCAL_DIR", "MIN_SECRET_BYTES", "NOTIFY_PATHS", "ROOT", "SMS_GATEWAYS",
    "UNREADABLE", "URL_VARS", "ConfigError", "Settings", "check_settings", "get_settings",
    "load_settings", "load_stack_env", "redact_url", "require_safe_settings", "reset_settings",
]
