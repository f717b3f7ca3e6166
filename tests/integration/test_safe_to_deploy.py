"""Safe to deploy: unsafe production settings are refused, CVC keys rotate, tokens name a real
channel, wrong CVCs are budgeted per client, and the operability settings work."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import jwt
import psycopg2
import pytest
from click.testing import CliRunner

import config
from app import cli, create_app
from config import DEV_JWT_SECRET, ConfigError, check_settings, get_settings, reset_settings
from models.domain import timeutil
from models.store import cvc
from models.store.db import connect_params, db, init_db
from models.store.tables import GiftCertificate, IdempotencyKey, OutboxEvent
from tests.helpers import issued, uid
from tests.integration.apikit import auth, cvc_of, row

ROOT = Path(__file__).resolve().parents[2]
STRONG = "s" * 40


@pytest.fixture
def client(stack):
    return create_app(get_settings()).test_client()


@pytest.fixture
def env(monkeypatch):
    """Change settings for one test: ``env(NAME=value, OTHER=None)``."""
    def change(**values):
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        reset_settings()
    yield change
    monkeypatch.undo()
    reset_settings()


def production(**changes) -> config.Settings:
    base = dataclasses.replace(get_settings(), gcp_env=None, jwt_secret=STRONG,
                               cvc_encryption_key="k" * 40, jwks_url=None)
    return dataclasses.replace(base, **changes)


# ---- start-up refusals ---------------------------------------------------------------------

@pytest.mark.parametrize("changes, names", [
    ({"jwt_secret": DEV_JWT_SECRET}, "JWT_SECRET is the built-in development secret"),
    ({"jwt_secret": "short-secret"}, "JWT_SECRET is shorter than 32 bytes"),
    ({"cvc_encryption_key": None}, "CVC_ENCRYPTION_KEY is not set"),
    ({"jwks_url": "https://idp.example/jwks", "jwt_algorithms": ("RS256",)},
     "JWKS_URL is set without JWT_ISSUER and JWT_AUDIENCE"),
    ({"cvc_length": 3}, "CVC_LENGTH must be between 4 and 12"),
    ({"cvc_length": 13}, "CVC_LENGTH must be between 4 and 12"),
    ({"jwt_audience": None}, "JWT_AUDIENCE is not set while HS256 is accepted"),
    ({"jwks_url": "http://idp.example/jwks", "jwt_algorithms": ("RS256",), "jwt_issuer": "idp",
      "jwt_audience": "gcp"}, "JWKS_URL is http://"),
    ({"jwks_url": "https://idp.example/jwks", "jwt_algorithms": ("RS256", "HS256"), "jwt_issuer": "idp",
      "jwt_audience": "gcp"}, "JWT_ALGORITHMS names HS256 together with JWKS_URL"),
    ({"jwks_cache_seconds": 0}, "JWKS_CACHE_SECONDS must be a positive number of seconds"),
    ({"cvc_old_keys": ("o" * 40, "short-old-key")}, "CVC_OLD_KEYS: key 2 is shorter than 32 bytes"),
])
def test_an_unsafe_production_setting_is_named_and_refused(changes, names):
    settings = production(**changes)
    problems = check_settings(settings)
    assert any(names in p for p in problems), problems
    with pytest.raises(ConfigError, match=names.split()[0]):
        create_app(settings)


def test_a_safe_production_configuration_and_development_start():
    assert check_settings(production()) == []
    assert check_settings(production(jwt_secret=DEV_JWT_SECRET, jwt_algorithms=("RS256",),
                                     jwks_url="https://idp.example/jwks", jwt_issuer="idp",
                                     jwt_audience="gcp")) == []
    # development: the embedded default, or GCP_ENV=development said explicitly
    assert check_settings(production(jwt_secret=DEV_JWT_SECRET, cvc_encryption_key=None,
                                     gcp_env="development")) == []
    assert check_settings(dataclasses.replace(production(cvc_encryption_key=None), database_url=None,
                                              redis_url=None, kafka_bootstrap_servers=None)) == []
    assert check_settings(production(cvc_length=4)) == check_settings(production(cvc_length=12)) == []


def test_what_can_never_work_is_refused_in_development_too():
    # given development, where a JWKS over http:// (a local identity provider) is fine
    dev = production(gcp_env="development", jwks_url="http://127.0.0.1:9999/jwks", jwt_issuer="idp",
                     jwt_audience=None, jwt_algorithms=("RS256",))
    assert check_settings(dev) == []
    # when the JWKS comes with an HMAC algorithm (its public keys can never verify one: it was
    # a TypeError and a 500 at the first request), or its keys would never be fetched again
    for changes, names in (({"jwt_algorithms": ("RS256", "HS256")}, "JWT_ALGORITHMS names HS256 together with JWKS_URL"),
                           ({"jwks_cache_seconds": -1}, "JWKS_CACHE_SECONDS must be a positive"),
                           ({"jwks_url": "file:///etc/jwks.json"}, "JWKS_URL must be an https:// URL"),
                           ({"jwks_url": None}, "JWT_ALGORITHMS names only asymmetric algorithms"),
                           ({"admin_identity_claim": ""}, "ADMIN_IDENTITY_CLAIM must name a token claim")):
        settings = dataclasses.replace(dev, **changes)
        # then the service refuses to start, naming the setting
        assert [p for p in check_settings(settings) if p.startswith(names)], check_settings(settings)
        with pytest.raises(ConfigError, match=names.split()[0]):
            create_app(settings)


# ---- secrets from files (NAME_FILE, a mounted secret) --------------------------------------

@pytest.mark.parametrize("name, field, content, value", [
    ("JWT_SECRET", "jwt_secret", "j" * 40 + "\n", "j" * 40),
    ("CVC_ENCRYPTION_KEY", "cvc_encryption_key", "c" * 40 + "\n", "c" * 40),
    ("METRICS_TOKEN", "metrics_token", "m" * 40 + "\n", "m" * 40),
    ("CVC_OLD_KEYS", "cvc_old_keys", "o" * 40 + "\n" + "p" * 40 + "\n", ("o" * 40, "p" * 40)),
])
def test_every_secret_can_come_from_a_file_and_an_unreadable_one_is_named(env, tmp_path, name, field,
                                                                          content, value):
    secret = tmp_path / "secret"
    secret.write_text(content)
    # given the secret in a mounted file named by NAME_FILE (and NAME unset)
    env(**{name: None, name + "_FILE": str(secret)})
    # then the setting is the file's content, and nothing names it
    assert getattr(get_settings(), field) == value
    problems = check_settings(get_settings())
    assert not [p for p in problems if name in p or content.split()[0] in p], problems
    # when the file cannot be read, then the service refuses to start naming NAME_FILE (and why),
    # in development too
    for gcp_env in (None, "development"):
        env(**{name + "_FILE": str(tmp_path / "absent"), "GCP_ENV": gcp_env})
        assert f"{name}_FILE cannot be read (No such file or directory)" in check_settings(get_settings())
        with pytest.raises(ConfigError, match=f"{name}_FILE cannot be read"):
            create_app(get_settings())


def test_the_service_uses_the_secrets_from_their_files(env, tmp_path, stack):
    jwt_file, metrics_file = tmp_path / "jwt", tmp_path / "metrics"
    jwt_file.write_text("a-jwt-secret-from-a-mounted-file-0123456789\n")
    metrics_file.write_text("a-metrics-token-from-a-file-0123\n")
    env_token = auth("certificates:read")  # signed with JWT_SECRET from the environment
    # given JWT_SECRET and METRICS_TOKEN from files
    env(JWT_SECRET=None, JWT_SECRET_FILE=str(jwt_file), METRICS_TOKEN=None, METRICS_TOKEN_FILE=str(metrics_file))
    client = create_app(get_settings()).test_client()
    code = issued()
    # then tokens verify with the file's secret (and no longer with the old one)
    assert client.get(f"/certificates/{code}", headers=auth("certificates:read")).status_code == 200
    assert client.get(f"/certificates/{code}", headers=env_token).status_code == 401
    # and /metrics takes the file's token
    assert client.get("/metrics").status_code == 401
    resp = client.get("/metrics", headers={"Authorization": "Bearer a-metrics-token-from-a-file-0123"})
    assert resp.status_code == 200


def unsafe_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "GCP_ENV", "COV_CORE_SOURCE")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "workers.scheduler"],
    [sys.executable, "-m", "workers.pump"],
    [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"],
])
def test_the_processes_refuse_to_start_with_the_built_in_secret(command):
    from devstack import free_port

    env = {**unsafe_env(), "PORT": str(free_port())}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "refusing to start" in done.stderr and "JWT_SECRET" in done.stderr, done.stderr[-2000:]


# ---- CVC keys ------------------------------------------------------------------------------

def test_the_hash_and_the_copy_use_separate_keys_and_record_the_key_id():
    key = cvc.derive("k" * 40)
    assert key.hmac_key != cvc.derive("l" * 40).hmac_key
    assert len({key.id, key.hmac_key.hex()[:12]}) == 2
    code = issued()
    stored = row(code)
    assert stored.cvc_key_id == cvc.current_key_id() and stored.cvc_encrypted
    secret = cvc_of(code)
    assert cvc.matches(code, secret, stored.cvc_hash, stored.cvc_key_id)
    assert not cvc.matches(code, secret, stored.cvc_hash, "unknownkey00")


def test_changing_jwt_secret_never_invalidates_a_cvc(env):
    code = issued()
    secret, stored = cvc_of(code), row(code)
    env(JWT_SECRET="another-jwt-secret-for-the-suite-0123456789")
    assert cvc.matches(code, secret, stored.cvc_hash, stored.cvc_key_id)
    assert cvc.decrypt(stored.cvc_encrypted) == secret


def authorize(client, code, secret, headers=None, amount="10.00"):
    return client.post(f"/certificates/{code}/authorizations", headers=headers or auth(channel="ONLINE_STORE"),
                       json={"channel": "ONLINE_STORE", "orderId": uid("o-"), "amount": amount, "cvc": secret})


def test_rotating_the_cvc_key_keeps_old_rows_working_and_reseals_them(client, env):
    old_key = os.environ["CVC_ENCRYPTION_KEY"]
    old_id = cvc.current_key_id()
    pending, sent = issued(), issued()
    pending_cvc, sent_cvc = cvc_of(pending), cvc_of(sent)
    with db.connection_context():  # the second one was delivered: only its hash is left
        GiftCertificate.update(cvc_encrypted=None).where(GiftCertificate.code == sent).execute()
    # when the key is rotated: the new one current, the old one kept to read old rows
    env(CVC_ENCRYPTION_KEY="a-brand-new-cvc-key-for-the-suite-0123456789", CVC_OLD_KEYS=old_key)
    new_id = cvc.current_key_id()
    assert new_id != old_id
    # then old rows still verify and decrypt
    assert cvc.decrypt(row(pending).cvc_encrypted) == pending_cvc
    # and the rotation re-seals what it can read, and counts the hash-only rows
    result = CliRunner().invoke(cli, ["rotate-cvc-key"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "re-sealed with key " + new_id in result.output and "hash made with an older key" in result.output
    assert row(pending).cvc_key_id == new_id and row(sent).cvc_key_id == old_id
    # a hash-only row is re-sealed at its next correct CVC
    assert authorize(client, sent, sent_cvc).status_code == 201
    assert row(sent).cvc_key_id == new_id
    # and once the old key is dropped, both still verify
    env(CVC_OLD_KEYS=None)
    assert authorize(client, pending, pending_cvc).status_code == 201
    assert authorize(client, sent, sent_cvc).status_code == 201


# ---- the token's channel claim ------------------------------------------------------------

@pytest.mark.parametrize("channel", [["POS"], "SYSTEM", "pos", 7, ""])
def test_a_channel_claim_that_names_no_known_channel_is_refused(client, channel):
    now = int(time.time())
    token = jwt.encode({"sub": uid("c-"), "scope": "certificates:read", "channel": channel, "iat": now,
                        "exp": now + 60, "aud": get_settings().jwt_audience}, get_settings().jwt_secret,
                       algorithm="HS256")
    resp = client.get(f"/certificates/{issued()}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401 and resp.json["code"] == "UNAUTHORIZED"
    assert "channel claim" in resp.json["message"]


def test_a_known_channel_claim_and_no_claim_are_accepted(client):
    code = issued()
    assert client.get(f"/certificates/{code}", headers=auth("certificates:read", "POS")).status_code == 200
    assert client.get(f"/certificates/{code}", headers=auth("certificates:read")).status_code == 200


# ---- the per-client budget of wrong CVCs ---------------------------------------------------

def test_wrong_cvcs_spread_over_many_certificates_exhaust_the_clients_budget(client, env):
    env(CVC_CLIENT_BUDGET="3/minute")
    guesser, honest = uid("guesser-"), uid("honest-")
    codes = [issued() for _ in range(4)]
    headers = auth(channel="ONLINE_STORE", client_id=guesser)
    # given three wrong CVCs, each on another certificate (none is locked: 1 wrong each)
    for code in codes[:3]:
        resp = authorize(client, code, "000000" if cvc_of(code) != "000000" else "111111", headers)
        assert resp.status_code == 403 and resp.json["code"] == "CVC_MISMATCH"
    # then the client's next try is refused before any CVC is checked, even a right one
    resp = authorize(client, codes[3], cvc_of(codes[3]), headers)
    assert resp.status_code == 429 and resp.json["code"] == "CVC_ATTEMPTS_EXCEEDED"
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    assert row(codes[3]).cvc_failed_attempts == 0
    # and the stream got one alert naming the client
    with db.connection_context():
        found = [e.envelope["payload"] for e in OutboxEvent.select().where(OutboxEvent.event_type == "alert")
                 if e.envelope["payload"].get("clientId") == guesser]
    assert len(found) == 1 and found[0]["code"] == "CVC_ATTEMPTS_EXCEEDED"
    # another client is not affected
    honest_headers = auth(channel="ONLINE_STORE", client_id=honest)
    assert authorize(client, codes[3], cvc_of(codes[3]), honest_headers).status_code == 201


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
    from observability import HEARTBEAT_KEY, Heartbeat

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
    assert "pump" not in {m.decode().split("|")[0] for m in cache.client().zrange(HEARTBEAT_KEY, 0, -1)}


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
