"""The Kafka side's AsyncAPI 3.0 document (``GET /asyncapi.json``, rendered at ``GET /asyncapi``)
as an integrating team's tools judge it: ``asyncapi validate`` (npm ``@asyncapi/cli``) and
Spectral's ``spectral:asyncapi`` (``.spectral-asyncapi.yaml``) report no error and no warning.
Both are pinned in ``tests/js/package.json`` (``npm ci --prefix tests/js``); those two tests skip,
saying so, where Node.js or the install is missing.

Without Node: the document never drifts from ``contracts/`` (each payload is the contract's
schema, every example of ``contracts/examples/`` is in it and valid against it) nor from what the
relay and the pump write (the stream's and the DLQ's headers)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from api.asyncapi_doc import CE_TYPE_PREFIX, DLQ_HEADERS, MECHANISM_SCHEMES, STREAM_HEADERS, TOPICS, build
from app import create_app
from config import get_settings, load_settings
from models.domain.states import EventType
from workers.pump import dlq_headers
from workers.relay import CLOUDEVENTS_TYPE_PREFIX, cloudevent_headers

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"
EXAMPLES = sorted((ROOT / "contracts" / "examples").glob("*.json"))


@pytest.fixture(scope="module")
def client():
    app = create_app(dataclasses.replace(load_settings(), database_url=None, redis_url=None,
                                         gcp_env="development"))
    return app.test_client()


@pytest.fixture(scope="module")
def doc(client) -> dict:
    answer = client.get("/asyncapi.json")
    assert answer.status_code == 200 and answer.content_type == "application/json"
    return answer.json


@pytest.fixture(scope="module")
def doc_file(doc, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("asyncapi") / "asyncapi.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def _validator(doc: dict, name: str) -> jsonschema.Draft202012Validator:
    registry = Registry().with_resource("urn:gcp:asyncapi", Resource(contents=doc, specification=DRAFT202012))
    return jsonschema.Draft202012Validator({"$ref": f"urn:gcp:asyncapi#/components/messages/{name}/payload"},
                                           registry=registry, format_checker=jsonschema.FormatChecker())


def test_served_document_is_asyncapi_3_with_every_topic(doc):
    assert doc["asyncapi"].startswith("3.0")
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert addresses == {"All_SalesOrder", "All_Payments", "All_Clients", "GiftCertificates.Stream",
                         "GiftCertificates.DLQ"}
    actions = sorted((op["action"], doc["channels"][op["channel"]["$ref"].split("/")[-1]]["address"])
                     for op in doc["operations"].values())
    assert actions == [("receive", "All_Clients"), ("receive", "All_Payments"), ("receive", "All_SalesOrder"),
                       ("send", "GiftCertificates.DLQ"), ("send", "GiftCertificates.Stream")]
    assert all(ch["bindings"]["kafka"]["topic"] == ch["address"] for ch in doc["channels"].values())
    assert all(m["bindings"]["kafka"]["key"]["type"] == "string" for m in doc["components"]["messages"].values())


def test_payloads_are_the_contract_schemas(doc):
    for _topic, file, name, _key, _what in TOPICS.values():
        contract = json.loads((ROOT / "contracts" / file).read_text())
        lifted = json.loads(json.dumps(contract).replace('"#/$defs/', '"#/components/schemas/'))
        defs = lifted.pop("$defs", {})
        lifted.pop("$schema"), lifted.pop("$id")
        assert doc["components"]["schemas"][name] == lifted
        assert all(doc["components"]["schemas"][d] == schema for d, schema in defs.items())


def test_every_contract_example_is_in_the_document_and_valid(doc):
    by_name = {ex["name"]: (message, ex) for message in doc["components"]["messages"].values()
               for ex in message.get("examples", ())}
    for path in EXAMPLES:
        example = json.loads(path.read_text())
        message, shown = by_name[path.stem]
        assert shown["payload"] == example["value"]
        assert doc["channels"][next(c for c, t in TOPICS.items() if t[0] == example["topic"])]["address"] \
            == example["topic"]
        assert not list(_validator(doc, message["name"]).iter_errors(example["value"])), path.name
        if "headers" in shown:
            assert not list(jsonschema.Draft202012Validator(message["headers"]).iter_errors(shown["headers"]))
            assert shown["headers"]["ce_subject"] == example["key"]
            assert shown["headers"]["ce_source"] == get_settings().cloudevents_source


def test_a_refused_payload_is_refused_by_the_document_too(doc):
    broken = {"eventId": "oops", "amount": 12.5}
    for name in ("SalesOrderEvent", "PaymentEvent", "ClientEvent", "CertificateEvent"):
        assert list(_validator(doc, name).iter_errors(broken))


def test_headers_are_those_the_relay_and_the_pump_write():
    written = [name for name, _ in cloudevent_headers("urn:x", "e-1", "issue", "2026-01-01T00:00:00Z", "K")]
    assert set(STREAM_HEADERS["properties"]) == {"eventType", "channel", "outboxId", *written}
    assert CE_TYPE_PREFIX == CLOUDEVENTS_TYPE_PREFIX
    assert STREAM_HEADERS["properties"]["eventType"]["enum"] == [e.value for e in EventType]
    written = [name for name, _ in dlq_headers("why", "All_Payments", 1, 2, eventId="e", valueBytes=9)]
    assert set(DLQ_HEADERS["properties"]) == set(written)
    assert set(DLQ_HEADERS["required"]) == {"error", "sourceTopic", "sourcePartition", "sourceOffset"}


def test_security_schemes_cover_scram_mtls_and_oauthbearer(doc):
    schemes = doc["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"scramSha256", "scramSha512", "plain", "X509", "oauth2"}
    kafka_settings = pytest.importorskip("config.kafka")  # KAFKA_SASL_MECHANISM's values
    assert set(MECHANISM_SCHEMES) == set(kafka_settings.SASL_MECHANISMS)
    assert set(MECHANISM_SCHEMES.values()) <= set(schemes)
    secure = {name: server for name, server in doc["servers"].items() if server["protocol"] == "kafka-secure"}
    assert {ref["$ref"].split("/")[-1] for s in secure.values() for ref in s["security"]} == set(schemes)


def test_html_rendering_is_offline_and_shows_every_topic(client, doc):
    page = client.get("/asyncapi")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    text = page.get_data(as_text=True)
    for channel in doc["channels"].values():
        assert channel["address"] in text
    assert "ce_specversion" in text and "7700000000000017" in text
    assert "<script" not in text and not re.search(r"""(src|href)=['"]?https?:""", text)
    assert "`" not in re.sub(r"<pre>.*?</pre>", "", text, flags=re.S)  # code spans rendered, not shown raw
    assert "<code>KAFKA_SECURITY_PROTOCOL=SASL_SSL</code>" in text


def test_build_is_deterministic_and_matches_what_is_served(doc):
    assert build(get_settings().cloudevents_source, get_settings().consumer_group) == doc


def _npx(tool: str, *args: str) -> subprocess.CompletedProcess:
    if not (shutil.which("node") and shutil.which("npx")):
        pytest.skip("Node.js (node, npx) is not installed: the AsyncAPI linters cannot run")
    if not (JS_DIR / "node_modules" / ".bin" / tool).exists():
        pytest.skip(f"{tool} is not installed: run `npm ci --prefix tests/js` (.ci/run does)")
    return subprocess.run(["npx", "--no-install", tool, *args], cwd=JS_DIR, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_UPDATE_NOTIFIER": "1"})


def test_asyncapi_cli_validates_with_no_error_nor_warning(doc_file, tmp_path):
    metrics = tmp_path / "analytics.json"  # no prompt, no telemetry
    metrics.write_text(json.dumps({"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "ci"}))
    os.environ["ASYNCAPI_METRICS_CONFIG_PATH"] = str(metrics)
    try:
        run = _npx("asyncapi", "validate", str(doc_file), "--diagnostics-format", "json")
    finally:
        os.environ.pop("ASYNCAPI_METRICS_CONFIG_PATH", None)
    start = run.stdout.find("[")
    assert start >= 0, f"asyncapi printed no diagnostics (exit {run.returncode}): {run.stdout[-1500:]} {run.stderr[-1500:]}"
    diagnostics, _ = json.JSONDecoder().raw_decode(run.stdout[start:])
    problems = [(d["code"], d["message"]) for d in diagnostics if d["severity"] <= 1]  # 0 error, 1 warning
    assert problems == [] and run.returncode == 0, run.stdout[-1500:]


def test_spectral_asyncapi_reports_no_error_nor_warning(doc_file):
    run = _npx("spectral", "lint", "--quiet", "--format", "json", "--ruleset",
               str(ROOT / ".spectral-asyncapi.yaml"), "--fail-severity", "hint", str(doc_file))
    assert run.stdout.strip(), f"spectral printed nothing (exit {run.returncode}): {run.stderr[-2000:]}"
    problems = [(p["code"], ".".join(map(str, p["path"])), p["message"])
                for p in json.loads(run.stdout) if p["severity"] <= 1]
    assert problems == []
