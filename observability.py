"""Structured JSON logs with request and correlation ids, and the Prometheus metrics.

Log records never carry a CVC, a secret or a full phone number: :func:`mask_phone` is the one
way a phone number reaches a log line, and the CVC never leaves ``models.cvc`` except in the
one HTTP response that discloses it.
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: The request or message being handled, added to every log record of this context.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
correlation_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request/correlation ids, extras."""

    RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid, cid = request_id_var.get(), correlation_id_var.get()
        if rid:
            out["requestId"] = rid
        if cid:
            out["correlationId"] = cid
        for key, value in record.__dict__.items():
            if key not in self.RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str | None = None, json_format: bool | None = None) -> None:
    from config import get_settings

    settings = get_settings()
    handler = logging.StreamHandler(sys.stdout)
    use_json = settings.log_json if json_format is None else json_format
    handler.setFormatter(JsonFormatter() if use_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.log_level)
    for noisy in ("werkzeug", "urllib3", "peewee", "pgserver", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def mask_phone(phone: str | None) -> str | None:
    """``+79990001122`` -> ``+7999***1122``: enough to tell numbers apart, not to call one."""
    if not phone:
        return phone
    return phone[:5] + "***" + phone[-4:] if len(phone) > 9 else "***"


# ---- metrics --------------------------------------------------------------------------------
#: One registry for the process; /metrics serves it (multiprocess mode when
#: PROMETHEUS_MULTIPROC_DIR is set, for several gunicorn workers).
REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter("gcp_http_requests_total", "HTTP requests", ["method", "route", "status"],
                        registry=REGISTRY)
HTTP_LATENCY = Histogram("gcp_http_request_seconds", "HTTP request duration", ["method", "route"],
                         registry=REGISTRY,
                         buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
MESSAGES_CONSUMED = Counter("gcp_messages_consumed_total", "Kafka messages consumed by the pump",
                            ["topic", "outcome"], registry=REGISTRY)
EVENTS_PUBLISHED = Counter("gcp_stream_events_published_total", "Events published to the stream",
                           ["event_type"], registry=REGISTRY)
OUTBOX_BACKLOG = Gauge("gcp_outbox_backlog", "Outbox rows not yet published", registry=REGISTRY)
POOL_AVAILABLE = Gauge("gcp_pool_available", "Certificates available in the pool", registry=REGISTRY)
PROCESSING_LATENCY = Histogram("gcp_input_to_stream_seconds", "Input message to stream event latency",
                               registry=REGISTRY,
                               buckets=(.005, .01, .02, .05, .1, .2, .5, 1, 2, 5))


def metrics_payload() -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
