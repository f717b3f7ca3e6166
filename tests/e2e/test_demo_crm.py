"""`make demo`'s player under ``NOTIFY_VIA=crm``: CRM fetches each CVC once through ``GET /cvc``,
the OnlineStore authorization uses the one CRM sent the buyer, and the capture is in the ledger.
(``test_channel_tools.py`` plays it under ``NOTIFY_VIA=sms``.)"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]
ROOT = Path(__file__).resolve().parents[2]
PROCS_ENV = {"NOTIFY_VIA": "crm"}


def test_the_demo_under_crm_authorizes_with_the_cvc_crm_fetched(procs, api):
    # given the processes leaving the CVC to CRM; when the demo plays the channels against them
    demo = subprocess.run([sys.executable, "-m", "workers.demo"], cwd=ROOT, env=procs.env,
                          capture_output=True, text=True, timeout=400)
    out = demo.stdout
    # then CRM fetched the CVCs and reported them delivered, and the authorization was captured
    assert demo.returncode == 0 and "FAIL" not in out, out[-4000:] + demo.stderr[-2000:]
    assert "CRM: fetches each CVC once (NOTIFY_VIA=crm)" in out
    assert "ok    8 of 8 CVC notifications sent" in out
    code = re.search(r"ok +(\S+): 250\.00 captured, the ledger shows it", out).group(1)
    ledger = api.call("GET", f"/certificates/{code}/operations", "admin").json()["items"]
    assert [r["kind"] for r in ledger if r["authorizationId"] and r["amount"] == "-250.00"] == ["REDEEM"]
    # and each CVC was disclosed once: a second fetch is refused
    again = api.call("GET", f"/certificates/{code}/cvc", "crm")
    assert again.status_code == 409 and again.json()["code"] in ("CVC_ALREADY_DISCLOSED", "NO_NOTIFICATION_PENDING")
