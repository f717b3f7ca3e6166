"""The contract's error model: ``{"code": "UPPER_SNAKE", "message": "...", "details": {...}}``.

Every refusal leaves through here: domain errors, validation errors from marshmallow/webargs,
HTTP errors from Flask, and anything unexpected (a 500 with no internals in the body).
"""
from __future__ import annotations

import json
import logging
import time

import marshmallow as ma
from flask import current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from models.domain.errors import DomainError

#: Every error code the service answers with, and its HTTP status (contract section 3).
ERROR_STATUS: dict[str, int] = {
    "VALIDATION_ERROR": 422,
    "BAD_REQUEST": 400,
    "PAYLOAD_TOO_LARGE": 413,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "CHANNEL_FORBIDDEN": 403,
    "CVC_MISMATCH": 403,
    "NOT_FOUND": 404,
    "CERTIFICATE_NOT_FOUND": 404,
    "AUTHORIZATION_NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "POOL_EMPTY": 409,
    "INVALID_STATE": 409,
    "NOT_REDEEMABLE": 409,
    "INSUFFICIENT_FUNDS": 409,
    "CVC_ALREADY_DISCLOSED": 409,
    "NO_NOTIFICATION_PENDING": 409,
    "AUTHORIZATION_NOT_ACTIVE": 409,
    "AUTHORIZATION_EXPIRED": 409,
    "NOMINAL_MISMATCH": 409,
    "ALREADY_RESERVED": 409,
    "IDEMPOTENCY_IN_PROGRESS": 409,
    "EXCEEDS_NOMINAL": 409,
    "HOLDS_ACTIVE": 409,
    "TARGET_NOT_AVAILABLE": 409,
    "BATCH_MISMATCH": 409,
    "ADJUSTMENT_NOT_FOUND": 404,
    "ADJUSTMENT_NOT_PENDING": 409,
    "ADJUSTMENT_EXPIRED": 409,
    "SELF_APPROVAL_FORBIDDEN": 403,
    "TRANSFER_NOT_FOUND": 404,
    "TRANSFER_NOT_PENDING": 409,
    "TRANSFER_EXPIRED": 409,
    "BALANCE_CHANGED": 409,
    "CURRENCY_MISMATCH": 422,
    "AMOUNT_EXCEEDS_HOLD": 422,
    "IDEMPOTENCY_KEY_REUSED": 422,
    "RATE_LIMITED": 429,
    "CVC_ATTEMPTS_EXCEEDED": 429,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}


def http_status(error: DomainError) -> int:
    return ERROR_STATUS.get(error.code, 409)


log = logging.getLogger("gcp.api")

#: Contract codes for plain HTTP errors raised by Flask/werkzeug themselves.
HTTP_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED", 409: "INVALID_STATE", 413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE", 422: "VALIDATION_ERROR", 429: "RATE_LIMITED",
    500: "INTERNAL_ERROR", 503: "UNAVAILABLE",
}


class ErrorSchema(ma.Schema):
    """Every error answer (documentation only)."""

    code = ma.fields.String(required=True, metadata={"example": "INSUFFICIENT_FUNDS"})
    message = ma.fields.String(required=True)
    details = ma.fields.Dict(required=True)


