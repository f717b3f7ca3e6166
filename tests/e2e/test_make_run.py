"""`make run` on the embedded default: ready within 60 s, Ctrl-C leaves nothing behind,
and a second run finds its data again."""
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import psycopg2
import pytest
import requests

from devstack import free_port, java_missing

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("make-run")]
SERVER_VARS = ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")


def start(local: Path, port: int, **extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in SERVER_VARS and not k.startswith(("TOPIC_", "KAFKA_", "PYTEST", "COV_", "GCP_PG"))}
    env.update(GCP_LOCAL_DIR=str(local), PORT=str(port), WEB_CONCURRENCY="1", LOG_LEVEL="WARNING", **extra)
    path = local.parent / f"run-{time.monotonic_ns()}.log"
    proc = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=env, stdout=open(path, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = path
    return proc


def log_tail(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()[-3000:]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        assert proc.poll() is None, f"make run exited early ({proc.returncode}):\n{log_tail(proc)}"
        try:
            resp = requests.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
            if resp.status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"/health/ready not 200 within {timeout}s:\n{log_tail(proc)}")


def processes_of(local: Path, port: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            env = p.info["environ"] or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if str(local) in cmd or env.get("GCP_LOCAL_DIR") == str(local) or f":{port}" in cmd:
            found.append(p)
    return found


def ctrl_c(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    except ProcessLookupError:  # already gone
        pass
    proc.wait(60)


def count_certificates(local: Path) -> int:
    env = dict(line.split("=", 1) for line in (local / "stack.env").read_text().split())
    with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM gift_certificate")
        return cur.fetchone()[0]


def test_make_run_comes_up_stops_cleanly_and_keeps_its_data(tmp_path):
    local, port = tmp_path / "local", free_port()
    # given a fresh machine: no server URL set, no data
    proc = start(local, port)
    try:
        # when make run starts, then the service is ready within 60 s, with the demo pool loaded
        elapsed = wait_ready(port, proc)
        first_count = count_certificates(local)
        assert first_count > 0
        live = processes_of(local, port)
        assert len(live) >= 5, [p.info["cmdline"] for p in live]
    finally:
        ctrl_c(proc)
    # then Ctrl-C leaves no process behind (PostgreSQL's shutdown checkpoint may take a while on
    # a loaded 2-core machine: it once outlasted 20 s)
    deadline = time.monotonic() + 60
    while processes_of(local, port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(local, port) == []
    assert not (local / "stack.env").exists()
    # when it runs again, then it finds its data (no second demo batch)
    proc = start(local, port)
    try:
        wait_ready(port, proc)
        assert count_certificates(local) == first_count
    finally:
        ctrl_c(proc)
    print(f"ready after {elapsed:.1f}s")


@pytest.mark.skipif(java_missing() is not None, reason=str(java_missing()))
def test_make_run_on_apache_kafka(tmp_path):
    local, port = tmp_path / "local", free_port()
    # given KAFKA_EMBEDDED=apache, as the README shows it
    proc = start(local, port, KAFKA_EMBEDDED="apache")
    try:
        # when make run starts, then the service is ready (its readiness asks Kafka) on the
        # broker the stack names, with the demo pool loaded
        elapsed = wait_ready(port, proc, timeout=120)
        assert count_certificates(local) > 0
        brokers = [p for p in processes_of(local, port) if "kafka.Kafka" in " ".join(p.info["cmdline"] or [])]
        assert len(brokers) == 1
    finally:
        ctrl_c(proc)
    # and Ctrl-C stops the broker with the rest
    deadline = time.monotonic() + 30
    while processes_of(local, port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(local, port) == []
    print(f"ready on Apache Kafka after {elapsed:.1f}s")


def test_make_run_and_the_demo_send_each_sale_s_sms_and_no_log_line_holds_a_secret(tmp_path):
    """`make run` then `make demo`: each electronic sale's SMS lands in .local/sms.log (the log
    gateway) with a masked line on the console; and no line any process wrote holds a CVC, a
    secret or a full phone number."""
    import json

    from config import DEV_JWT_SECRET
    from models.store.cvc import DEV_CVC_KEY

    local, port = tmp_path / "local", free_port()
    proc = start(local, port)
    try:
        wait_ready(port, proc)
        env = {k: v for k, v in os.environ.items()
               if k not in SERVER_VARS and not k.startswith(("TOPIC_", "KAFKA_", "PYTEST", "COV_", "GCP_PG"))}
        env.update(GCP_LOCAL_DIR=str(local), PORT=str(port))
        demo = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "workers.demo"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        sms_log = local / "sms.log"
        deadline = time.monotonic() + 30
        while not sms_log.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        sent = [json.loads(line) for line in sms_log.read_text().splitlines()]
        assert sent and all("CVC" in m["text"] and m["reference"] for m in sent)
        assert len({m["reference"] for m in sent}) == len(sent)  # one SMS per request
        time.sleep(1.0)
    finally:
        ctrl_c(proc)
    console = proc.log_path.read_text(errors="replace")
    assert "SMS to +7999***" in console
    cvcs = {word.strip(",.") for m in sent for word in m["text"].split() if word.strip(",.").isdigit()
            and len(word.strip(",.")) == 6}
    phones = {m["to"] for m in sent}
    everything = console + "".join(p.read_text(errors="replace") for p in local.rglob("*.log")
                                   if p.name != "sms.log")
    import re

    for secret in cvcs | phones | {DEV_JWT_SECRET, DEV_CVC_KEY}:  # (a CVC as a number of its own)
        assert not re.search(rf"(?<![0-9]){re.escape(secret)}(?![0-9])", everything), f"a log holds {secret[:3]}…"
