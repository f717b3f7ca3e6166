"""Structured JSON logs with request and correlation ids, and the Prometheus metrics.

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

#: The HTTP methods a metric label takes as they are; any other is counted as ``OTHER``. Every
#: label holds a value from a closed set (a route template, a status, a name in the code): a
#: value taken from the request would let any client add series without bound.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """``request.method`` as a metric label: itself when standard, else ``OTHER``."""
    return method if method in HTTP_METHODS else "OTHER"


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


def metrics_token_ok(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header lets a scrape in: always without ``METRICS_TOKEN``
    (development, or ``METRICS_PUBLIC=true``), else only ``Bearer <METRICS_TOKEN>`` (compared in
    constant time). The web's ``/metrics`` and the bi process's port share it."""
    import hmac

    if not token:
        return True
    kind, _, given = (authorization or "").partition(" ")
    return kind.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


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
    registry.register(OutageCollector())
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
        from models.store import cache

        now = time.time()
        pipe = cache.client().pipeline(transaction=False)
        pipe.zadd(HEARTBEAT_KEY, {self.member: now})
        pipe.zremrangebyscore(HEARTBEAT_KEY, "-inf", now - FORGET_AFTER_SECONDS)
        pipe.execute()
        cache.retry_missed()  # a cache invalidation that failed in an outage

    def _run(self) -> None:
        from workers.alive import alive_file

        path = alive_file(self.process)
        while not self._stop.is_set():
            try:  # the local liveness file of a container healthcheck, Redis or not
                with open(path, "a"):
                    os.utime(path)
            except OSError:
                pass
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
            from models.store import cache

            cache.client().zrem(HEARTBEAT_KEY, self.member)
        except Exception:  # going away anyway: the entry ages out
            pass


def heartbeats(now: float | None = None) -> dict[str, dict]:
    """Per process: the age of its newest beat (None: never seen), its live instance count, and
    whether it counts as up."""
    from config import get_settings
    from models.store import cache

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


# ---- riding through an outage of PostgreSQL, Redis or Kafka ---------------------------------
#: Redis hash ``process|dependency`` -> outages that ended, so the web's /metrics shows the
#: counts of every process (only the web and bi serve /metrics).
OUTAGES_KEY = "gcp:outages"
#: Bounded exponential backoff between reconnection attempts (seconds).
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0
DEPENDENCY_OUTAGES = Counter("gcp_dependency_outages_total",
                             "Outages of a dependency seen by this process (begun)",
                             ["process", "dependency"], registry=REGISTRY)
DEPENDENCY_DOWN = Gauge("gcp_dependency_down", "1 while this process cannot reach the dependency",
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
            return "kafka" if err is None or err.retriable() or err.code() in (
                KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT) else None
        inner = [a for a in getattr(error, "args", ()) if isinstance(a, BaseException)]
        error = getattr(error, "orig", None) or (inner[0] if inner else (error.__cause__ or error.__context__))
        seen += 1
    return None


class Outages:
    """One process's dependencies: the first failure of an outage is logged once (not every
    attempt), and counted; the next success logs the recovery with its duration.
    :meth:`failed` returns how long to wait before the next attempt (bounded exponential
    backoff with jitter)."""

    def __init__(self, process: str):
        self.process = process
        self.down: dict[str, tuple[float, int]] = {}  # dependency -> (since, failed attempts)
        self.log = logging.getLogger("gcp." + process)

    def failed(self, dependency: str, error: BaseException) -> float:
        import random

        since, attempts = self.down.get(dependency, (time.monotonic(), 0))
        if not attempts:
            self.log.warning("%s unreachable: riding through (retrying with backoff)", dependency,
                             extra={"dependency": dependency, "error": f"{type(error).__name__}: {error}"[:300]})
            DEPENDENCY_OUTAGES.labels(self.process, dependency).inc()
            DEPENDENCY_DOWN.labels(self.process, dependency).set(1)
        self.down[dependency] = (since, attempts + 1)
        return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempts) * random.uniform(0.5, 1.0)

    def ok(self, *dependencies: str) -> None:
        """The dependencies answered again (all of them when none are named)."""
        if not self.down:
            return
        for dependency in dependencies or tuple(self.down):
            if dependency not in self.down:
                continue
            since, attempts = self.down.pop(dependency)
            seconds = round(time.monotonic() - since, 2)
            self.log.warning("%s reachable again after %.2f s", dependency, seconds,
                             extra={"dependency": dependency, "outageSeconds": seconds, "attempts": attempts})
            DEPENDENCY_DOWN.labels(self.process, dependency).set(0)
            try:
                from models.store import cache

                cache.client().hincrby(OUTAGES_KEY, f"{self.process}|{dependency}", 1)
            except Exception:  # Redis itself still away: this process's own counter has it
                pass

    def is_down(self, dependency: str) -> bool:
        return dependency in self.down


class OutageCollector:
    """``gcp_process_outages_total{process,dependency}``: the outages every process rode
    through, read from Redis at scrape time."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("gcp_process_outages", "Dependency outages each long-running "
                                     "process rode through (ended)", labels=["process", "dependency"])
        try:
            from models.store import cache

            for field, count in cache.client().hgetall(OUTAGES_KEY).items():
                process, _, dependency = field.decode().partition("|")
                family.add_metric([process, dependency], float(count))
        except Exception:  # Redis down: readiness says so; the scrape still works
            pass
        yield family
