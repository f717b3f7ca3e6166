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
from observability import DEPENDENCY_OUTAGES, render_metrics

# ---- heartbeats of the long-running processes ---------------------------------------------
#: Redis sorted set: member ``process|instance``, score = the time of its last beat.
HEARTBEAT_KEY = "gcp:heartbeats"
#: The member a graceful stop leaves in :data:`HEARTBEAT_KEY` (``process|stopped``, scored with
#: its last beat): no instance, but the age on /metrics keeps growing while the process is
#: away, however it went.
STOPPED = "stopped"
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
            pipe = cache.client().pipeline(transaction=False)
            pipe.zrem(HEARTBEAT_KEY, self.member)
            pipe.zadd(HEARTBEAT_KEY, {f"{self.process}|{STOPPED}": time.time()})
            pipe.execute()
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
        process, _, instance = member.decode().partition("|")
        if instance == STOPPED:
            continue
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
    """Read from Redis at scrape time, so every process scraped says the same (no ``pid``):
    ``gcp_process_heartbeat_age_seconds{process}`` (since any instance last beat; -1 for a
    process never seen), ``gcp_process_instances{process}`` (instances beating now),
    ``gcp_redis_up`` (0: Redis did not answer, and the two others are left out)."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        age = GaugeMetricFamily("gcp_process_heartbeat_age_seconds",
                                "Seconds since each long-running process last reported alive",
                                labels=["process"])
        instances = GaugeMetricFamily("gcp_process_instances",
                                      "Live instances of each long-running process", labels=["process"])
        try:
            now = time.time()
            beats = heartbeats(now)
            last = {m.decode().partition("|")[0]: score for m, score in
                    cache.client().zrange(HEARTBEAT_KEY, 0, -1, withscores=True)}
        except Exception:  # Redis down: gcp_redis_up says so; the scrape still works
            yield GaugeMetricFamily("gcp_redis_up", "1 when Redis answered this scrape", value=0.0)
            return
        for process in sorted(set(beats) | set(last)):
            info = beats.get(process, {"heartbeatAgeSeconds": None, "instances": 0})
            seen = [a for a in (info["heartbeatAgeSeconds"],
                                now - last[process] if process in last else None) if a is not None]
            age.add_metric([process], round(max(0.0, min(seen)), 1) if seen else -1.0)
            instances.add_metric([process], float(info["instances"]))
        yield GaugeMetricFamily("gcp_redis_up", "1 when Redis answered this scrape", value=1.0)
        yield age
        yield instances


# ---- riding through an outage of PostgreSQL, Redis or Kafka ---------------------------------
#: Redis hash ``process|dependency`` -> outages that ended, so the web's /metrics shows the
#: counts of every process (only the web and bi serve /metrics).
OUTAGES_KEY = "gcp:outages"
#: Redis hash ``process|dependency`` -> when the process last found it unreachable (refreshed
#: while the outage lasts, removed when it ends): ``gcp_dependency_down`` on /metrics.
DOWN_KEY = "gcp:down"
#: A ``DOWN_KEY`` entry not refreshed for this long is ignored (its process went away).
DOWN_FRESH_SECONDS = 30.0
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
        self._said_down: dict[str, float] = {}  # dependency -> when DOWN_KEY was last refreshed

    def _tell(self, dependency: str, down: bool) -> None:
        """Record in Redis that ``dependency`` is unreachable from this process (or no longer);
        never for Redis itself, which could not hold it, and never failing the caller."""
        if dependency == "redis":
            return
        field = f"{self.process}|{dependency}"
        try:
            if down:
                cache.client().hset(DOWN_KEY, field, time.time())
            else:
                cache.client().hdel(DOWN_KEY, field)
        except Exception:  # Redis away too: gcp_redis_up says so
            pass

    def failed(self, dependency: str, error: BaseException) -> float:
        since, attempts = self.down.get(dependency, (time.monotonic(), 0))
        if not attempts:
            self.log.warning("%s unreachable: riding through (retrying with backoff)", dependency,
                             extra={"dependency": dependency, "error": f"{type(error).__name__}: {error}"[:300]})
            DEPENDENCY_OUTAGES.labels(self.process, dependency).inc()
        if not attempts or time.monotonic() - self._said_down.get(dependency, 0.0) > DOWN_FRESH_SECONDS / 3:
            self._said_down[dependency] = time.monotonic()
            self._tell(dependency, down=True)
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
            self._said_down.pop(dependency, None)
            self._tell(dependency, down=False)
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


class DownCollector:
    """``gcp_dependency_down{process,dependency}``: 1 while a process finds PostgreSQL or Kafka
    unreachable (0 for each pair that answered lately), read from Redis at scrape time."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("gcp_dependency_down", "1 while a long-running process cannot "
                                   "reach a dependency", labels=["process", "dependency"])
        try:
            now = time.time()
            for field, at in cache.client().hgetall(DOWN_KEY).items():
                process, _, dependency = field.decode().partition("|")
                family.add_metric([process, dependency], 1.0 if now - float(at) < DOWN_FRESH_SECONDS else 0.0)
        except Exception:  # Redis down: gcp_redis_up says so
            pass
        yield family


def metrics_payload(*collectors) -> tuple[bytes, str]:
    """The web's ``/metrics``: its own metrics (every process's, in multiprocess mode), and the
    shared state read at scrape time: heartbeats, outages and dependencies from Redis, and
    ``collectors`` (the pool, backlogs and approvals from PostgreSQL: :mod:`models.store.gauges`)."""
    return render_metrics(HeartbeatCollector(), OutageCollector(), DownCollector(), *collectors)
