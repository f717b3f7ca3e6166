"""The OpenAPI document as an integrating team's tools judge it: Spectral (``spectral:oas``, with
``.spectral.yaml``) and Redocly CLI (``recommended``, with ``redocly.yaml``) report no error and no
warning. Both are pinned in ``tests/js/package.json`` and installed by ``npm ci --prefix tests/js``
(``.ci/run`` does it where npm exists); the linter tests skip, saying so, where they are missing.
This module installs nothing.

The operationIds are checked here too, without Node: generated clients name their methods after
them, so they never change."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from app import create_app
from config import load_settings

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

#: Every operation's operationId. Never rename one: add new operations, deprecate old ones.
OPERATION_IDS = {
    ("get", "/health/live"): "getLiveness",
    ("get", "/health/ready"): "getReadiness",
    ("get", "/metrics"): "getMetrics",
    ("post", "/certificates/next"): "reserveCertificate",
    ("get", "/certificates/next"): "reserveCertificateByQuery",
    ("get", "/certificates"): "searchCertificates",
    ("get", "/certificates/{code}"): "getCertificate",
    ("get", "/certificates/{code}/operations"): "listCertificateOperations",
    ("get", "/certificates/{code}/audit"): "listCertificateAudit",
    ("get", "/certificates/{code}/cvc"): "discloseCertificateCvc",
    ("post", "/certificates/{code}/actions/lock"): "lockCertificate",
    ("post", "/certificates/{code}/actions/unlock"): "unlockCertificate",
    ("post", "/certificates/{code}/actions/cancel"): "cancelCertificate",
    ("post", "/certificates/{code}/notifications"): "resendCertificateNotification",
    ("post", "/certificates/{code}/authorizations"): "authorizeCertificate",
    ("post", "/authorizations/{authorization_id}/capture"): "captureAuthorization",
    ("post", "/authorizations/{authorization_id}/void"): "voidAuthorization",
    ("post", "/batches"): "loadBatch",
    ("get", "/pool"): "getPool",
    ("post", "/certificates/{code}/actions/adjust"): "adjustCertificate",
    ("get", "/adjustments"): "listAdjustments",
    ("post", "/adjustments/{adjustment_id}/approve"): "approveAdjustment",
    ("post", "/adjustments/{adjustment_id}/reject"): "rejectAdjustment",
    ("post", "/certificates/{code}/actions/transfer"): "transferCertificate",
    ("get", "/transfers"): "listTransfers",
    ("post", "/transfers/{transfer_id}/approve"): "approveTransfer",
    ("post", "/transfers/{transfer_id}/reject"): "rejectTransfer",
}
#: The operations with no 4xx answer (``redocly.yaml`` turns ``operation-4xx-response`` off for them).
NO_4XX = {("get", "/health/live"), ("get", "/health/ready")}


@pytest.fixture(scope="module")
def spec() -> dict:
    """The document as ``GET /openapi.json`` serves it (no database needed to build it)."""
    app = create_app(dataclasses.replace(load_settings(), database_url=None, redis_url=None,
                                         gcp_env="development"))
    return app.test_client().get("/openapi.json").json


@pytest.fixture(scope="module")
def spec_file(spec, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("openapi") / "openapi.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def _operations(spec: dict) -> dict:
    return {(method, path): operation for path, item in spec["paths"].items()
            for method, operation in item.items() if method in METHODS}


def _npx(tool: str, *args: str) -> subprocess.CompletedProcess:
    """``tool`` from the pinned install in ``tests/js``, or a skip saying what is missing."""
    if not (shutil.which("node") and shutil.which("npx")):
        pytest.skip("Node.js (node, npx) is not installed: the OpenAPI linters cannot run")
    if not (JS_DIR / "node_modules" / ".bin" / tool).exists():
        pytest.skip(f"{tool} is not installed: run `npm ci --prefix tests/js` (.ci/run does)")
    env = {**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true",
           "NO_UPDATE_NOTIFIER": "1"}
    return subprocess.run(["npx", "--no-install", tool, *args], cwd=JS_DIR, env=env, capture_output=True,
                          text=True, timeout=300)


def test_every_operation_has_its_stable_operation_id(spec):
    ids = {key: operation.get("operationId") for key, operation in _operations(spec).items()}
    assert ids == OPERATION_IDS


def test_info_names_contact_license_servers_and_the_kafka_side(spec):
    info = spec["info"]
    assert info["contact"]["name"] and info["license"]["name"] and spec["servers"][0]["url"]
    assert "/asyncapi.json" in info["description"] and "docs/integration.md" in info["description"]


def test_every_link_names_an_operation_of_the_document(spec):
    ids = set(OPERATION_IDS.values())
    links = [link for operation in _operations(spec).values()
             for response in operation.get("responses", {}).values()
             for link in response.get("links", {}).values()]
    assert links and all(link.get("operationId") in ids and "operationRef" not in link for link in links)


def test_every_operation_but_the_health_probes_documents_a_4xx_answer(spec):
    without = {key for key, operation in _operations(spec).items()
               if not any(str(status).startswith("4") for status in operation["responses"])}
    assert without == NO_4XX


def test_spectral_oas_reports_no_error_nor_warning(spec_file):
    run = _npx("spectral", "lint", "--quiet", "--format", "json", "--ruleset", str(ROOT / ".spectral.yaml"),
               "--fail-severity", "hint", str(spec_file))
    assert run.stdout.strip(), f"spectral printed nothing (exit {run.returncode}): {run.stderr[-2000:]}"
    problems = [(p["code"], ".".join(map(str, p["path"])), p["message"])
                for p in json.loads(run.stdout) if p["severity"] <= 1]  # 0 error, 1 warning
    assert problems == []


def test_redocly_recommended_reports_no_error_nor_warning(spec_file):
    run = _npx("redocly", "lint", "--config", str(ROOT / "redocly.yaml"), "--format", "json", str(spec_file))
    assert run.stdout.strip(), f"redocly printed nothing (exit {run.returncode}): {run.stderr[-2000:]}"
    report = json.loads(run.stdout)
    problems = [(p["ruleId"], p["severity"], p["message"], p["location"][0].get("pointer"))
                for p in report["problems"]]
    assert report["totals"]["errors"] == 0 and report["totals"]["warnings"] == 0, problems
