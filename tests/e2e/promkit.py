"""A real Prometheus (Debian's ``prometheus``) scraping the running processes, for the tests of
``ops/prometheus/`` and ``ops/grafana/`` (issue 31): its configuration and a copy of the rules
written into a temporary directory, a one-second scrape and evaluation, and its HTTP API."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "gcp.json"
PROMETHEUS = shutil.which("prometheus")
#: The test's copy of the rules: every `for` this short, and these thresholds instead (a test
#: cannot wait 30 minutes for the BI lag: the bi process away for 6 s counts, while the mart's
#: own lag keeps its 30 minutes, as a mart catching up on a new topic is seconds behind).
FOR = "2s"
THRESHOLDS = {"GCPBILag": ('{process="bi"}) > 1800', '{process="bi"}) > 6')}


def rules_for_test(source: Path = RULES) -> dict:
    """``rules.yml`` as the test runs it (see :data:`FOR`, :data:`THRESHOLDS`)."""
    rules = yaml.safe_load(source.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            if "for" in rule:
                rule["for"] = FOR
            old, new = THRESHOLDS.get(rule["alert"], ("", ""))
            if old:
                assert old in rule["expr"], (rule["alert"], old)
                rule["expr"] = rule["expr"].replace(old, new)
    return rules


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the Grafana dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


class Prometheus:
    """``prometheus`` on a free port, scraping ``targets`` ({job: host:port}) every second."""

    def __init__(self, targets: dict[str, str], token: str | None = None):
        from devstack import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="gcp-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "rules.yml").write_text(yaml.safe_dump(rules_for_test(), sort_keys=False))
        auth = {}
        if token:
            (self.dir / "token").write_text(token)
            auth = {"authorization": {"credentials_file": str(self.dir / "token")}}
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                  "rule_files": [str(self.dir / "rules.yml")],
                  "scrape_configs": [{"job_name": job, **auth, "static_configs": [{"targets": [target]}]}
                                     for job, target in targets.items()]}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_tail()
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus not ready:\n" + self.log_tail())

    def log_tail(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")[-3000:]

    def query(self, expr: str) -> list[dict]:
        resp = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def alerts(self, name: str, state: str = "firing") -> list[dict]:
        """The labels of the alerts ``name`` in ``state`` now."""
        body = requests.get(self.url + "/api/v1/alerts", timeout=10).json()
        return [a["labels"] for a in body["data"]["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == state]

    def rule_names(self) -> set[str]:
        body = requests.get(self.url + "/api/v1/rules", timeout=10).json()
        return {r["name"] for g in body["data"]["groups"] for r in g["rules"]}

    def targets_up(self) -> dict[str, str]:
        body = requests.get(self.url + "/api/v1/targets", timeout=10).json()
        return {t["labels"]["job"]: t["health"] for t in body["data"]["activeTargets"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
