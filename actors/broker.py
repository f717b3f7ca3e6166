"""The Dramatiq broker: imported before any actor module (``import actors`` does it).

Dramatiq's defaults are wrong for this service (20 retries with backoff from 15 s; a killed
worker's messages come back only after the heartbeat timeout), so retries, backoff, time
limits and the idle poll are set explicitly from the configuration.

Dramatiq's Redis consumer finds new messages by polling (a Lua fetch, then a sleep of up to
``worker_timeout``), so a hand-over waits half the poll interval on average and an idle worker
polls all the time. :class:`WakingRedisBroker` adds a wake-up: every enqueue also PUBLISHes
the queue's name, and an idle consumer waits for that (or for ``worker_timeout``, the
fallback) instead of sleeping. The hand-over then takes about a millisecond, and the idle poll
can be slow.
"""
from __future__ import annotations

import logging
import threading
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from config import get_settings

log = logging.getLogger("gcp.actors.broker")
#: Redis pub/sub channel on which every enqueue announces its queue.
WAKE_CHANNEL = "gcp:dramatiq:wake"


class ProcessBoot(Middleware):
    """The worker processes start like every other process (``observability.boot``): JSON
    logs, the configuration checked (an unsafe one exits, saying why), the database awaited
    (a missing migration exits, saying why), and a heartbeat."""

    def __init__(self):
        self.heartbeat = None

    def after_process_boot(self, broker):
        from models.store.db import await_database
        from observability import boot

        boot()
        await_database("worker")

    def after_worker_boot(self, broker, worker):
        from models.store.liveness import Heartbeat

        self.heartbeat = Heartbeat("worker").start()

    def before_worker_shutdown(self, broker, worker):
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None


class _Waker:
    """One subscriber thread per process: sets the events of the consumers of the queue named
    by each wake-up message. While Redis is unreachable the consumers simply poll."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.events: dict[str, list[threading.Event]] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def register(self, queue_name: str) -> threading.Event:
        event = threading.Event()
        with self.lock:
            self.events.setdefault(queue_name, []).append(event)
            if self.thread is None:
                self.thread = threading.Thread(target=self._listen, name="dramatiq-waker", daemon=True)
                self.thread.start()
        return event

    def unregister(self, queue_name: str, event: threading.Event) -> None:
        with self.lock:
            waiting = self.events.get(queue_name, [])
            if event in waiting:
                waiting.remove(event)

    def _listen(self) -> None:
        while True:
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(WAKE_CHANNEL)
                for message in pubsub.listen():
                    queue_name = message["data"].decode("utf-8", "replace")
                    with self.lock:
                        waiting = list(self.events.get(queue_name, ()))
                    for event in waiting:
                        event.set()
            except Exception as exc:  # Redis away: consumers fall back to the idle poll
                log.warning("wake-up subscription lost, retrying: %s", exc)
                time.sleep(1.0)


class _WakingConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, waiting for a wake-up instead of sleeping when idle."""

    def __init__(self, broker: "WakingRedisBroker", queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, 0)  # 0: the parent never sleeps
        self.idle_timeout = timeout / 1000
        self.woken = broker.waker.register(queue_name)

    def __next__(self):
        self.woken.clear()  # a wake-up from now on is for messages the fetch below may miss
        message = super().__next__()
        if message is None:
            self.woken.wait(self.idle_timeout)
        return message

    def close(self) -> None:
        self.broker.waker.unregister(self.queue_name, self.woken)
        super().close()


class WakingRedisBroker(RedisBroker):
    """A Redis broker whose enqueues wake idle consumers at once (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.waker = _Waker(self.client)

    @property
    def consumer_class(self):
        return _WakingConsumer

    def enqueue(self, message, *, delay=None):
        enqueued = super().enqueue(message, delay=delay)
        try:
            self.client.publish(WAKE_CHANNEL, enqueued.queue_name)
        except redis.RedisError as exc:  # the message is queued; a consumer finds it by polling
            log.warning("could not publish the wake-up: %s", exc)
        return enqueued


def make_broker() -> RedisBroker:
    s = get_settings()
    if not s.redis_url:
        raise RuntimeError("REDIS_URL is not set")
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=60_000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=s.actor_max_retries, min_backoff=s.actor_min_backoff_ms,
                max_backoff=s.actor_max_backoff_ms),
        CurrentMessage(),
        ProcessBoot(),
    ]
    return WakingRedisBroker(url=s.redis_url, middleware=middleware, heartbeat_timeout=15_000,
                             dead_message_ttl=7 * 24 * 3600 * 1000)


broker = make_broker()
dramatiq.set_broker(broker)
