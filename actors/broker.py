"""The Dramatiq broker: imported before any actor module (``import actors`` does it).

Dramatiq's defaults are wrong for this service (20 retries with backoff from 15 s; a killed
worker's messages come back only after the heartbeat timeout), so retries, backoff, time
limits and the idle poll are set explicitly from the configuration.
"""
from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (AgeLimit, Callbacks, CurrentMessage, Middleware, Pipelines,
                                 Retries, ShutdownNotifications, TimeLimit)

from config import get_settings


class StructuredLogs(Middleware):
    """The worker processes log like every other process: JSON lines (observability)."""

    def after_process_boot(self, broker):
        from observability import setup_logging

        setup_logging()


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
        StructuredLogs(),
    ]
    return RedisBroker(url=s.redis_url, middleware=middleware, heartbeat_timeout=15_000,
                       dead_message_ttl=7 * 24 * 3600 * 1000)


broker = make_broker()
dramatiq.set_broker(broker)
