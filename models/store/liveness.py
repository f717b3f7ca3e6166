"""What the long-running processes tell each other through Redis: that they are alive (the
heartbeats ``/health/ready`` reads) and the dependency outages each one rode through (the counts
the web's ``/metrics`` shows for every process).

Every process uses it, the worker's actors and the web included, so it sits here beside the
cache's Redis client rather than under ``workers/``. What counts as an outage is
:func:`observability.dependency_of`.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import tempfile
import threading
import time

from config import get_settings
from models.store import cache
from observability import DEPENDENCY_DOWN, DEPENDENCY_OUTAGES, render_metrics

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
    return f"{socket.gethostname()}:{os.getpid()}"


def alive_file(process: str) -> str:
    """The local file each beat touches, Redis or not: a container healthcheck reads it
    (``python -m workers.alive``, which keeps its own copy of this line so that a check imports
    nothing of the service; a test checks the two agree)."""
    return os.path.join(tempfile.gettempdir(), f"gcp-{process}.alive")


class Heartbeat:
    """A daemon thread that records ``process`` as alive in Redis every interval.

    A failed beat (Redis down) is logged once and retried at the next interval; it never
    stops the process it reports on.
    """

    def __init__(self, process: str, interval: float | None = None):
        self.process = process
        self.interval = interval or get_settings().heartbeat_interval_s
        self.member = f"{process}|{instance_name()}"
        self._stop = None
        self._failing = False

    def beat(self) -> None:
        now = time.time()
        pipe = cache.client().pipeline(transaction=False)
        pipe.zadd(HEARTBEAT_KEY, {self.member: now})
        pipe.zremrangebyscore(HEARTBEAT_KEY, "-inf", now - FORGET_AFTER_SECONDS)
        pipe.execute()
        cache.retry_missed()  # a cache invalidation that failed in an outage

    def _run(self) -> None:
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
        self._stop = threading.Event()
        threading.Thread(target=self._run, name=f"heartbeat-{self.process}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        try:
            cache.client().zrem(HEARTBEAT_KEY, self.member)
        except Exception:  # going away anyway: the entry ages out
            pass


def heartbeats(now: float | None = None) -> dict[str, dict]:
    """Per process: the age of its newest beat (None: never seen), its live instance count, and
    whether it counts as up."""
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


# ---- riding through an outage of PostgreSQL, Redis or Kafka ---------------------------------
#: Redis hash ``process|dependency`` -> outages that ended, so the web's /metrics shows the
#: counts of every process (only the web and bi serve /metrics).
OUTAGES_KEY = "gcp:outages"
#: Bounded exponential backoff between reconnection attempts (seconds).
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0


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
            for field, count in cache.client().hgetall(OUTAGES_KEY).items():
                process, _, dependency = field.decode().partition("|")
                family.add_metric([process, dependency], float(count))
        except Exception:  # Redis down: readiness says so; the scrape still works
            pass
        yield family


def metrics_payload() -> tuple[bytes, str]:
    """The web's ``/metrics``: its own metrics, and every process's heartbeat age and outages
    read from Redis (see :func:`observability.render_metrics`)."""
    return render_metrics(HeartbeatCollector(), OutageCollector())
