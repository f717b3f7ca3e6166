"""Redis cache for certificate reads, never stale after a write.

Each code has a generation counter. A reader reads the generation before the database and
stores its copy stamped with it; a writer bumps the generation right after its commit (in the
unit of work). A copy whose stamp differs from the current generation is a miss, so a reader
racing a writer can never leave a stale copy behind.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable

import redis

from config import get_settings

log = logging.getLogger("gcp.cache")
_client: redis.Redis | None = None
#: Codes whose generation bump failed (Redis away): sent again until one goes through.
_missed: set[str] = set()
_missed_lock = threading.Lock()


def client() -> redis.Redis:
    global _client
    if _client is None:
        url = get_settings().redis_url
        if not url:
            raise RuntimeError("REDIS_URL is not set")
        _client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                       health_check_interval=30)
    return _client


def reset() -> None:
    global _client
    _client = None
    with _missed_lock:
        _missed.clear()


def _keys(code: str) -> tuple[str, str]:
    return f"gcp:cert:{code}", f"gcp:cert-gen:{code}"


def get_or_load(code: str, load: Callable[[], dict | None]) -> dict | None:
    """The cached view of ``code``, or ``load()`` stored with the current generation.

    Redis being down degrades to a plain database read.
    """
    data_key, gen_key = _keys(code)
    try:
        if _missed:
            retry_missed()
            if code in _missed:  # its bump is still not through: no copy of it can be trusted
                return load()
        raw, gen = client().mget(data_key, gen_key)
        gen = int(gen or 0)
        if raw is not None:
            cached = json.loads(raw)
            if cached.get("gen") == gen:
                return cached["view"]
    except redis.RedisError as exc:
        log.warning("cache read failed: %s", exc)
        return load()
    view = load()
    if view is not None:
        try:
            client().set(data_key, json.dumps({"gen": gen, "view": view}),
                         ex=get_settings().cache_ttl_seconds)
        except redis.RedisError as exc:
            log.warning("cache write failed: %s", exc)
    return view


def invalidate(codes) -> None:
    """Bump the generation of each code (called after the commit that changed them).

    A bump that fails (Redis away) is kept and sent again with the next invalidation, the next
    read of this process and every heartbeat (:func:`retry_missed`): otherwise a copy cached
    before the outage would keep its stamp and be served, stale, once Redis is back.
    """
    codes = [c for c in codes if c]
    with _missed_lock:
        todo = sorted(_missed.union(codes))
    if not todo:
        return
    try:
        pipe = client().pipeline(transaction=False)
        for code in todo:
            data_key, gen_key = _keys(code)
            pipe.incr(gen_key)
            pipe.delete(data_key)
        pipe.execute()
    except redis.RedisError as exc:
        with _missed_lock:
            _missed.update(todo)
        log.error("cache invalidation failed for %d certificate(s), kept to send again: %s", len(todo), exc)
        return
    with _missed_lock:
        _missed.difference_update(todo)
    if len(todo) > len(codes):
        log.warning("cache invalidations sent again after an outage", extra={"certificates": len(todo) - len(codes)})


def retry_missed() -> None:
    """Send again the bumps that failed (a no-op when none did)."""
    if _missed:
        invalidate([])
