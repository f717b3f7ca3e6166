"""Metrics that tell the truth (issue 31): the gauges of shared state are counted at scrape time
from one source, so they agree with the API and carry no ``pid`` label, and ``promtool check
metrics`` finds nothing to say about either endpoint (the web's /metrics, the bi port)."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from models.store import gauges
from models.store.db import db
from tests.helpers import load, unique_currency
from tests.integration.apikit import auth

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(Debian: apt-get install prometheus; .ci/run installs it)")
#: The gauges of shared state: one value whichever process is scraped.
SHARED = ("gcp_pool_available", "gcp_pool_low_water_mark", "gcp_outbox_backlog", "gcp_outbox_oldest_seconds",
          "gcp_inbox_backlog", "gcp_inbox_oldest_seconds", "gcp_inbox_failed", "gcp_notifications_pending",
          "gcp_notification_oldest_pending_seconds", "gcp_approvals_pending",
          "gcp_process_heartbeat_age_seconds", "gcp_process_instances", "gcp_shared_state_up", "gcp_redis_up")


def scrape(client) -> dict[tuple, float]:
    gauges.forget()  # no cached count from an earlier test
    resp = client.get("/metrics")
    assert resp.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.get_data(as_text=True)) for s in family.samples}


def test_the_pool_gauge_by_segment_agrees_with_get_pool(client):
    # given two segments of a currency of this test only
    currency = unique_currency()
    load(3, "700.00", currency)
    load(2, None, currency)
    # when the pool is read through the API and through /metrics
    pool = client.get("/pool", headers=auth()).get_json()
    metrics = scrape(client)
    # then every segment of the API has its series, with the same figure
    assert pool["byNominal"]
    for segment in pool["byNominal"]:
        labels = (("currency", segment["currency"]), ("kind", segment["kind"]),
                  ("nominal", segment["nominal"] or "OPEN"))
        assert metrics[("gcp_pool_available", labels)] == segment["available"], segment
    mine = {labels: v for (name, labels), v in metrics.items()
            if name == "gcp_pool_available" and ("currency", currency) in labels}
    assert sorted(mine.values()) == [2.0, 3.0], mine
    assert metrics[("gcp_pool_low_water_mark", ())] == pool["lowWaterMark"]


def test_the_backlogs_are_counted_from_the_database_with_no_pid_label(client):
    metrics = scrape(client)
    with db.connection_context():
        outbox = db.execute_sql("SELECT count(*) FROM outbox_event WHERE published_at IS NULL").fetchone()[0]
        inbox = db.execute_sql("SELECT count(*) FROM inbox_message WHERE status = 'PENDING'").fetchone()[0]
    assert metrics[("gcp_outbox_backlog", ())] == outbox
    assert metrics[("gcp_inbox_backlog", ())] == inbox
    assert metrics[("gcp_shared_state_up", ())] == 1.0 and metrics[("gcp_redis_up", ())] == 1.0
    kinds = {dict(labels)["kind"] for name, labels in metrics if name == "gcp_approvals_pending"}
    assert kinds == {"adjustment", "transfer"}
    for name, labels in metrics:
        if name in SHARED:
            assert "pid" not in dict(labels), (name, labels)
    assert {name for name, _labels in metrics} >= set(SHARED)


def test_a_dependency_outage_is_shown_while_it_lasts_and_a_stopped_process_keeps_its_age(client):
    from models.store.liveness import Heartbeat, Outages

    # given a process that cannot reach Kafka
    outages = Outages("pump-under-test")
    outages.failed("kafka", ConnectionError("refused"))
    assert scrape(client)[("gcp_dependency_down", (("dependency", "kafka"), ("process", "pump-under-test")))] == 1.0
    # when it reaches it again
    outages.ok()
    # then the series is gone
    assert ("gcp_dependency_down", (("dependency", "kafka"), ("process", "pump-under-test"))) not in scrape(client)
    # and a process stopped gracefully still shows how long ago it beat, with no instance
    beat = Heartbeat("stopped-under-test", interval=60)
    beat.beat()
    beat.stop()
    metrics = scrape(client)
    assert 0 <= metrics[("gcp_process_heartbeat_age_seconds", (("process", "stopped-under-test"),))] < 60
    assert metrics[("gcp_process_instances", (("process", "stopped-under-test"),))] == 0
    from models.store import cache
    from models.store.liveness import HEARTBEAT_KEY

    cache.client().zrem(HEARTBEAT_KEY, "stopped-under-test|stopped")  # no such process to alert on


@needs_promtool
def test_promtool_check_metrics_is_clean_on_the_web_endpoint(client):
    client.get("/nope")  # a 404 in the HTTP histogram and counter
    client.get("/pool", headers=auth())
    gauges.forget()
    text = client.get("/metrics").get_data()
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True)
    assert done.returncode == 0 and not done.stdout.strip(), (done.stdout + done.stderr).decode()
    assert b"gcp_pool_available" in text and b"gcp_http_request_seconds_bucket" in text


@needs_promtool
def test_promtool_check_metrics_is_clean_on_the_bi_port(monkeypatch):
    from config import reset_settings
    from devstack import free_port
    from workers.bi import metrics

    metrics.DAYS_CLOSED.inc(0)
    monkeypatch.setenv("BI_METRICS_PORT", str(free_port()))
    monkeypatch.setenv("BI_METRICS_HOST", "127.0.0.1")
    monkeypatch.delenv("METRICS_TOKEN", raising=False)
    reset_settings()
    try:
        port = metrics.start_metrics_server()
    finally:
        monkeypatch.undo()
        reset_settings()
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).content
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True)
    assert done.returncode == 0 and not done.stdout.strip(), (done.stdout + done.stderr).decode()
    assert b"gcp_bi_snapshots_closed_total" in text and b"gcp_bi_lag_seconds" in text
