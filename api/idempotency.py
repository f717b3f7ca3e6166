"""``Idempotency-Key`` for every mutating call, kept in PostgreSQL (table ``idempotency_key``).

- Keys are scoped per client id (the token's ``sub``); a key lives 24 hours.
- The request's identity is a hash of method, path, query and the canonical JSON body.
- The first call inserts the key ``IN_PROGRESS`` (committed at once, so a concurrent call sees
  it), then runs the use case and records its answer *in the same transaction* as the use case
  (``services.transaction``): an effect without its recorded answer cannot happen.
- The same key and body again answers the recorded status and body (``Idempotent-Replayed:
  true``), 4xx refusals included; the same key with another request is 422
  ``IDEMPOTENCY_KEY_REUSED``; a call while the first is still running waits briefly for its
  answer, then gets 409 ``IDEMPOTENCY_IN_PROGRESS``. A 5xx is not recorded: the key is freed.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import re
import time

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from api import errors
from api.auth import current_principal
from api.errors import ApiError
from api.schemas import IDEMPOTENCY_KEY_PATTERN
from models import cvc, services as svc
from models.housekeeping import IDEMPOTENCY_KEY_TTL, purge_idempotency_keys
from models.domain import DomainError
from models.tables import IdempotencyKey

#: The request header (contract section 3).
HEADER = "Idempotency-Key"
#: How long a key is remembered.
KEY_TTL = IDEMPOTENCY_KEY_TTL
#: An IN_PROGRESS key older than this belongs to a crashed call and may be taken over.
ABANDONED_AFTER = dt.timedelta(minutes=5)
#: How long a concurrent call with the same key waits for the first one's answer.
WAIT_SECONDS = 2.0
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


def _claim(client_id: str, key: str, digest: str) -> bool:
    """Insert the key IN_PROGRESS (autocommit); False when it already exists."""
    now = _now()
    K = IdempotencyKey
    (K.delete().where((K.client_id == client_id) & (K.key == key)
                      & ((K.created_at < now - KEY_TTL)
                         | ((K.status == "IN_PROGRESS") & (K.created_at < now - ABANDONED_AFTER))))
     .execute())
    cursor = (K.insert(client_id=client_id, key=key, method=request.method, path=request.path[:2000],
                       request_hash=digest, status="IN_PROGRESS", created_at=now)
              .on_conflict_ignore().returning(K.client_id).execute())
    return len(list(cursor)) == 1


def _forget(client_id: str, key: str) -> None:
    K = IdempotencyKey
    K.delete().where((K.client_id == client_id) & (K.key == key) & (K.status == "IN_PROGRESS")).execute()


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
        deadline = time.monotonic() + WAIT_SECONDS
        while not _claim(client_id, key, digest):
            row = IdempotencyKey.get_or_none((IdempotencyKey.client_id == client_id)
                                             & (IdempotencyKey.key == key))
            if row is not None and row.request_hash != digest:
                raise ApiError(422, "IDEMPOTENCY_KEY_REUSED", "this Idempotency-Key was used for "
                               "another request", field=HEADER)
            if row is not None and row.status == "DONE":
                response = jsonify(row.response_body)
                response.status_code = row.response_status
                response.headers["Idempotent-Replayed"] = "true"
                return response
            if time.monotonic() >= deadline:
                raise ApiError(409, "IDEMPOTENCY_IN_PROGRESS", "a call with this Idempotency-Key "
                               "is still running; retry later", headers={"Retry-After": "1"})
            time.sleep(0.02)
        try:
            with svc.transaction():
                response = _as_response(view, args, kwargs)
                if response.status_code >= 500:
                    raise _NotRecorded(response)
                K = IdempotencyKey
                (K.update(status="DONE", response_status=response.status_code,
                          response_body=_jsonb_safe(response.get_json(silent=True)))
                 .where((K.client_id == client_id) & (K.key == key)).execute())
        except _NotRecorded as failed:
            _forget(client_id, key)
            return failed.response
        except BaseException:
            _forget(client_id, key)
            raise
        return response
    return inner


def purge_expired(now: dt.datetime | None = None) -> int:
    """Delete keys older than 24 hours (the scheduler does it every minute); returns how many."""
    return purge_idempotency_keys(now or _now())
