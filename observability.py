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
    else:
        registry = CollectorRegistry()
        registry.register(_ProcessMetrics())
    registry.register(HeartbeatCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ProcessMetrics:
    """This process's own registry, served beside the collectors added at scrape time."""

    def collect(self):
        return REGISTRY.collect()


# ---- heartbeats of the long-running processes ---------------------------------------------
#: Redis sorted set: member ``process|instance``, score = the time of its last beat.
HEARTBEAT_KEY = "gcp:heartbeats"
#: The long-running processes `/health/ready` reports on (the Procfile's names).
PROCESSES = ("worker", "pump", "relay", "scheduler", "bi")
#: A process whose newest beat is older than this many intervals counts as missing.
STALE_AFTER_INTERVALS = 3
#: Beats older than this are dropped from the set (instances long gone).
FORGET_AFTER_SECONDS = 3600


def instance_name() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """A daemon thread that records ``process`` as alive in Redis every interval.

    A failed beat (Redis down) is logged once and retried at the next interval; it never
    stops the process it reports on.
    """

    def __init__(self, process: str, interval: float | None = None):
        from config import get_settings

        self.process = process
        self.interval = interval or get_settings().heartbeat_interval_s
        self.member = f"{process}|{instance_name()}"
        self._stop = None
        self._failing = False

    def beat(self) -> None:
        from models import cache

        now = time.time()
        pipe = cache.client().pipeline(transaction=False)
        pipe.zadd(HEARTBEAT_KEY, {self.member: now})
        pipe.zremrangebyscore(HEARTBEAT_KEY, "-inf", now - FORGET_AFTER_SECONDS)
        pipe.execute()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
                if self._failing:
                    logging.getLogger("gcp.heartbeat").info("heartbeat recorded again")
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    logging.getLogger("gcp.heartbeat").warning("heartbeat failed: %s", exc)
                self._failing = True
            self._stop.wait(self.interval)

    def start(self) -> "Heartbeat":
        import threading

        self._stop = threading.Event()
        threading.Thread(target=self._run, name=f"heartbeat-{self.process}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        try:
            from models import cache

            cache.client().zrem(HEARTBEAT_KEY, self.member)
        except Exception:  # going away anyway: the entry ages out
            pass


def heartbeats(now: float | None = None) -> dict[str, dict]:
    """Per process: the age of its newest beat (None: never seen), its live instance count, and
    whether it counts as up."""
    from config import get_settings
    from models import cache

    now = now or time.time()
    stale = STALE_AFTER_INTERVALS * get_settings().heartbeat_interval_s
    newest: dict[str, float] = {}
    live: dict[str, int] = {}
    for member, score in cache.client().zrange(HEARTBEAT_KEY, 0, -1, withscores=True):
        process = member.decode().split("|", 1)[0]
        newest[process] = max(newest.get(process, 0.0), score)
        if now - score <= stale:
            live[process] = live.get(process, 0) + 1
    out = {}
    for process in sorted(set(PROCESSES) | set(newest)):
        age = round(now - newest[process], 1) if process in newest else None
        out[process] = {"status": "ok" if live.get(process) else "missing",
                        "heartbeatAgeSeconds": age, "instances": live.get(process, 0)}
    return out


class HeartbeatCollector:
    """``gcp_process_heartbeat_age_seconds{process}``, read from Redis at scrape time (so every
    web worker reports the same figure; -1 for a process never seen, none when Redis is down)."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("gcp_process_heartbeat_age_seconds",
                                   "Seconds since each long-running process last reported alive",
                                   labels=["process"])
        try:
            for process, info in heartbeats().items():
                age = info["heartbeatAgeSeconds"]
                family.add_metric([process], -1.0 if age is None else float(age))
        except Exception:  # Redis down: readiness says so; the scrape still works
            pass
        yield family


def boot(process: str | None = None) -> Heartbeat | None:
    """Start-up of a long-running process: JSON logs, the configuration checked (an unsafe
    or unusable one exits at once, saying why in one line), and its heartbeat."""
    from config import ConfigError, require_safe_settings

    setup_logging()
    try:
        require_safe_settings()
    except ConfigError as exc:
        logging.getLogger("gcp").critical(str(exc))
        print(f"gcp {process or ''}: {exc}".replace("  ", " "), file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return Heartbeat(process).start() if process else None
