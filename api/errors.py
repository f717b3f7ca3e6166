"""The contract's error model: ``{"code": "UPPER_SNAKE", "message": "...", "details": {...}}``.

Every refusal leaves through here: domain errors, validation errors from marshmallow/webargs,
HTTP errors from Flask, and anything unexpected (a 500 with no internals in the body).
"""
from __future__ import annotations

import logging

import marshmallow as ma
from flask import jsonify
from werkzeug.exceptions import HTTPException

from models.domain import DomainError

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
        retry = getattr(error, "retry_after", None) or headers.get("Retry-After") or 1
        headers["Retry-After"] = str(retry)
        message = "rate limit exceeded"
    return error_response(status, code, str(message), details, headers)


def handle_domain_error(error: DomainError):
    return error_response(error.http_status, error.code, error.message, error.details)


def handle_api_error(error: ApiError):
    return error_response(error.status, error.code, error.message, error.details, error.headers)


def handle_unexpected(error: Exception):
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    log.exception("unhandled error")
    return error_response(500, "INTERNAL_ERROR", "internal error")


def register(app) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(DomainError, handle_domain_error)
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(Exception, handle_unexpected)
