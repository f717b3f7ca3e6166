"""Safe to deploy, operability: expired idempotency keys are purged, a stuck row lock ends in a
clear 409, /metrics can be protected by a token, readiness names each process with its heartbeat
age, and every module the service imports is installed by requirements.txt."""
from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import psycopg2

from app import create_app
from config import get_settings
from models.domain import timeutil
from models.store.db import connect_params, db, init_db
from models.store.tables import IdempotencyKey
from tests.helpers import issued, uid
from tests.integration.apikit import auth

ROOT = Path(__file__).resolve().parents[2]


# ---- operability ---------------------------------------------------------------------------

def test_the_scheduler_purges_expired_idempotency_keys(stack):
    from workers import scheduler

    old, fresh = uid("old-"), uid("fresh-")
    now = timeutil.utcnow()
    with db.connection_context():
        for key, created in ((old, now - dt.timedelta(hours=25)), (fresh, now)):
            IdempotencyKey.insert(client_id="c", key=key, method="POST", path="/x", request_hash="h", status="DONE",
                                  response_status=200, response_body={}, created_at=created).execute()
    result = scheduler.tick(housekeeping=True)
    assert result.idempotency_keys_purged >= 1
    with db.connection_context():
        left = {k.key for k in IdempotencyKey.select().where(IdempotencyKey.key.in_([old, fresh]))}
    assert left == {fresh}


def test_a_stuck_row_lock_ends_in_a_clear_409_not_a_hung_request(client, env):
    code = issued()
    env(DB_LOCK_TIMEOUT_MS="300")
    init_db(get_settings().database_url)
    holder = psycopg2.connect(**connect_params(get_settings().database_url))
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM gift_certificate WHERE code = %s FOR UPDATE", (code,))
        started = time.monotonic()
        resp = client.post(f"/certificates/{code}/actions/lock", headers=auth(("certificates:admin",)),
                           json={"reason": "FRAUD"})
        elapsed = time.monotonic() - started
        assert resp.status_code == 409 and resp.json["code"] == "LOCK_TIMEOUT", resp.json
        assert resp.headers["Retry-After"] == "1" and elapsed < 5
    finally:
        holder.rollback()
        holder.close()
        env(DB_LOCK_TIMEOUT_MS=None)
        init_db(get_settings().database_url)
    assert client.post(f"/certificates/{code}/actions/lock", headers=auth(("certificates:admin",)),
                       json={"reason": "FRAUD"}).status_code == 200


def test_metrics_can_be_protected_by_a_token(env, stack):
    env(METRICS_TOKEN="metrics-token-0123456789")
    client = create_app(get_settings()).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    resp = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"})
    assert resp.status_code == 200 and b"gcp_http_requests_total" in resp.data


def test_ready_names_each_process_with_its_heartbeat_age(env, stack):
    from models.store import cache
    from models.store.liveness import HEARTBEAT_KEY, Heartbeat

    cache.client().delete(HEARTBEAT_KEY)
    beats = [Heartbeat(name, interval=0.2).start() for name in ("worker", "pump", "scheduler", "bi")]
    try:
        time.sleep(0.3)
        client = create_app(get_settings()).test_client()
        ready = client.get("/health/ready")
        assert ready.status_code == 200  # a missing relay does not fail readiness by default
        procs = ready.json["processes"]
        assert procs["pump"]["status"] == "ok" and 0 <= procs["pump"]["heartbeatAgeSeconds"] < 5
        assert procs["relay"] == {"status": "missing", "heartbeatAgeSeconds": None, "instances": 0}
        metrics = client.get("/metrics").data.decode()
        assert 'gcp_process_heartbeat_age_seconds{process="relay"} -1.0' in metrics
        assert 'gcp_process_heartbeat_age_seconds{process="pump"}' in metrics
        # where READY_REQUIRES_WORKERS=true, a missing process fails readiness, by name
        env(READY_REQUIRES_WORKERS="true")
        ready = create_app(get_settings()).test_client().get("/health/ready")
        assert ready.status_code == 503 and ready.json["failing"] == ["relay"]
    finally:
        for beat in beats:
            beat.stop()
    live = {m.decode().split("|")[0] for m in cache.client().zrange(HEARTBEAT_KEY, 0, -1)
            if not m.decode().endswith("|stopped")}  # a stop leaves its time, no instance (issue 31)
    assert "pump" not in live


# ---- the runtime's imports are all in requirements.txt -------------------------------------

def test_every_module_the_service_imports_is_installed_by_requirements_txt():
    import ast
    import importlib.metadata as md
    import re

    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    local = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if p.is_dir()}
    imported = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        # not the service: its tests, benchmarks and the Apache Kafka proof scripts (kafka/)
        if rel.parts[0] in ("tests", "bench", "kafka") or any(part.startswith(".") for part in rel.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                top = name.split(".")[0]
                if top not in local and top not in sys.stdlib_module_names:
                    imported.setdefault(top, str(rel))
    todo = [norm(re.split(r"[\[<>=!~; ]", line.split("#")[0].strip())[0])
            for line in (ROOT / "requirements.txt").read_text().splitlines() if line.split("#")[0].strip()]
    closure = set()
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            if "extra ==" in r and not re.search(r"extra == ['\"](redis|crypto)['\"]", r):
                continue
            todo.append(norm(re.split(r"[\[<>=!~; (]", r)[0]))
    owners = md.packages_distributions()
    missing = {m: where for m, where in imported.items()
               if not {norm(d) for d in owners.get(m, [])} & closure}
    assert missing == {}, f"imported by the service but not installed by requirements.txt: {missing}"
