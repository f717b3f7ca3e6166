"""``Idempotency-Key`` for every mutating call, kept in PostgreSQL (table ``idempotency_key``,
whose rows :mod:`models.store.idempotency` keeps).

- Keys are scoped per client id (the token's ``sub``); a key lives 24 hours.
- The request's identity is a keyed hash (HMAC-SHA-256 with ``IDEMPOTENCY_KEY``) of method,
  path, query and the canonical JSON body. The key is a secret of its own, not one of the CVC
  keys: rotating ``CVC_ENCRYPTION_KEY`` never turns a retry within the 24 hours into 422
  ``IDEMPOTENCY_KEY_REUSED``. (Changing ``IDEMPOTENCY_KEY`` itself does, for the keys recorded
  before the change: change it only where a day of such refusals is acceptable.)
- The first call inserts the key ``IN_PROGRESS``, runs the use case and records its answer,
  all *in one transaction* (``models.service.messagebus.transaction``): an effect without its
  recorded answer cannot happen, and a call that dies (its process, or the database restarting
  under it) leaves no key behind, so its retry runs at once.
- The same key and body again answers the recorded status and body (``Idempotent-Replayed:
  true``), 4xx refusals included; the same key with another request is 422
  ``IDEMPOTENCY_KEY_REUSED``. A call while the first is still running waits for it (PostgreSQL
  holds the second insert of a key until the first transaction ends, at most
  ``DB_LOCK_TIMEOUT_MS``), then answers as the first did, or 409 ``IDEMPOTENCY_IN_PROGRESS``
  if it is still running. A 5xx is not recorded: the key is freed with the rollback.

The one import of ``models`` beyond the entry points' rule (``domain``, ``service.messagebus``,
``store.queries``, ``store.db``): :mod:`models.store.idempotency`. Its rows are the HTTP edge's
own record, written inside the transaction that runs the use case, not a part of the model
that a command could change.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import re

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from api import errors
from api.auth import current_principal
from api.errors import ApiError
from api.fields import IDEMPOTENCY_KEY_PATTERN
from config import get_settings
from models.domain.errors import DomainError
from models.service.messagebus import transaction
from models.store import idempotency as key_store

#: The request header (contract section 3).
HEADER = "Idempotency-Key"
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
    return hmac.new(_hash_key(get_settings().idempotency_key), text, hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=4)
def _hash_key(secret: str) -> bytes:
    """The HMAC key of the request hashes, derived from ``IDEMPOTENCY_KEY`` (never used as is)."""
    return hmac.new(secret.encode(), b"gcp-idempotency-request", hashlib.sha256).digest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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
        key_store.drop_stale(client_id, key, _now())
        try:
            with transaction():
                if not _claim(client_id, key, digest):
                    return _answer_again(client_id, key, digest)
                response = _as_response(view, args, kwargs)
                if response.status_code >= 500:
                    raise _NotRecorded(response)  # rolled back: the key is free again
                key_store.record_answer(client_id, key, response.status_code, response.get_json(silent=True))
        except _NotRecorded as failed:
            return failed.response
        return response
    return inner


def _claim(client_id: str, key: str, digest: str) -> bool:
    """Claim the key for this call in the open transaction; False when it was claimed before."""
    try:
        return key_store.claim(client_id, key, request.method, request.path, digest, _now())
    except key_store.KeyBusy:
        raise _in_progress() from None


def _in_progress() -> ApiError:
    return ApiError(409, "IDEMPOTENCY_IN_PROGRESS", "a call with this Idempotency-Key is still "
                    "running; retry later", headers={"Retry-After": "1"})


def _answer_again(client_id: str, key: str, digest: str):
    """The recorded answer of an earlier call with this key (or why there is none to give)."""
    earlier = key_store.recorded(client_id, key)
    if earlier is not None and earlier.request_hash != digest:
        raise ApiError(422, "IDEMPOTENCY_KEY_REUSED", "this Idempotency-Key was used for "
                       "another request", field=HEADER)
    if earlier is None or not earlier.done:  # a call of the older version, still running
        raise _in_progress()
    response = jsonify(earlier.body)
    response.status_code = earlier.status
    response.headers["Idempotent-Replayed"] = "true"
    return response


def purge_expired(now: dt.datetime | None = None) -> int:
    """Delete keys older than 24 hours (the scheduler does it every minute); returns how many."""
    return key_store.purge_expired(now or _now())
