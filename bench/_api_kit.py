"""The HTTP API benchmark's tools (``bench/api.py``): its settings, the gunicorn servers, the
data it fills the database with, and the wrk runner that counts each process tree's CPU."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

from bench import _proc

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_QUICK") == "1"
DURATION = float(os.environ.get("BENCH_DURATION", "3" if QUICK else "8"))
TARGETS = int(os.environ.get("BENCH_TARGETS", "400"))
CLIENTS = 64
BASE_SIZE = 10_000
BIG_SIZE = 100_000 if QUICK else 1_000_000
PAST_HOLDS = 20_000 if QUICK else 100_000
CONNS = (1, 16)
FLOOR_SERIAL_N = 300 if QUICK else 1000
WRK = shutil.which("wrk")


# ---- servers ---------------------------------------------------------------------------------

def _gunicorn(app: str, port: int, env: dict, log: Path) -> subprocess.Popen:
    import requests

    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", app],
                            cwd=ROOT, env={**env, "PORT": str(port)}, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn {app} exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health/live", timeout=1).ok:
                time.sleep(0.5)  # every worker booted
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn {app} did not answer within 60 s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# ---- data ------------------------------------------------------------------------------------

def _fill(conn, upto: int, currency: str = "RUB") -> float:
    """Bulk-add AVAILABLE certificates (one INSERT ... SELECT generate_series) until the table
    holds ``upto`` rows; returns the seconds it took (ANALYZE included)."""
    started = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), coalesce(max(id), 0) FROM gift_certificate")
        have, _ = cur.fetchone()
        if have < upto:
            batch = "bench-fill-" + uuid.uuid4().hex[:6]
            cur.execute("INSERT INTO certificate_batch (batch_id, kind, currency, loaded_by) "
                        "VALUES (%s, 'ELECTRONIC', %s, 'bench')", (batch, currency))
            cur.execute(
                "INSERT INTO gift_certificate (code, batch_id, kind, currency, open_value, nominal,"
                " remaining_balance, status, stream_sequence, cvc_failed_attempts, cvc_disclosable,"
                " created_at, updated_at)"
                " SELECT %s || lpad(g::text, 9, '0'), %s, 'ELECTRONIC', %s, false, 1000.00, 0,"
                " 'AVAILABLE', 0, 0, false, now(), now() FROM generate_series(1, %s) g",
                ("F" + uuid.uuid4().hex[:5].upper(), batch, currency, upto - have))
        conn.commit()
    old = conn.autocommit
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE gift_certificate")
        cur.execute("ANALYZE authorization_hold")
    conn.autocommit = old
    return time.perf_counter() - started


def _issue_targets(n: int) -> list[tuple[str, str, int]]:
    """``n`` issued certificates (1,000,000.00 each, so holds never run out): (code, cvc, id)."""
    from models.domain import commands
    from models.service import messagebus
    from models.store import cvc as cvc_secret
    from models.store.db import db
    from models.store.tables import GiftCertificate

    codes = [("B" + uuid.uuid4().hex[:14]).upper() for _ in range(n)]
    out = []
    with db.connection_context():
        messagebus.handle(commands.LoadBatch("bench-targets-" + uuid.uuid4().hex[:6], "ELECTRONIC", "RUB",
                                 tuple({"code": c, "nominal": Decimal("1000000.00")} for c in codes)),
                   commands.Context(actor="bench"))
        for code in codes:
            messagebus.handle(commands.Reserve("ONLINE_STORE", "bench-" + uuid.uuid4().hex[:10], "1",
                                   Decimal("1000000.00"), "RUB", code=code))
            messagebus.handle(commands.Issue(code))
        for row in GiftCertificate.select().where(GiftCertificate.code.in_(codes)):
            out.append((row.code, cvc_secret.decrypt(row.cvc_encrypted), row.id))
    return out


# ---- wrk -------------------------------------------------------------------------------------

class Runner:
    def __init__(self, tmp: Path, roots: dict[str, int]):
        self.tmp = tmp
        self.roots = roots
        self.runs: list[dict] = []

    def wrk(self, name: str, port: int, lines: list[tuple[str, str, str, str]], conns: int,
            duration: float = DURATION, once: bool = False, ids_out: Path | None = None,
            record: bool = True) -> dict:
        data = self.tmp / f"wrk-{len(self.runs)}-{conns}.tsv"
        data.write_text("".join("\t".join(x) + "\n" for x in lines))
        env = {**os.environ, "BENCH_DATA": str(data), "BENCH_RUN": uuid.uuid4().hex[:8],
               "BENCH_ONCE": "1" if once else "0"}
        if ids_out:
            env["BENCH_IDS_OUT"] = str(ids_out)
        cmd = [WRK, "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
               "-s", str(ROOT / "bench" / "_wrk.lua"), f"http://127.0.0.1:{port}"]
        before = _proc.tree_cpu(self.roots)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=duration + 60)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = _proc.tree_cpu(self.roots)
        after["wrk"] = ru1.ru_utime + ru1.ru_stime
        before["wrk"] = ru0.ru_utime + ru0.ru_stime
        line = next((x for x in out.decode().splitlines() if x.startswith("BENCHJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no result: {out.decode()[-1000:]} {err.decode()[-1000:]}")
        r = json.loads(line[len("BENCHJSON "):])
        secs = r["duration_us"] / 1e6
        ok = sum(v for k, v in r["codes"].items() if k.startswith("2"))
        cpu = _proc.delta(before, after)
        r.update(name=name, conns=conns, seconds=round(secs, 2), rps=r["requests"] / secs if secs else 0,
                 p50=r["p50_us"] / 1000, p99=r["p99_us"] / 1000, ok=ok, non2xx=r["requests"] - ok,
                 cpu_ms={k: v * 1000 / max(r["requests"], 1) for k, v in cpu.items()})
        if record:
            self.runs.append(r)
        return r
