"""Structured JSON logs with request and correlation ids, the Prometheus metrics, and which
dependency an error says is away.

A leaf: it imports nothing of the service but ``config``, so every layer may use it. What a
process does with Redis to report itself (its heartbeat, the outages it rode through) is
:mod:`models.store.liveness`.

Log records never carry a CVC, a secret or a full phone number: :func:`mask_phone` is the one
way a phone number reaches a log line, and the CVC never leaves ``models.store.cvc`` except in the
one HTTP response that discloses it.
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Histogram

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

#: The HTTP methods a metric label takes as they are; any other is counted as ``OTHER``. Every
#: label holds a value from a closed set (a route template, a status, a name in the code): a
#: value taken from the request would let any client add series without bound.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """``request.method`` as a metric label: itself when standard, else ``OTHER``."""
    return method if method in HTTP_METHODS else "OTHER"


HTTP_REQUESTS = Counter("gcp_http_requests_total", "HTTP requests", ["method", "route", "status"],
                        registry=REGISTRY)
#: The synchronous calls' objective (the seed documents): 300 ms. Buckets close around it, so
#: the share of calls within it is read exactly (``le="0.3"``).
SYNC_OBJECTIVE_SECONDS = 0.3
HTTP_LATENCY = Histogram("gcp_http_request_seconds", "HTTP request duration", ["method", "route"],
                         registry=REGISTRY,
                         buckets=(.005, .01, .025, .05, .1, .15, .2, .25, .3, .4, .5, .75, 1, 2.5, 5))
MESSAGES_CONSUMED = Counter("gcp_messages_consumed_total", "Kafka messages consumed by the pump",
                            ["topic", "outcome"], registry=REGISTRY)
EVENTS_PUBLISHED = Counter("gcp_stream_events_published_total", "Events published to the stream",
                           ["event_type", "channel"], registry=REGISTRY)
#: Messages sent to ``GiftCertificates.DLQ`` (invalid on arrival, or failed every retry).
DLQ_MESSAGES = Counter("gcp_dlq_messages_total", "Messages sent to the DLQ", ["reason"], registry=REGISTRY)
#: The codes opening a DLQ ``error`` header (``workers.pump.dlq_reason``), each series present
#: from 0 so that ``increase()`` sees the first message sent.
DLQ_REASONS = ("INVALID_JSON", "SCHEMA_VIOLATION", "TOO_LARGE", "UNKNOWN_TOPIC", "PROCESSING_FAILED", "OTHER")
for _reason in DLQ_REASONS:
    DLQ_MESSAGES.labels(_reason)
#: The contract's objective: an input message's stream event within 200 ms of the input.
STREAM_OBJECTIVE_SECONDS = 0.2
#: From the input message's Kafka broker timestamp to the relay's publication of an event it
#: caused (measured by the relay; buckets close around the objective).
PROCESSING_LATENCY = Histogram("gcp_input_to_stream_seconds", "Input message (broker timestamp) to "
                               "its stream event published", registry=REGISTRY,
                               buckets=(.01, .025, .05, .1, .15, .2, .25, .3, .5, 1, 2.5, 5, 10, 30))
# The gauges of shared state (pool, backlogs, heartbeats...) are not here: a gauge set per
# process lies (models.store.gauges counts them at scrape time, the same for every process).


def metrics_token_ok(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header lets a scrape in: always without ``METRICS_TOKEN``
    (development, or ``METRICS_PUBLIC=true``), else only ``Bearer <METRICS_TOKEN>`` (compared in
    constant time). The web's ``/metrics`` and the bi process's port share it."""
    import hmac

    if not token:
        return True
    kind, _, given = (authorization or "").partition(" ")
    return kind.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def render_metrics(*collectors) -> tuple[bytes, str]:
    """The text of a scrape: this process's registry (every gunicorn worker's, in multiprocess
    mode) and ``collectors``, read at scrape time. Returns (body, content type)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_ProcessMetrics())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ProcessMetrics:
    """This process's own registry, served beside the collectors added at scrape time."""

    def collect(self):
        return REGISTRY.collect()


def boot(process: str | None = None) -> None:
    """Start-up of a long-running process: JSON logs, and the configuration checked (an unsafe
    or unusable one exits at once, saying why in one line). Its heartbeat is
    :class:`models.store.liveness.Heartbeat`."""
    from config import ConfigError, require_safe_settings

    setup_logging()
    try:
        require_safe_settings()
    except ConfigError as exc:
        logging.getLogger("gcp").critical(str(exc))
        print(f"gcp {process or ''}: {exc}".replace("  ", " "), file=sys.stderr, flush=True)
        raise SystemExit(2) from None


# ---- riding through an outage of PostgreSQL, Redis or Kafka ---------------------------------
# (what a process does about one: models.store.liveness.Outages)
DEPENDENCY_OUTAGES = Counter("gcp_dependency_outages_total",
                             "Outages of a dependency seen by this process (begun)",
                             ["process", "dependency"], registry=REGISTRY)


def dependency_of(error: BaseException | None) -> str | None:
    """``"postgres"``, ``"redis"`` or ``"kafka"`` when ``error`` (or its cause, as Peewee wraps
    them) is a lost or refused connection to that server, which a retry can mend; None for
    anything else (a bug, a refused statement, a lock timeout)."""
    import psycopg2
    import psycopg2.errors as pg
    import redis
    from confluent_kafka import KafkaError, KafkaException

    seen = 0
    while error is not None and seen < 6:
        # libpq's own errors (refused, lost: plain OperationalError), a closed connection, and
        # the server's "going away / not yet" answers (class 08, 57P01..03)
        if (type(error) is psycopg2.OperationalError or isinstance(error, (
                psycopg2.InterfaceError, pg.ConnectionException, pg.AdminShutdown, pg.CrashShutdown,
                pg.CannotConnectNow))):
            return "postgres"
        if isinstance(error, psycopg2.Error):
            return None  # an answer of a live server: a lock not granted, a statement cancelled
        if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
            return "redis"
        if isinstance(error, KafkaException):
            err = error.args[0] if error.args and isinstance(error.args[0], KafkaError) else None
            # (a partition without its leader yet, after a broker's restart or a topic's
            # creation, is settling too, though librdkafka does not flag it retriable)
            return "kafka" if err is None or err.retriable() or err.code() in (
                KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE) else None
        inner = [a for a in getattr(error, "args", ()) if isinstance(a, BaseException)]
        error = getattr(error, "orig", None) or (inner[0] if inner else (error.__cause__ or error.__context__))
        seen += 1
    return None
