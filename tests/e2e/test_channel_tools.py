"""What a channel team does with its own tools, against the Procfile processes:

- a Python client generated from ``GET /openapi.json`` by ``openapi-python-client`` (pinned in
  requirements-dev.txt; generated into a temporary directory, never committed) drives one whole
  sale: reserve over the client, order and payment over Kafka, the certificate read back over the
  client. It skips, saying so, where the generator is not installed.
- `make demo`'s player (``workers.demo``) under ``NOTIFY_VIA=sms`` with the development ``log``
  SMS gateway: it authorizes with the CVC of the buyer's SMS and captures (the ledger shows the
  capture), and ends with a summary of every figure beside its bound.
"""
from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from tests.e2e import flow
from tests.helpers import uid, unique_code

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]
ROOT = Path(__file__).resolve().parents[2]
_SMS_DIR = Path(tempfile.mkdtemp(prefix="gcp-demo-sms-"))
#: The processes send the CVC by SMS through the log gateway, as `make run` does (development only).
PROCS_ENV = {"GCP_ENV": "development", "NOTIFY_VIA": "sms", "SMS_GATEWAY": "log", "SMS_LOG_PATH": str(_SMS_DIR / "sms.log")}


@pytest.fixture(scope="module")
def gcp_client(procs, tmp_path_factory):
    """The package ``openapi-python-client`` generates from the running service's document."""
    generator = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent)) \
        or shutil.which("openapi-python-client")
    if generator is None:
        pytest.skip("openapi-python-client is not installed: `pip install -r requirements-dev.txt` (make test does)")
    out = tmp_path_factory.mktemp("generated")
    spec = out / "openapi.json"
    spec.write_text(json.dumps(requests.get(procs.url + "/openapi.json", timeout=10).json()))
    config = out / "generator.yaml"
    config.write_text("post_hooks: []\n")  # no formatter needed to use the client
    run = subprocess.run([generator, "generate", "--path", str(spec), "--meta", "none", "--config", str(config),
                          "--output-path", str(out / "gcp_client")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr  # every operation generated
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("gcp_client")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "gcp_client" or m.startswith("gcp_client.")]:
            del sys.modules[name]


def test_a_generated_client_drives_a_whole_sale(gcp_client, procs, api, stream, currency):
    from api.auth import issue_token

    reserve = importlib.import_module("gcp_client.api.certificates.reserve_certificate")
    get_certificate = importlib.import_module("gcp_client.api.certificates.get_certificate")
    operations = importlib.import_module("gcp_client.api.certificates.list_certificate_operations")
    models = importlib.import_module("gcp_client.models")
    token = issue_token("web-gen", "certificates:reserve certificates:read", "ONLINE_STORE")
    client = gcp_client.AuthenticatedClient(base_url=procs.url, token=token)
    # given a certificate in the pool (loaded by the loader) and an order with it and a mug
    code, order_id = unique_code(), uid("order-")
    api.load([code], "1500.00", currency)
    # when OnlineStore reserves through the generated client
    reserved = reserve.sync_detailed(client=client, body=models.ReserveRequest(
        channel=models.ReserveRequestChannel.ONLINE_STORE, order_id=order_id, line_id="1", nominal="1500.00",
        currency=currency), idempotency_key=uid("idem-"))
    assert reserved.status_code == 201, reserved.content
    assert isinstance(reserved.parsed, models.Reservation) and reserved.parsed.code == code
    assert reserved.parsed.status == "RESERVED"
    # and Orders and Payments publish the order and its full payment on Kafka
    pub = flow.Publisher()
    pub.send("order", flow.order(order_id, [flow.gc_line(code, "1500.00"), flow.product_line("500.00")],
                                 "2000.00", currency=currency))
    pub.send("payment", flow.payment(order_id, "2000.00", currency=currency, gc={"code": code, "operation": "PURCHASE"}))
    stream.wait_for(lambda r: any(e["eventType"] == "issue" for e in r.for_key(code)), 30, f"issue of {code}")
    # then the generated client reads the issued certificate and its ledger
    certificate = get_certificate.sync(code, client=client)
    assert isinstance(certificate, models.Certificate), certificate
    assert (certificate.status, certificate.remaining_balance, certificate.order_id) == ("ISSUED", "1500.00", order_id)
    ledger = operations.sync(code, client=client)
    assert [(row.kind, row.amount) for row in ledger.items] == [("ISSUE", "1500.00")]
    # and a refusal comes back as the contract's error model
    missing = get_certificate.sync_detailed("NO-SUCH-CODE-0", client=client)
    assert missing.status_code == 404 and isinstance(missing.parsed, models.Error)
    assert missing.parsed.code == "CERTIFICATE_NOT_FOUND"


def test_the_demo_authorizes_with_the_sms_cvc_captures_and_states_its_bounds(procs, api):
    # given the processes sending CVCs by SMS through the log gateway (PROCS_ENV)
    # when the demo plays the channels against them
    demo = subprocess.run([sys.executable, "-m", "workers.demo"], cwd=ROOT, env=procs.env,
                          capture_output=True, text=True, timeout=400)
    out = demo.stdout
    # then every step did what it said, the online authorization included
    assert demo.returncode == 0, out[-4000:] + demo.stderr[-2000:]
    assert "FAIL" not in out and "NOTIFY_VIA=sms" in out
    found = re.search(r"ok +(\S+): 250\.00 captured, the ledger shows it", out)
    assert found, out[-4000:]
    # and the ledger shows the capture, by the authorization
    code = found.group(1)
    ledger = api.call("GET", f"/certificates/{code}/operations", "admin").json()["items"]
    captures = [row for row in ledger if row["authorizationId"] and row["amount"] == "-250.00"]
    assert len(captures) == 1 and captures[0]["kind"] == "REDEEM"
    assert sum(Decimal(row["amount"]) for row in ledger) == Decimal(api.certificate(code)["remainingBalance"])
    # and the summary states each figure beside its bound, with its verdict
    summary = out[out.index("Summary (each figure beside its bound):"):]
    assert re.search(r"Steps that did what they said: (\d+) of \1 \(bound: all\) -> within bounds", summary)
    assert re.search(r"median \d+ ms, p95 \d+ ms, max \d+ ms \(bound: each under 200 ms, contract section 4\) "
                     r"-> (within bounds|OUT OF BOUNDS: \d+ of \d+ events took longer than 200 ms)", summary)
    assert "sequence gaps or repeats: 0 (bound: 0) -> within bounds" in summary
    assert "DLQ: 1 new entries for the 1 broken message sent (bound: exactly 1) -> within bounds" in summary
    # and it printed no CVC: the only CVCs it could know are the SMS's (and the printed cards', made up)
    sms = [json.loads(line) for line in Path(PROCS_ENV["SMS_LOG_PATH"]).read_text().splitlines()]
    cvcs = {m.group(1) for s in sms if (m := re.search(r"CVC (\d+)", s["text"]))}
    assert cvcs and not any(re.search(rf"(?<![0-9]){c}(?![0-9])", out + demo.stderr) for c in cvcs)
