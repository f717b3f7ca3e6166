"""Safe to deploy, the settings: unsafe production settings are named and refused at start-up (by
the app and by each process), what can never work is refused in development too, and every
secret can come from a mounted file (``NAME_FILE``)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import config
from app import create_app
from config import (
    DEV_IDEMPOTENCY_KEY,
    DEV_JWT_SECRET,
    ConfigError,
    check_settings,
    get_settings,
)
from tests.helpers import issued
from tests.integration.apikit import auth

ROOT = Path(__file__).resolve().parents[2]
STRONG = "s" * 40


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
    ({"idempotency_key": DEV_IDEMPOTENCY_KEY}, "IDEMPOTENCY_KEY is the built-in development key"),
    ({"idempotency_key": "short-key"}, "IDEMPOTENCY_KEY is shorter than 32 bytes"),
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
    assert check_settings(production(idempotency_key=DEV_IDEMPOTENCY_KEY, gcp_env="development")) == []
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
    ("IDEMPOTENCY_KEY", "idempotency_key", "i" * 40 + "\n", "i" * 40),
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
