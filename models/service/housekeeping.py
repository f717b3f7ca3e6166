"""Housekeeping the scheduler does now and then: tables that would otherwise grow for ever."""
from __future__ import annotations

import datetime as dt

from models.store.tables import IdempotencyKey

#: How long an ``Idempotency-Key`` is remembered (then its answer is forgotten).
IDEMPOTENCY_KEY_TTL = dt.timedelta(hours=24)


def purge_idempotency_keys(now: dt.datetime) -> int:
    """Delete the idempotency keys older than :data:`IDEMPOTENCY_KEY_TTL`; returns how many."""
    return (IdempotencyKey.delete()
            .where(IdempotencyKey.created_at < now - IDEMPOTENCY_KEY_TTL).execute())
