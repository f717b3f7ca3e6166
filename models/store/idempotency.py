"""The rows of ``Idempotency-Key`` (table ``idempotency_key``): claimed, answered, read back,
forgotten. What a key means to an HTTP call is ``api/idempotency.py``'s business; this module
only keeps the rows, inside whatever transaction the caller has open.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg2.errors as pg_errors
from peewee import OperationalError

from models.store.tables import IdempotencyKey

#: How long an ``Idempotency-Key`` is remembered (then its answer is forgotten).
KEY_TTL = dt.timedelta(hours=24)
#: An IN_PROGRESS row this old was committed by an older version (which claimed keys in a
#: transaction of their own) and belongs to a dead call.
ABANDONED_AFTER = dt.timedelta(minutes=5)


class KeyBusy(Exception):
    """Another call's transaction still holds the key after ``DB_LOCK_TIMEOUT_MS``."""


@dataclass(frozen=True)
class Recorded:
    """What a key's row says: the request it was claimed for and, once done, its answer."""

    request_hash: str
    done: bool
    status: int | None
    body: object


def _one_key(client_id: str, key: str):
    """The condition naming the key of one client."""
    return (IdempotencyKey.client_id == client_id) & (IdempotencyKey.key == key)


def drop_stale(client_id: str, key: str, now: dt.datetime) -> None:
    """Forget the key if it expired, or if it is an IN_PROGRESS row committed long ago by an
    older version of the service."""
    expired = IdempotencyKey.created_at < now - KEY_TTL
    abandoned = (IdempotencyKey.status == "IN_PROGRESS") & (IdempotencyKey.created_at < now - ABANDONED_AFTER)
    IdempotencyKey.delete().where(_one_key(client_id, key) & (expired | abandoned)).execute()


def claim(client_id: str, key: str, method: str, path: str, request_hash: str, now: dt.datetime) -> bool:
    """Insert the key IN_PROGRESS in the current transaction; False when it exists. A concurrent
    uncommitted insert of the same key makes PostgreSQL wait for its transaction to end (at most
    ``DB_LOCK_TIMEOUT_MS``, then :class:`KeyBusy`)."""
    try:
        cursor = (IdempotencyKey.insert(client_id=client_id, key=key, method=method, path=path[:2000],
                                        request_hash=request_hash, status="IN_PROGRESS", created_at=now)
                  .on_conflict_ignore().returning(IdempotencyKey.client_id).execute())
    except OperationalError as exc:
        if isinstance(getattr(exc, "orig", None) or exc.__cause__, pg_errors.LockNotAvailable):
            raise KeyBusy(key) from None
        raise
    return len(list(cursor)) == 1


def record_answer(client_id: str, key: str, status: int, body: object) -> None:
    """The claimed key is DONE with this answer (in the claim's transaction)."""
    (IdempotencyKey.update(status="DONE", response_status=status, response_body=_jsonb_safe(body))
     .where(_one_key(client_id, key)).execute())


def recorded(client_id: str, key: str) -> Recorded | None:
    """The key's row, or None when there is none (its first call rolled back meanwhile)."""
    row = IdempotencyKey.get_or_none(_one_key(client_id, key))
    if row is None:
        return None
    return Recorded(row.request_hash, row.status == "DONE", row.response_status, row.response_body)


def purge_expired(now: dt.datetime) -> int:
    """Delete the keys older than :data:`KEY_TTL`; returns how many."""
    return IdempotencyKey.delete().where(IdempotencyKey.created_at < now - KEY_TTL).execute()


def _jsonb_safe(value):
    """PostgreSQL jsonb holds no NUL character: replace it (only echoed junk can carry one)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_jsonb_safe(k): _jsonb_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonb_safe(v) for v in value]
    return value
