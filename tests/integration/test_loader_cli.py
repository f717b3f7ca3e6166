"""The loader end to end: `python -m loader` against the service over real HTTP (a threaded
server on a free port), writing into real PostgreSQL. A clean batch, every kind of bad row, a
dry run that writes nothing, a repeated load, and interrupted loads resumed (a test hook that
stops after N chunks, SIGTERM, and SIGKILL of the loader process)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from api.auth import issue_token
from app import create_app
from config import get_settings
from devstack import free_port
from loader import client as loading
from loader import codes, reader
from loader.__main__ import main, parse_expires
from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import CertificateBatch, GiftCertificate
from tests.helpers import load, uid, unique_currency

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(stack):
    """The app on a real HTTP server (threads), as the loader sees it."""
    port = free_port()
    httpd = make_server("127.0.0.1", port, create_app(get_settings()), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()


@pytest.fixture
def token():
    return issue_token(uid("loader-"), "batches:write")


def run(*args) -> int:
    return main([str(a) for a in args])


def load_cmd(server, token, path, *extra):
    report = path.with_name(path.name + f".{uid()}.json")
    code = run("load", path, "--url", server, "--token", token, "--report", report, "--no-progress", *extra)
    return code, json.loads(report.read_text())


def in_db(batch_id):
    with db.connection_context():
        return GiftCertificate.select().where(GiftCertificate.batch == batch_id).count()


def settled(batch_id, quiet=0.5):
    """The batch's row count once it stopped moving for ``quiet`` seconds."""
    last, since = in_db(batch_id), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.05)
        now = in_db(batch_id)
        if now != last:
            last, since = now, time.monotonic()
    return last


def good(body: str) -> str:
    return body + codes.check_char(body)


def test_a_clean_batch_is_generated_and_loaded(server, token, tmp_path, capsys):
    # given 1,200 generated codes of 500.00 that expire, in a currency of their own
    path, currency = tmp_path / "clean.csv", unique_currency()
    assert run("generate", "--count", 1200, "--out", path, "--nominal", "500.00",
               "--expires", "2031-12-31", "--prefix", "XMAS-") == 0
    # when loaded in chunks of 500
    code, report = load_cmd(server, token, path, "--currency", currency, "--chunk-size", 500)
    # then exit 0, every row loaded once, the batch recorded, the pool shows them
    assert code == 0, report
    assert report["counts"] == {"rows": 1200, "valid": 1200, "accepted": 1200, "alreadyLoaded": 0,
                                "rejected": 0, "notSent": 0, "loaded": 1200}
    assert report["complete"] and report["chunks"] == 3 and report["rejected"] == []
    assert report["batchId"].startswith("file-") and report["format"] == "csv"
    assert in_db(report["batchId"]) == 1200
    with db.connection_context():
        batch = CertificateBatch.get(CertificateBatch.batch_id == report["batchId"])
        row = GiftCertificate.get(GiftCertificate.batch == report["batchId"])
    assert batch.accepted == 1200 and batch.currency.strip() == currency
    assert row.code.startswith("XMAS-") and str(row.nominal) == "500.00"
    assert row.batch_expires_at.isoformat() == "2031-12-31T23:59:59+00:00"
    assert "loaded 1200 of 1200 rows" in capsys.readouterr().out


def test_a_jsonl_open_value_physical_batch(server, token, tmp_path):
    # given 40 open-value codes in JSON Lines
    path = tmp_path / "cards.jsonl"
    assert run("generate", "--count", 40, "--out", path, "--with-cvc") == 0
    assert json.loads(path.read_text().splitlines()[0]).keys() == {"code", "cvc"}
    # when loaded as PHYSICAL cards
    code, report = load_cmd(server, token, path, "--kind", "PHYSICAL", "--currency", unique_currency())
    # then they are open-value PHYSICAL codes in the pool
    assert code == 0 and report["counts"]["accepted"] == 40 and report["format"] == "jsonl"
    with db.connection_context():
        kinds = {(r.kind, r.open_value) for r in GiftCertificate.select()
                 .where(GiftCertificate.batch == report["batchId"])}
    assert kinds == {("PHYSICAL", True)}
    # and each keeps only the keyed hash of its printed CVC
    from models.store import cvc as cvc_secret

    printed = json.loads(path.read_text().splitlines()[0])
    with db.connection_context():
        row = GiftCertificate.get(GiftCertificate.code == printed["code"])
    assert row.cvc_encrypted is None and cvc_secret.matches(row.code, printed["cvc"], row.cvc_hash, row.cvc_key_id)
    # and a physical file without CVCs is refused row by row, before anything is sent
    bare = tmp_path / "bare.jsonl"
    run("generate", "--count", 3, "--out", bare)
    code, report = load_cmd(server, token, bare, "--kind", "PHYSICAL", "--dry-run")
    assert report["counts"]["accepted"] == 0 and {r["reason"] for r in report["rejected"]} == {"INVALID_CVC"}


