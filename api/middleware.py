"""What every request goes through besides its view: the per-client rate limit (``RATE_LIMIT``),
its request id, its metrics and access log line, and its database connection closed at the end.
``create_app`` adds both to the app."""
from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, request
from flask_limiter import Limiter

from api.auth import current_principal
from config import Settings
from models.store.db import close_db
from observability import HTTP_LATENCY, HTTP_REQUESTS, correlation_id_var, method_label, request_id_var

#: A client's X-Request-ID is kept only when it is a plain token (it goes into the audit trail).
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: Endpoints the rate limit never counts: health, metrics and the documentation.
UNLIMITED_ENDPOINTS = ("health.Live", "health.Ready", "health.Metrics", "api-docs.openapi_json",
                       "api-docs.openapi_swagger_ui", "swagger_asset",
                       "asyncapi.asyncapi_json", "asyncapi.asyncapi_page")


def add_rate_limit(app: Flask, settings: Settings) -> None:
    """``RATE_LIMIT``: one budget per client id across every call (the contract's "limits are
    per client id"): application limits, not default ones, which Flask-Limiter counts per route.

    No rate-limit headers on the answers let through: each cost a second Redis round trip (the
    window's state) on every request; a 429's Retry-After is asked for on the refusal alone
    (``errors._rate_limit_retry_after``)."""
    def rate_key() -> str:
        try:
            return "client:" + current_principal().client_id
        except Exception:  # no or bad token: 401 comes from the view; limit by address meanwhile
            return "addr:" + (request.remote_addr or "?")

    limiter = Limiter(rate_key, app=app, application_limits=[settings.rate_limit],
                      storage_uri=settings.redis_url or "memory://", headers_enabled=False,
                      strategy="sliding-window-counter", swallow_errors=True,
                      storage_options={"socket_timeout": 2})
    for endpoint in UNLIMITED_ENDPOINTS:
        view = app.view_functions.get(endpoint)
        if view is not None:
            limiter.exempt(view)
    app.extensions["gcp_limiter"] = limiter


def add_request_hooks(app: Flask) -> None:
    """Each request: its id (kept from ``X-Request-ID`` when it is a plain token), its metrics and
    access log line, the context variables of its log lines, and its database connection closed."""
    access = logging.getLogger("gcp.access")

    def start_request():
        g.started = time.perf_counter()
        given = request.headers.get("X-Request-ID") or ""
        g.request_id = given if _REQUEST_ID_RE.match(given) else "req-" + uuid.uuid4().hex[:16]
        g.token_rid = request_id_var.set(g.request_id)
        g.token_cid = correlation_id_var.set(request.headers.get("X-Correlation-ID"))

    # first of all hooks, before the rate limiter's: a 429 gets a request id and a duration too
    app.before_request_funcs.setdefault(None, []).insert(0, start_request)

    @app.after_request
    def finish_request(response):
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.url_rule.rule if request.url_rule else "<unmatched>"
        response.headers["X-Request-ID"] = g.get("request_id", "")
        method = method_label(request.method)  # a made-up method is no new series
        HTTP_REQUESTS.labels(method, route, response.status_code).inc()
        HTTP_LATENCY.labels(method, route).observe(elapsed)
        principal = g.get("principal")
        access.info("request", extra={
            "client": principal.client_id if principal else None, "method": request.method,
            "route": route, "status": response.status_code, "durationMs": round(elapsed * 1000, 2)})
        return response

    @app.teardown_request
    def end_request(exc):
        close_db()
        for name, var in (("token_rid", request_id_var), ("token_cid", correlation_id_var)):
            token = g.pop(name, None)
            if token is not None:
                var.reset(token)
