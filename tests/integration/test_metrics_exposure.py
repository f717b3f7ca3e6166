"""What the metrics show, and to whom (issue 27, item 4): no label takes a value from the request
beyond the route template and the status, and outside development both metrics endpoints (the
web's /metrics and the bi process's port) need METRICS_TOKEN unless METRICS_PUBLIC=true."""
from __future__ import annotations

import dataclasses
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from app import create_app
from config import ConfigError, check_settings, get_settings, reset_settings
from observability import HTTP_METHODS, REGISTRY

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-for-the-suite-0123456789"


def http_series() -> set[tuple]:
    """Every labelled series of the HTTP metrics in this process's registry."""
    return {(sample.name, tuple(sorted(sample.labels.items())))
            for family in REGISTRY.collect() if family.name.startswith("gcp_http_")
            for sample in family.samples}


def test_made_up_http_methods_add_no_metric_series(client):
    client.get("/health/live")
    client.open("/health/live", method="PROPFIND")  # the OTHER series exist from here on
    client.open("/nope", method="PROPFIND")
    before = http_series()
    rnd = random.Random(27)
    for _ in range(100):
        method = "".join(rnd.choice(string.ascii_uppercase) for _ in range(rnd.randint(4, 16)))
        resp = client.open(rnd.choice(["/health/live", "/nope"]), method=method)
        assert resp.status_code in (404, 405), (method, resp.status_code)
    after = http_series()
    assert after - before == set(), sorted(after - before)[:10]
    methods = {dict(labels).get("method") for _name, labels in after}
    assert methods <= HTTP_METHODS | {"OTHER"}, methods - HTTP_METHODS


def production(**changes):
    base = dataclasses.replace(get_settings(), gcp_env=None, metrics_token=None, metrics_public=False)
    return dataclasses.replace(base, **changes)


def test_outside_development_the_metrics_need_a_token_or_metrics_public():
    problems = check_settings(production())
    assert any(p.startswith("METRICS_TOKEN is not set") for p in problems), problems
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        create_app(production())
    for fine in (production(metrics_token=TOKEN), production(metrics_public=True),
                 production(gcp_env="development")):
        assert not [p for p in check_settings(fine) if "METRICS" in p], check_settings(fine)


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "workers.bi"],
    [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"],
])
def test_the_processes_refuse_to_start_without_metrics_token(command):
    from devstack import free_port

    env = {k: v for k, v in os.environ.items()
           if k not in ("METRICS_TOKEN", "METRICS_PUBLIC", "GCP_ENV", "COV_CORE_SOURCE")}
    env.update(PYTHONPATH=str(ROOT), PORT=str(free_port()), BI_METRICS_PORT="0")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "refusing to start" in done.stderr and "METRICS_TOKEN" in done.stderr, done.stderr[-2000:]


def test_the_bi_metrics_port_needs_the_same_bearer_token(monkeypatch):
    from workers.bi import metrics  # noqa: F401  (registers the mart's metrics)
    from devstack import free_port
    from workers.bi.metrics import start_metrics_server

    monkeypatch.setenv("METRICS_TOKEN", TOKEN)
    monkeypatch.setenv("BI_METRICS_PORT", str(free_port()))
    monkeypatch.setenv("BI_METRICS_HOST", "127.0.0.1")
    reset_settings()
    try:
        port = start_metrics_server()
    finally:
        monkeypatch.undo()
        reset_settings()
    url = f"http://127.0.0.1:{port}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = requests.get(url, headers=headers, timeout=5)
        assert refused.status_code == 401 and "gcp_" not in refused.text, headers
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    scraped = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert scraped.status_code == 200 and "gcp_bi_lag_seconds" in scraped.text