def test_every_kind_of_bad_row_is_reported_with_its_line(server, token, tmp_path):
    # given a code (with a good check character) loaded by another batch, and a file with one
    # of each problem
    taken = good(uid("GCTAKEN").upper())
    with db.connection_context():
        messagebus.handle(commands.LoadBatch(uid("other-"), "ELECTRONIC", "RUB", ({"code": taken, "nominal": None},)))
    ok1, ok2 = good(uid("GCOK").upper()), good(uid("GCOP").upper())
    lines = [
        "code,nominal,expiresAt",
        f"{ok1},500.00,2031-01-01T00:00:00Z",   # 2 loaded
        f"{ok2},,",                              # 3 loaded (open value)
        "lower-case-1,500.00,",                  # 4 INVALID_CODE
        f"{good('GCWRONG1')[:-1]}#,500.00,".replace("#", "0" if good("GCWRONG1")[-1] != "0" else "1"),
        f"{good(uid('GCN').upper())},500,",      # 6 INVALID_NOMINAL
        f"{good(uid('GCE').upper())},,31.12.2031",  # 7 INVALID_EXPIRES_AT
        f"{good(uid('GCX').upper())},,2020-01-01T00:00:00Z",  # 8 EXPIRED
        f"{ok1},500.00,",                        # 9 DUPLICATE_IN_FILE (line 2)
        f"{taken},500.00,",                      # 10 DUPLICATE_CODE (the service's)
        "A,B,C,D",                               # 11 INVALID_ROW
        ",500.00,",                              # 12 INVALID_CODE (missing)
    ]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    # when loaded
    code, report = load_cmd(server, token, path, "--currency", "RUB")
    # then exit 1 and each bad row is in the report with its line and reason
    assert code == 1
    got = [(r["line"], r["reason"]) for r in report["rejected"]]
    assert got == [(4, "INVALID_CODE"), (5, "INVALID_CHECK_DIGIT"), (6, "INVALID_NOMINAL"),
                   (7, "INVALID_EXPIRES_AT"), (8, "EXPIRED"), (9, "DUPLICATE_IN_FILE"),
                   (10, "DUPLICATE_CODE"), (11, "INVALID_ROW"), (12, "INVALID_CODE")]
    assert report["rejected"][5]["message"] == "the same code as line 2"
    assert report["rejected"][6] == {"line": 10, "code": taken, "reason": "DUPLICATE_CODE",
                                     "message": "the code was already loaded by another batch"}
    assert report["counts"]["accepted"] == 2 and report["counts"]["rows"] == 11
    # when the same file is loaded without the check digit
    code, report = load_cmd(server, token, path, "--currency", "RUB", "--no-check-digit")
    # then the mistyped one passes now, lines 2 and 3 are already loaded (the same file: the
    # same batch), and the rest is refused as before
    assert code == 1
    assert (report["counts"]["accepted"], report["counts"]["alreadyLoaded"]) == (1, 2)
    assert [r["line"] for r in report["rejected"]] == [4, 6, 7, 8, 9, 10, 11, 12]


def test_a_dry_run_checks_against_the_service_and_writes_nothing(server, token, tmp_path):
    # given a generated file, and a second one that also holds a code already in the pool
    currency = unique_currency()
    path = tmp_path / "dry.csv"
    run("generate", "--count", 300, "--out", path, "--nominal", "100.00")
    taken = load(1, "100.00")[0]
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(path.read_text() + f"{taken},100.00,\n")
    # when both are dry-run
    code, report = load_cmd(server, token, path, "--dry-run", "--currency", currency)
    code2, report2 = load_cmd(server, token, mixed, "--dry-run", "--currency", currency,
                              "--no-check-digit")
    # then the first would load entirely (exit 0), the second not (exit 1, the taken code)
    assert code == 0 and report["dryRun"] and report["counts"]["accepted"] == 300
    assert code2 == 1 and [r["reason"] for r in report2["rejected"]] == ["DUPLICATE_CODE"]
    assert report2["rejected"][0]["line"] == 302
    # and nothing was written: no batch, no codes
    for r in (report, report2):
        assert in_db(r["batchId"]) == 0
        with db.connection_context():
            assert CertificateBatch.get_or_none(CertificateBatch.batch_id == r["batchId"]) is None


