"""The OpenAPI document says what the API does: schemathesis' own CLI, run as a channel team
would run it, with every check, positive and negative data, and the stateful phase following
the document's links, against the running processes. It must find nothing.

``make test`` bounds the examples per operation (``SCHEMATHESIS_EXAMPLES``, default 15); ``make
chaos`` runs it with schemathesis' default of 100.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import uid

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("openapi-fuzz")]


def test_schemathesis_finds_nothing(procs, api):
    from api.auth import SCOPES, issue_token

    # given a pool to reserve from, and a backend token with every scope
    api.load([uid("ST").upper() for _ in range(50)], "1500.00")
    token = issue_token("schemathesis", " ".join(SCOPES))
    examples = os.environ.get("SCHEMATHESIS_EXAMPLES", "15")
    # when schemathesis runs every phase with every check
    run = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "--config-file", "tests/schemathesis.toml",
         "run", procs.url + "/openapi.json", "--checks", "all", "--mode", "all",
         "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", examples,
         "--generation-deterministic", "--no-color", "--report-dir", str(procs.logdir / "schemathesis")],
        cwd=ROOT, env={**os.environ, "GCP_TOKEN": token}, capture_output=True, text=True,
        timeout=int(os.environ.get("SCHEMATHESIS_TIMEOUT_S", "600")))
    # then it found nothing, and the stateful phase ran
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "✅ Stateful" in run.stdout, run.stdout[-3000:]
    tried = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert tried and tried.group(1) == tried.group(2) and int(tried.group(1)) > 500, run.stdout[-3000:]
