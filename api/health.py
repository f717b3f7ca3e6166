"""Liveness, readiness (PostgreSQL, Redis, Kafka) and Prometheus metrics. No auth."""
from __future__ import annotations

import logging
import threading
import time

import marshmallow as ma
from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from prometheus_client import CONTENT_TYPE_LATEST

from api.errors import ApiError
from config import get_settings
from config.kafka import access_granted, access_refused, connection_config
from models.store.queries import metrics_text, ping_redis, process_heartbeats
from observability import metrics_token_ok

blp = Blueprint("health", __name__, description="Health checks and metrics")
log = logging.getLogger("gcp.health")
_admin = None
_admin_lock = threading.Lock()


def check_postgres() -> None:
    from models.store.db import db

    with db.connection_context():
        db.execute_sql("SELECT 1")


def check_redis() -> None:
    ping_redis()


def check_kafka(timeout: float = 2.0) -> None:
    """Kafka answers metadata. A refused login or certificate (seen by this process's clients,
    :mod:`config.kafka`) is raised as its own class, which the answer names (e.g.
    ``KafkaAuthenticationFailed``)."""
    global _admin
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    with _admin_lock:
        if _admin is None:
            _admin = AdminClient(connection_config(**{"socket.timeout.ms": 2000}))
    _admin.poll(0)  # serves the error callback: a refusal is recorded before it is asked about
    try:
        md = _admin.list_topics(timeout=timeout)
    except KafkaException:
        _admin.poll(0)
        refused = access_refused()
        if refused is not None:
            raise refused(refused.__doc__) from None
        raise
    if not md.brokers:
        raise RuntimeError("no broker in metadata")
    access_granted()


CHECKS = (("postgres", check_postgres), ("redis", check_redis), ("kafka", check_kafka))
#: The last failure logged per dependency, so a probe every few seconds logs an outage once.
_logged_down: dict[str, str] = {}


def _log_down(name: str, exc: Exception) -> None:
    """Log why a dependency is down (driver messages name hosts and ports: the open answer gets
    only the error's class), once per distinct failure."""
    detail = f"{type(exc).__name__}: {exc}"[:300]
    if _logged_down.get(name) != detail:
        _logged_down[name] = detail
        log.warning("readiness: %s is down", name, extra={"dependency": name, "error": detail})


OPEN = {"security": []}  # the contract leaves the health checks open


class LiveSchema(ma.Schema):
    status = ma.fields.String(required=True, metadata={"enum": ["ok"]})


class CheckSchema(ma.Schema):
    status = ma.fields.String(required=True, metadata={"enum": ["ok", "down"]})
    ms = ma.fields.Float(metadata={"description": "how long the check took"})
    error = ma.fields.String(metadata={"description": "the class of the error that took it down, e.g. "
                                       "`OperationalError` (the detail is in the service's log)"})


class ProcessSchema(ma.Schema):
    status = ma.fields.String(required=True, metadata={"enum": ["ok", "missing"]})
    heartbeatAgeSeconds = ma.fields.Float(allow_none=True)
    instances = ma.fields.Integer()


class ReadySchema(ma.Schema):
    status = ma.fields.String(required=True, metadata={"enum": ["ok", "unavailable"]})
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Nested(CheckSchema), required=True,
                            metadata={"description": "postgres, redis and kafka"})
    processes = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Nested(ProcessSchema), required=True,
                               metadata={"description": "each long-running process, by name"})
    failing = ma.fields.List(ma.fields.String(), metadata={"description": "what is down (only when something is)"})


@blp.route("/health/live")
class Live(MethodView):
    @blp.response(200, LiveSchema)
    @blp.doc(**OPEN)
    @blp.doc(operationId="getLiveness")
    def get(self):
        """Liveness: the process answers.

        200 while the process serves requests; it checks no dependency (`/health/ready` does).
        Open, and never counted by the rate limit.
        """
        return {"status": "ok"}


@blp.route("/health/ready")
class Ready(MethodView):
    @blp.response(200, ReadySchema, description="ready")
    @blp.alt_response(503, schema=ReadySchema, description="not ready: `failing` names what is down")
    @blp.doc(**OPEN)
    @blp.doc(operationId="getReadiness")
    def get(self):
        """Readiness: PostgreSQL, Redis and Kafka answer (503 names the failing part)

        `processes` names each long-running process (worker, pump, relay, scheduler) with the
        age of its newest heartbeat. A missing one fails readiness only where
        `READY_REQUIRES_WORKERS=true`, so a load balancer in front of `web` keeps its meaning.
        """
        checks, ok = {}, True
        for name, check in CHECKS:
            started = time.perf_counter()
            try:
                check()
                checks[name] = {"status": "ok", "ms": round((time.perf_counter() - started) * 1000, 1)}
                _logged_down.pop(name, None)
            except Exception as exc:  # a health check reports, it does not raise
                ok = False
                checks[name] = {"status": "down", "error": type(exc).__name__}
                _log_down(name, exc)
        failing = [n for n, c in checks.items() if c["status"] != "ok"]
        processes = {}
        if checks["redis"]["status"] == "ok":
            processes = process_heartbeats()
            missing = [n for n, p in processes.items() if p["status"] != "ok"]
            if missing and get_settings().ready_requires_workers:
                ok = False
                failing += missing
        body = {"status": "ok" if ok else "unavailable", "checks": checks, "processes": processes}
        if failing:
            body["failing"] = failing
        return body, 200 if ok else 503


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(security=[{}, {"metricsToken": []}], responses={
        "200": {"description": "the metrics", "content": {CONTENT_TYPE_LATEST: {
            "schema": {"type": "string"}}}},
        "401": {"description": "METRICS_TOKEN is set and was not given",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}})
    @blp.doc(operationId="getMetrics")
    def get(self):
        """Prometheus metrics (text format)

        Where the deployment sets METRICS_TOKEN, send `Authorization: Bearer <METRICS_TOKEN>`
        (401 without it); otherwise the metrics are open. Never counted by the rate limit.
        """
        if not metrics_token_ok(request.headers.get("Authorization"), get_settings().metrics_token):
            raise ApiError(401, "UNAUTHORIZED", "the metrics need the METRICS_TOKEN bearer token",
                           headers={"WWW-Authenticate": "Bearer"})
        data, content_type = metrics_text()
        return Response(data, content_type=content_type)
