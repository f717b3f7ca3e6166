"""A real Prometheus against the running processes (issue 31): it scrapes the web's /metrics (two
gunicorn workers, every process's metrics through ``PROMETHEUS_MULTIPROC_DIR``) and the bi port
every second, evaluates a copy of ``ops/prometheus/rules.yml`` (short ``for``, a short BI lag
threshold: ``tests/e2e/promkit.py``), and the tests break things and read the alerts through its
HTTP API. An alert removed from the rules never fires here, and its test fails.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from models.store.gauges import CACHE_SECONDS
from tests.e2e import flow
from tests.e2e.conftest import wait_until
from tests.e2e.promkit import PROMETHEUS, Prometheus, dashboard_queries, rules_for_test
from tests.helpers import unique_code, unique_currency

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e"),
              pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian: "
                                 "apt-get install prometheus; .ci/run installs it)")]
#: Two web workers; every process writes its metrics where the web serves them; heartbeats
#: fast enough that a dead process shows within seconds; a low-water mark a test can cross.
PROCS_ENV = {"WEB_CONCURRENCY": "2", "HEARTBEAT_INTERVAL_MS": "500", "POOL_LOW_WATER_MARK": "5",
             "PROMETHEUS_MULTIPROC_DIR": os.path.join(tempfile.gettempdir(), "gcp-e2e-multiproc-" + uuid.uuid4().hex)}
#: How long an alert may take: scrape (1 s), evaluation (1 s), `for` (2 s), heartbeats (1.5 s).
FIRES_WITHIN = 45.0


@pytest.fixture(scope="module", autouse=True)
def multiproc_dir():
    """Made before the module's processes start, removed once they are gone (autouse: set up
    first, torn down last)."""
    os.makedirs(PROCS_ENV["PROMETHEUS_MULTIPROC_DIR"])
    yield PROCS_ENV["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(PROCS_ENV["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


@pytest.fixture(scope="module")
def prom(procs, mart):
    token = os.environ.get("METRICS_TOKEN")
    server = Prometheus({"gcp-web": f"127.0.0.1:{procs.port}", "gcp-bi": f"127.0.0.1:{mart.port}"}, token)
    try:
        wait_until(lambda: set(server.targets_up().values()) == {"up"}, 60, "both targets scraped")
        yield server
    finally:
        server.stop()


def scrape(procs) -> dict[tuple, float]:
    """One scrape of the web's /metrics on a new connection (either gunicorn worker answers)."""
    token = os.environ.get("METRICS_TOKEN")
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"} if token else {"Connection": "close"}
    text = requests.get(procs.url + "/metrics", headers=headers, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def pool_series(metrics: dict) -> dict[tuple, float]:
    return {labels: v for (name, labels), v in metrics.items() if name == "gcp_pool_available"}


def firing(prom, name: str, **labels) -> list[dict]:
    return [a for a in prom.alerts(name) if all(a.get(k) == v for k, v in labels.items())]


def test_every_scrape_of_either_web_worker_agrees_with_the_api(procs, api, prom):
    # given segments loaded through the API
    currency = unique_currency()
    api.load([unique_code() for _ in range(7)], "300.00", currency)
    api.load([unique_code() for _ in range(4)], None, currency)
    pool = api.call("GET", "/pool", "admin").json()
    expected = {(("currency", s["currency"]), ("kind", s["kind"]), ("nominal", s["nominal"] or "OPEN")): s["available"]
                for s in pool["byNominal"]}
    # when /metrics is scraped many times, on new connections (both gunicorn workers answer),
    # once a count cached before the load has expired
    time.sleep(CACHE_SECONDS + 0.2)
    for _ in range(12):
        metrics = scrape(procs)
        # then every series of every scrape says what the API says, and none has a pid label
        series = pool_series(metrics)
        assert {k: series.get(k) for k in expected} == expected
        assert all("pid" not in dict(labels) for name, labels in metrics if not name.startswith("python_"))
        assert metrics[("gcp_process_instances", (("process", "pump"),))] == 1
    # and Prometheus stores one series per segment, equal to the API's figure
    def stored():
        return {r["metric"]["nominal"]: float(r["value"][1])
                for r in prom.query(f'gcp_pool_available{{currency="{currency}"}}')}
    wait_until(lambda: stored() == {"300.00": 7.0, "OPEN": 4.0}, FIRES_WITHIN, f"stored pool, got {stored()}")


def sell(api) -> str:
    """A certificate reserved through the API, then its order paid through Kafka; its code."""
    currency = unique_currency()
    code = unique_code()
    api.load([code], "1000.00", currency)
    order_id = "o-" + uuid.uuid4().hex[:8]
    api.reserve(order_id, "1000.00", currency=currency)
    pub = flow.Publisher()
    pub.send("order", flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00", currency=currency))
    pub.send("payment", flow.payment(order_id, "1000.00", currency=currency))
    return code


def test_an_input_message_to_its_stream_event_is_measured(procs, api, prom):
    # given a certificate reserved through the API, then its order paid through Kafka
    before = scrape(procs).get(("gcp_input_to_stream_seconds_count", ()), 0.0)
    sell(api)
    # then the relay observed the latency of the events those messages caused
    wait_until(lambda: scrape(procs).get(("gcp_input_to_stream_seconds_count", ()), 0.0) > before,
               FIRES_WITHIN, "an input-to-stream observation")
    wait_until(lambda: prom.query("sum(gcp_input_to_stream_seconds_count) > 0"), FIRES_WITHIN, "stored")


def test_every_dashboard_query_is_valid_and_returns_data(procs, api, prom):
    # given a sale of this test's own, so that the sales panels have a series whatever ran before
    code = sell(api)
    wait_until(lambda: api.certificate(code)["status"] == "ISSUED", FIRES_WITHIN, "the sale issued")
    queries = dashboard_queries()
    assert len(queries) >= 20
    empty = []
    for title, expr in queries:
        if not prom.query(expr):  # an invalid query fails inside prom.query
            empty.append((title, expr))
    if empty:  # rates need two samples of a series born in the test before: one more chance
        wait_until(lambda: all(prom.query(e) for _t, e in empty), 60, f"data for {empty}")


def test_promtool_check_metrics_is_clean_on_every_endpoint_of_the_running_stack(procs, mart):
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    token = os.environ.get("METRICS_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for url in (procs.url + "/metrics", mart.metrics_url):  # every process's, in multiprocess mode
        text = requests.get(url, headers=headers, timeout=10).content
        assert b"gcp_" in text, url
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
        assert done.returncode == 0 and not done.stdout.strip(), (url, (done.stdout + done.stderr).decode())


def test_killing_the_pump_fires_process_down_and_a_restart_resolves_it(procs, prom):
    assert not firing(prom, "GCPProcessDown", process="pump")
    procs.kill("pump", signal.SIGKILL)
    try:
        wait_until(lambda: firing(prom, "GCPProcessDown", process="pump"), FIRES_WITHIN, "GCPProcessDown{pump}")
        alert = firing(prom, "GCPProcessDown", process="pump")[0]
        assert alert["severity"] == "critical"
        assert not firing(prom, "GCPProcessDown", process="relay")
    finally:
        procs.restart("pump")
    wait_until(lambda: not firing(prom, "GCPProcessDown", process="pump"), FIRES_WITHIN,
               "GCPProcessDown{pump} resolved")


def test_draining_a_segment_below_its_mark_fires_low_water_for_that_segment_only(api, prom):
    # given two segments of a fresh currency, both above the mark (5)
    currency = unique_currency()
    api.load([unique_code() for _ in range(6)], "250.00", currency)
    api.load([unique_code() for _ in range(9)], "750.00", currency)
    wait_until(lambda: len(prom.query(f'gcp_pool_available{{currency="{currency}"}}')) == 2, FIRES_WITHIN, "scraped")
    assert not firing(prom, "GCPPoolLowWater", currency=currency)
    # when one is drained below it
    for _ in range(2):
        api.reserve("o-" + uuid.uuid4().hex[:8], "250.00", currency=currency)
    # then the alert fires for that segment, and not for the other
    wait_until(lambda: firing(prom, "GCPPoolLowWater", currency=currency), FIRES_WITHIN, "GCPPoolLowWater")
    alerts = firing(prom, "GCPPoolLowWater", currency=currency)
    assert [(a["kind"], a["nominal"]) for a in alerts] == [("ELECTRONIC", "250.00")], alerts
    assert not firing(prom, "GCPPoolEmpty", currency=currency)


def test_a_malformed_message_fires_the_dlq_alert(prom):
    before = {a["reason"] for a in prom.alerts("GCPDLQMessages")}
    flow.Publisher().send("order", b"{this is not json", key="o-" + uuid.uuid4().hex[:6])
    wait_until(lambda: firing(prom, "GCPDLQMessages", reason="INVALID_JSON"), FIRES_WITHIN, "GCPDLQMessages")
    assert "INVALID_JSON" not in before


def test_stopping_the_bi_process_fires_bi_lag(mart, prom):
    assert not firing(prom, "GCPBILag", process="bi")
    mart.stop()
    try:
        wait_until(lambda: firing(prom, "GCPBILag", process="bi"), FIRES_WITHIN, "GCPBILag")
        assert firing(prom, "GCPMetricsEndpointDown", job="gcp-bi") or prom.alerts("GCPMetricsEndpointDown", "pending")
    finally:
        mart.start("gcp-bi-" + uuid.uuid4().hex[:6])
    wait_until(lambda: not firing(prom, "GCPBILag", process="bi"), FIRES_WITHIN, "GCPBILag resolved")


def test_prometheus_runs_every_rule_of_the_file(prom):
    names = {rule.get("alert") or rule.get("record") for group in rules_for_test()["groups"] for rule in group["rules"]}
    assert prom.rule_names() == names