#: The error answers every route documents: no or a bad token, a missing scope, the rate limit.
COMMON_ERRORS = ("UNAUTHORIZED", "FORBIDDEN", "RATE_LIMITED")
#: ... every route with a request body: a malformed, oversized or non-JSON body.
BODY_ERRORS = ("BAD_REQUEST", "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "VALIDATION_ERROR")
#: ... and every route that takes an ``Idempotency-Key`` (``api.idempotency``).
IDEMPOTENCY_ERRORS = ("IDEMPOTENCY_IN_PROGRESS", "IDEMPOTENCY_KEY_REUSED")


def error_responses(blp, *codes: str, body: bool = False, idempotent: bool = False):
    """Decorator documenting a route's error answers in the error model: :data:`COMMON_ERRORS`,
    :data:`BODY_ERRORS` for a route with a body, ``codes``, then :data:`IDEMPOTENCY_ERRORS` for
    an idempotent route; each under the HTTP status :data:`ERROR_STATUS` gives it (one answer
    per status, naming its codes)."""
    listed = COMMON_ERRORS + (BODY_ERRORS if body else ()) + codes
    by_status: dict[int, list[str]] = {}
    for code in listed + (IDEMPOTENCY_ERRORS if idempotent else ()):
        same_status = by_status.setdefault(ERROR_STATUS[code], [])
        if code not in same_status:
            same_status.append(code)

    def decorate(view):
        for status in sorted(by_status, reverse=True):
            view = blp.alt_response(status, schema=ErrorSchema,
                                    description="error codes: " + ", ".join(by_status[status]))(view)
        return view
    return decorate


class ApiError(Exception):
    """An HTTP-edge refusal (auth, idempotency, parsing) in the contract's model."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None, **details):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers, self.details = headers or {}, details


def error_response(status: int, code: str, message: str, details: dict | None = None,
                   headers: dict | None = None):
    resp = jsonify({"code": code, "message": message, "details": details or {}})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _rate_limit_retry_after() -> int:
    """Whole seconds until the request's rate-limit window lets the client in again (at least 1).
    Asked of the limiter's storage only here, on a refusal: the limiter sends no rate-limit
    headers on the answers it lets through (one Redis round trip less per request)."""
    limiter = current_app.extensions.get("gcp_limiter")
    try:
        current = limiter.current_limit if limiter is not None else None
        return max(1, int(current.reset_at - time.time())) if current is not None else 1
    except Exception:  # the storage went away meanwhile: the window's shortest wait
        log.warning("rate limit window unknown; Retry-After 1", exc_info=True)
        return 1


def handle_http_exception(error: HTTPException):
    """flask-smorest/werkzeug errors, including webargs validation (422 with field messages)."""
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    details = {}
    message = data.get("message") or error.description or error.name
    if "messages" in data or "errors" in data:
        details = {"fields": data.get("errors") or data.get("messages")}
        message = "request validation failed"
        if status == 400:
            status = 422
    code = HTTP_CODES.get(status, "HTTP_ERROR")
    headers = dict(data.get("headers") or {})
    if status == 405 and error.get_response().headers.get("Allow"):
        headers["Allow"] = error.get_response().headers["Allow"]
    if status == 429:
        headers["Retry-After"] = str(_rate_limit_retry_after())
        message = "rate limit exceeded"
    return error_response(status, code, str(message), details, headers)


def handle_domain_error(error: DomainError):
    headers, status = {}, http_status(error)
    if status == 429:
        headers["Retry-After"] = str(error.details.get("retryAfter", 1))
    return error_response(status, error.code, error.message, error.details, headers)


def handle_api_error(error: ApiError):
    return error_response(error.status, error.code, error.message, error.details, error.headers)


def database_error(error: BaseException):
    """The psycopg2 error behind a (Peewee-wrapped) database exception, or None."""
    import psycopg2

    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, psycopg2.Error):
            return error
        inner = [a for a in getattr(error, "args", ()) if isinstance(a, BaseException)]
        error = inner[0] if inner else (error.__cause__ or error.__context__)
        seen += 1
    return None


def dependency_refusal(error: BaseException):
    """A database refusal the caller can act on, in the error model: a lock not granted in
    ``DB_LOCK_TIMEOUT_MS`` (409 ``LOCK_TIMEOUT``), a statement past ``DB_STATEMENT_TIMEOUT_MS``
    or a lost connection (503). None for anything else."""
    import psycopg2
    import psycopg2.errors as pg

    cause = database_error(error)
    if isinstance(cause, pg.LockNotAvailable):
        return error_response(409, "LOCK_TIMEOUT", "the certificate is busy with another operation; "
                              "retry shortly", {}, {"Retry-After": "1"})
    if isinstance(cause, pg.QueryCanceled):
        return error_response(503, "STATEMENT_TIMEOUT", "the database did not answer in time; retry",
                              {}, {"Retry-After": "1"})
    if isinstance(cause, (psycopg2.OperationalError, psycopg2.InterfaceError)):  # lost, refused, down
        return error_response(503, "DEPENDENCY_UNAVAILABLE", "the database is unavailable; retry",
                              {"dependency": "postgres"}, {"Retry-After": "2"})
    return None


def handle_unexpected(error: Exception):
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    refusal = dependency_refusal(error)
    if refusal is not None:
        log.warning("database refused the request: %s", type(database_error(error)).__name__)
        return refusal
    log.exception("unhandled error")
    return error_response(500, "INTERNAL_ERROR", "internal error")


#: Deepest JSON nesting a request body may have (the API's bodies are flat objects).
MAX_JSON_DEPTH = 32


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _bad_json_text(doc) -> str | None:
    """Why a parsed body cannot be stored as it is (NUL, unpaired surrogate, too deep), or None."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((k, depth) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            if "\x00" in value:
                return "text must not contain the NUL character"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "text must not contain unpaired UTF-16 surrogates"
    return None


def check_request_body() -> None:
    """Before any view: a mutating call's body, if any, is a JSON object in UTF-8.

    Oversized bodies are 413 (MAX_BODY_BYTES), other content types 415, undecodable bytes or
    malformed JSON 400, anything but an object (or text PostgreSQL cannot hold) 422.
    """
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    data = request.get_data(cache=True)  # raises 413 beyond MAX_CONTENT_LENGTH
    if not data.strip():
        return
    if not request.is_json:
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "the body must be application/json",
                       contentType=request.mimetype or None)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "BAD_REQUEST", "the body is not valid UTF-8") from None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "BAD_REQUEST", "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "VALIDATION_ERROR", "the body must be a JSON object")
    problem = _bad_json_text(doc)
    if problem:
        raise ApiError(422, "VALIDATION_ERROR", problem)


def register(app) -> None:
    app.before_request(check_request_body)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(DomainError, handle_domain_error)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(Exception, handle_unexpected)