def test_loading_the_same_file_twice_adds_nothing(server, token, tmp_path):
    # given a loaded file
    path, currency = tmp_path / "twice.csv", unique_currency()
    run("generate", "--count", 700, "--out", path, "--nominal", "250.00")
    first_code, first = load_cmd(server, token, path, "--currency", currency, "--chunk-size", 300)
    # when it is loaded again
    code, report = load_cmd(server, token, path, "--currency", currency, "--chunk-size", 300)
    # then exit 0, nothing new, every row already loaded, the table and batch unchanged
    assert first_code == code == 0 and report["batchId"] == first["batchId"]
    assert (report["counts"]["accepted"], report["counts"]["alreadyLoaded"]) == (0, 700)
    assert in_db(report["batchId"]) == 700
    with db.connection_context():
        assert CertificateBatch.get(CertificateBatch.batch_id == report["batchId"]).accepted == 700


def test_a_load_stopped_after_some_chunks_resumes_without_duplicates(server, token, tmp_path):
    # given a 1,000-row file; when the load stops after 3 chunks of 100 (the test hook)
    path, currency = tmp_path / "cut.csv", unique_currency()
    run("generate", "--count", 1000, "--out", path, "--nominal", "100.00")
    code, report = load_cmd(server, token, path, "--currency", currency, "--chunk-size", 100,
                            "--max-chunks", 3)
    # then exit 3, the report says incomplete, 300 rows are in
    assert code == 3 and not report["complete"] and "resume" in report["error"]
    assert report["counts"]["accepted"] == 300 and report["counts"]["notSent"] == 100
    assert in_db(report["batchId"]) == 300
    # when the same command runs again
    code, report = load_cmd(server, token, path, "--currency", currency, "--chunk-size", 100)
    # then it completes: 700 new, 300 already there, 1,000 distinct codes in the table
    assert code == 0 and report["complete"]
    assert (report["counts"]["accepted"], report["counts"]["alreadyLoaded"]) == (700, 300)
    assert in_db(report["batchId"]) == 1000


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_loader_process_cut_in_the_middle_resumes(server, token, tmp_path, signum):
    # given a 20,000-row file loading in a separate process, 100 rows a request
    path, currency = tmp_path / "killed.csv", unique_currency()
    run("generate", "--count", 20_000, "--out", path, "--nominal", "100.00")
    report_path = tmp_path / "killed.json"
    proc = subprocess.Popen([sys.executable, "-m", "loader", "load", str(path), "--url", server,
                             "--currency", currency, "--chunk-size", "100", "--workers", "1",
                             "--report", str(report_path), "--no-progress"],
                            cwd=ROOT, env={**os.environ, "GCP_TOKEN": token},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # when the process is signalled once some chunks are in
    batch_id = reader.batch_id_for(reader.fingerprint(path)[0])
    deadline = time.monotonic() + 30
    while in_db(batch_id) < 300 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    cut = settled(batch_id)  # a request in flight when the loader died may still commit
    assert 0 < cut < 20_000, (out, err)
    if signum == signal.SIGTERM:  # a graceful stop writes the report and says so
        assert proc.returncode == 3, err
        report = json.loads(report_path.read_text())
        assert not report["complete"] and report["counts"]["accepted"] == cut
    else:
        assert proc.returncode == -signal.SIGKILL
    # when the same command runs again
    code, report = load_cmd(server, token, path, "--currency", currency, "--chunk-size", 100)
    # then it completes without duplicates
    assert code == 0
    assert report["counts"]["accepted"] + report["counts"]["alreadyLoaded"] == 20_000
    assert report["counts"]["alreadyLoaded"] == cut and in_db(batch_id) == 20_000


def test_a_chunk_too_large_for_the_service_is_split(server, token, tmp_path):
    # given rows whose chunk of 15,000 is beyond the service's 1 MiB body limit
    path, currency = tmp_path / "big.csv", unique_currency()
    run("generate", "--count", 15_000, "--out", path, "--nominal", "100.00", "--expires", "2031-01-01")
    # when sent with a large chunk and body budget
    code, report = load_cmd(server, token, path, "--currency", currency, "--chunk-size", 15_000,
                            "--max-body-bytes", 5_000_000)
    # then the 413 halves are sent instead and everything loads
    assert code == 0 and report["counts"]["accepted"] == 15_000
    assert in_db(report["batchId"]) == 15_000


def test_refusals_stop_the_load_with_exit_2(server, token, tmp_path):
    path = tmp_path / "x.csv"
    run("generate", "--count", 5, "--out", path)
    # a bad token: 401, with a hint in the report
    code, report = load_cmd(server, "not-a-token", path)
    assert code == 2 and "401" in report["error"] and "app.py token" in report["error"]
    # a token without batches:write: 403
    code, report = load_cmd(server, issue_token("reader", "certificates:read"), path)
    assert code == 2 and "403" in report["error"]
    # an existing batch id of another kind: the service's 409
    batch = uid("k-")
    assert load_cmd(server, token, path, "--batch-id", batch)[0] == 0
    cards = tmp_path / "cards.csv"
    run("generate", "--count", 5, "--out", cards, "--with-cvc")
    code, report = load_cmd(server, token, cards, "--batch-id", batch, "--kind", "PHYSICAL")
    assert code == 2 and "BATCH_MISMATCH" in report["error"]
    # a header the loader does not know
    bad = tmp_path / "header.csv"
    bad.write_text("kode,nominal\nX,1.00\n")
    code, report = load_cmd(server, token, bad)
    assert code == 2 and "header" in report["error"]
    # no token at all, an odd file name, a bad batch id
    assert run("load", path, "--url", server, "--no-progress") == 2
    odd = tmp_path / "codes.dat"
    odd.write_text("code\n")
    assert load_cmd(server, token, odd)[0] == 2
    assert run("load", path, "--url", server, "--token", token, "--batch-id", "x" * 65) == 2


def test_generate_refuses_bad_options(tmp_path):
    out = tmp_path / "g.csv"
    assert run("generate", "--count", 1, "--out", out, "--prefix", "bad prefix") == 2
    assert run("generate", "--count", 1, "--out", out, "--nominal", "12") == 2
    assert run("generate", "--count", 1, "--out", out, "--expires", "2001-01-01") == 2
    assert run("generate", "--count", 1, "--out", out, "--expires", "soon") == 2
    assert run("generate", "--count", 1, "--out", tmp_path / "g.xml") == 2
    assert run("generate", "--count", 1, "--out", out) == 0
    assert run("generate", "--count", 1, "--out", out) == 2  # exists
    assert run("generate", "--count", 1, "--out", out, "--force") == 0
    assert run("nonsense") == 2
    assert parse_expires("2031-01-01T10:00:00+02:00") == "2031-01-01T08:00:00Z"


class _Flaky(BaseHTTPRequestHandler):
    """429 then 503 then a success, to exercise the retries."""

    answers: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = self.answers.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


def test_the_client_retries_busy_answers_and_gives_up_on_dead_services(tmp_path):
    # given a service answering 429, 503, then 201
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Flaky.answers = [(429, {}), (503, {"code": "UNAVAILABLE"}),
                      (201, {"accepted": 1, "alreadyLoaded": 0, "rejected": []})]
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    client = loading.BatchClient(url, "t", attempts=3, backoff=0.01)
    # when a chunk is posted; then it gets through on the third attempt
    assert client.request("POST", "/batches", b"{}") == (201, {"accepted": 1, "alreadyLoaded": 0,
                                                               "rejected": []})
    # and a service that keeps failing, or is not there, stops the load
    _Flaky.answers = [(500, {"code": "INTERNAL_ERROR", "message": "boom"})] * 2
    with pytest.raises(loading.LoadError, match="500"):
        loading.BatchClient(url, "t", attempts=2, backoff=0.01).request("POST", "/batches", b"{}")
    httpd.shutdown()
    dead = loading.BatchClient(f"http://127.0.0.1:{free_port()}", "t", attempts=2, backoff=0.01)
    with pytest.raises(loading.LoadError, match="ConnectionError"):
        dead.pool()
