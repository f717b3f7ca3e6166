"""``Idempotency-Key`` for every mutating call, kept in PostgreSQL (table ``idempotency_key``).

- Keys are scoped per client id (the token's ``sub``); a key lives 24 hours.
- The request's identity is a hash of method, path, query and the canonical JSON body.
- The first call inserts the key ``IN_PROGRESS``, runs the use case and records its answer,
  all *in one transaction* (``services.transaction``): an effect without its recorded answer
  cannot happen, and a call that dies (its process, or the database restarting under it) leaves
  no key behind, so its retry runs at once.
- The same key and body again answers the recorded status and body (``Idempotent-Replayed:
  true``), 4xx refusals included; the same key with another request is 422
  ``IDEMPOTENCY_KEY_REUSED``. A call while the first is still running waits for it (PostgreSQL
  holds the second insert of a key until the first transaction ends, at most
  ``DB_LOCK_TIMEOUT_MS``), then answers as the first did, or 409 ``IDEMPOTENCY_IN_PROGRESS``
  if it is still running. A 5xx is not recorded: the key is freed with the rollback.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import re

import psycopg2.errors as pg_errors
from flask import jsonify, request
from peewee import OperationalError
from werkzeug.exceptions import HTTPException

from api import errors
from api.auth import current_principal
from api.errors import ApiError
from api.schemas import IDEMPOTENCY_KEY_PATTERN
from models.domain.errors import DomainError
from models.service import unit_of_work as work
from models.service.housekeeping import IDEMPOTENCY_KEY_TTL, purge_idempotency_keys
from models.store import cvc
from models.store.tables import IdempotencyKey

#: The request header (contract section 3).
HEADER = "Idempotency-Key"
#: How long a key is remembered.
KEY_TTL = IDEMPOTENCY_KEY_TTL
#: An IN_PROGRESS row this old was committed by the older version and belongs to a dead call.
ABANDONED_AFTER = dt.timedelta(minutes=5)
_KEY_RE = re.compile(IDEMPOTENCY_KEY_PATTERN)

#: The OpenAPI description of the header, added to every mutating operation.
PARAMETER = {
    "in": "header", "name": HEADER, "required": False,
    "description": "Makes the call safe to retry for 24 h: the same key and body return the first "
                   "answer again (header `Idempotent-Replayed: true`); the same key with another "
                   "body is 422 IDEMPOTENCY_KEY_REUSED; while the first call runs, 409 "
                   "IDEMPOTENCY_IN_PROGRESS. Keys are per client.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
}


def request_hash() -> str:
    """A keyed hash (HMAC-SHA-256) over method, path, sorted query and the canonical JSON body:
    a body may hold a printed card's CVC, and a plain hash of a small body could be brute-forced."""
    raw = request.get_data(cache=True)
    try:
        body = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")) if raw.strip() else ""
    except (ValueError, RecursionError):  # the body check refuses these before; be safe anyway
        body = raw.hex()
    query = json.dumps(sorted(request.args.items(multi=True)))
    text = "\n".join((request.method, request.path, query, body)).encode()
    return hmac.new(cvc.request_key(), text, hashlib.sha256).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _drop_stale(client_id: str, key: str) -> None:
    """Forget the key if it expired, or if it is an IN_PROGRESS row committed by an older
    version of this module (which claimed keys in a transaction of their own) long ago."""
    now = _now()
    K = IdempotencyKey
    (K.delete().where((K.client_id == client_id) & (K.key == key)
                      & ((K.created_at < now - KEY_TTL)
                         | ((K.status == "IN_PROGRESS") & (K.created_at < now - ABANDONED_AFTER))))
     .execute())


def _in_progress() -> ApiError:
    return ApiError(409, "IDEMPOTENCY_IN_PROGRESS", "a call with this Idempotency-Key is still "
                    "running; retry later", headers={"Retry-After": "1"})


def _claim(client_id: str, key: str, digest: str) -> bool:
    """Insert the key IN_PROGRESS in the current transaction; False when it exists. A concurrent
    uncommitted insert of the same key makes PostgreSQL wait for its transaction to end."""
    K = IdempotencyKey
    try:
        cursor = (K.insert(client_id=client_id, key=key, method=request.method, path=request.path[:2000],
                           request_hash=digest, status="IN_PROGRESS", created_at=_now())
                  .on_conflict_ignore().returning(K.client_id).execute())
    except OperationalError as exc:
        if isinstance(getattr(exc, "orig", None) or exc.__cause__, pg_errors.LockNotAvailable):
            raise _in_progress() from None
        raise
    return len(list(cursor)) == 1


def _jsonb_safe(value):
    """PostgreSQL jsonb holds no NUL character: replace it (only echoed junk can carry one)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_jsonb_safe(k): _jsonb_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonb_safe(v) for v in value]
    return value


def _as_response(view, args, kwargs):
    """Run the view; a refusal becomes its error-model response (so it can be recorded)."""
    try:
        return view(*args, **kwargs)
    except DomainError as exc:
        return errors.handle_domain_error(exc)
    except ApiError as exc:
        return errors.handle_api_error(exc)
    except HTTPException as exc:
        return errors.handle_http_exception(exc)


class _NotRecorded(Exception):
    def __init__(self, response):
        super().__init__("server error: not recorded")
        self.response = response


def idempotent(view):
    """Decorator for a mutating view (apply it inside ``require``, outside ``blp.arguments``)."""
    @functools.wraps(view)
    def inner(*args, **kwargs):
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not _KEY_RE.fullmatch(key):
            raise ApiError(422, "VALIDATION_ERROR", "Idempotency-Key must be 1 to 255 visible ASCII "
                           "characters", field=HEADER)
        client_id = current_principal().client_id
        digest = request_hash()
        _drop_stale(client_id, key)
        try:
            with work.transaction():
                if not _claim(client_id, key, digest):
                    return _answer_again(client_id, key, digest)
                response = _as_response(view, args, kwargs)
                if response.status_code >= 500:
                    raise _NotRecorded(response)  # rolled back: the key is free again
                K = IdempotencyKey
                (K.update(status="DONE", response_status=response.status_code,
                          response_body=_jsonb_safe(response.get_json(silent=True)))
                 .where((K.client_id == client_id) & (K.key == key)).execute())
        except _NotRecorded as failed:
            return failed.response
        return response
    return inner


def _answer_again(client_id: str, key: str, digest: str):
    """The recorded answer of an earlier call with this key (or why there is none to give)."""
    row = IdempotencyKey.get_or_none((IdempotencyKey.client_id == client_id) & (IdempotencyKey.key == key))
    if row is not None and row.request_hash != digest:
        raise ApiError(422, "IDEMPOTENCY_KEY_REUSED", "this Idempotency-Key was used for "
                       "another request", field=HEADER)
    if row is None or row.status != "DONE":  # a call of the older version, still running
        raise _in_progress()
    response = jsonify(row.response_body)
    response.status_code = row.response_status
    response.headers["Idempotent-Replayed"] = "true"
    return response


def purge_expired(now: dt.datetime | None = None) -> int:
    """Delete keys older than 24 hours (the scheduler does it every minute); returns how many."""
    return purge_idempotency_keys(now or _now())
