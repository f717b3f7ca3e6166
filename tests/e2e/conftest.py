"""The Procfile's processes as real subprocesses (gunicorn, dramatiq, pump, relay, scheduler)
with this test worker's environment: its database, Redis db and topics.

Tests using ``procs`` run in one xdist group ("e2e") so the processes start once per run. The
fixture can SIGKILL and restart any of them (the crash tests) and checks at the end that none
died on its own. ``mart`` and ``burst`` add the BI mart's ``bi`` process beside them and a burst
of traffic (the ``test_bi_*.py`` modules).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg2
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
#: Settings of the e2e processes that differ from the defaults (fast sweeps and ticks).
E2E_ENV = {
    "INBOX_SWEEP_AFTER_MS": "2000",
    "SCHEDULER_INTERVAL_MS": "200",
    "WEB_CONCURRENCY": "1",
    "WEB_THREADS": "8",
    "WORKER_THREADS": "8",
    "LOG_LEVEL": "WARNING",
    "PYTHONUNBUFFERED": "1",
}


def procfile() -> dict[str, str]:
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.startswith("#"):
            out[name.strip()] = command.strip()
    return out


class Procs:
    """Starts, kills and restarts the Procfile processes."""

    def __init__(self, env: dict[str, str], logdir: Path):
        self.env = env
        self.logdir = logdir
        self.commands = procfile()
        self.running: dict[str, subprocess.Popen] = {}
        self.port = int(env["PORT"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, name: str) -> subprocess.Popen:
        """Start the Procfile's process ``name``; ``pump2`` is a second ``pump``."""
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen(["bash", "-c", "exec " + self.commands[name.rstrip("0123456789")]], cwd=ROOT, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.running[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (dramatiq forks its worker processes)."""
        proc = self.running.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def restart(self, name: str) -> None:
        self.start(name)

    def stop_all(self) -> None:
        for name in list(self.running):
            proc = self.running[name]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in list(self.running.items()):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.running.clear()

    def dead(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.running.items() if p.poll() is not None}

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def wait_web(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = self.dead()
            assert not dead, f"died: {dead}\n{self.log_tail(next(iter(dead)))}"
            try:
                if requests.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("web not ready:\n" + self.log_tail("web"))


@pytest.fixture(scope="module")
def procs(stack, request):
    """The processes for one test module (they hold the relay's and the scheduler's leadership
    and consume the topics: nothing else of this worker may run beside them), on topics and a
    consumer group of their own. A module's ``PROCS_ENV`` adds settings of its own."""
    from config import reset_settings
    from devstack import free_port
    from models.store.db import migrate
    from workers.kafka import ensure_topics

    saved = {k: os.environ[k] for k in os.environ
             if (k.startswith("TOPIC_") and k != "TOPIC_PARTITIONS") or k == "KAFKA_CONSUMER_GROUP"}
    suffix = "." + uuid.uuid4().hex[:6]
    for key, value in saved.items():
        os.environ[key] = value + suffix
    reset_settings()
    migrate()
    ensure_topics()
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(E2E_ENV, PORT=str(free_port()), PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    env.update(getattr(request.module, "PROCS_ENV", {}))
    logdir = Path(tempfile.mkdtemp(prefix="gcp-e2e-"))
    p = Procs(env, logdir)
    for name in ("web", "worker", "pump", "relay", "scheduler"):
        p.start(name)
    try:
        p.wait_web()
        yield p
        dead = p.dead()
        assert not dead, f"a process died on its own: {dead}"
        violations = verify_what_the_module_did()
        assert not violations, "verify --stream after the module:\n" + "\n".join(map(str, violations))
    finally:
        p.stop_all()
        shutil.rmtree(logdir, ignore_errors=True)
        os.environ.update(saved)
        reset_settings()


def verify_what_the_module_did(timeout: float = 30.0) -> list:
    """``verify --stream`` (workers/verify/) over what this module's processes did: the
    certificates whose history is on its stream topic, the orders and inbox rows of its input topics. (The
    database is the test worker's, shared with other modules; a key on the stream that names no
    certificate is an event a test wrote there on purpose.)"""
    from config import get_settings
    from models.store.db import db
    from workers.kafka import read_to_end
    from workers.verify import Scope, verify

    s = get_settings()
    keys = set()  # the certificates whose whole history is on this module's stream (from sequence 1:
    for m in read_to_end(s.topic_stream, timeout=timeout):  # the relay also sends other modules' backlog)
        try:
            first = m.key() and json.loads(m.value()).get("sequence") == 1
        except (ValueError, AttributeError):
            first = False
        if first:
            keys.add(m.key().decode())
    topics = [s.topic_sales_order, s.topic_payments, s.topic_clients]
    deadline = time.monotonic() + timeout
    with db.connection_context():
        codes = {r[0] for r in db.execute_sql("SELECT code FROM gift_certificate WHERE code = ANY(%s)",
                                              (sorted(keys),)).fetchall()}
        inbox = db.execute_sql("SELECT event_id, payload ->> 'orderId' FROM inbox_message WHERE topic = ANY(%s)",
                               (topics,)).fetchall()
        while db.execute_sql("SELECT 1 FROM outbox_event WHERE message_key = ANY(%s) AND published_at IS NULL"
                             " LIMIT 1", (sorted(codes),)).fetchone() and time.monotonic() < deadline:
            time.sleep(0.2)  # the relay is still publishing
    scope = Scope.of(codes=codes, orders={o for _e, o in inbox if o}, inbox={e for e, _o in inbox})
    return verify(scope=scope, stream=True, stream_timeout=timeout)


class Api:
    """HTTP calls to the running web process with channel / support / loader tokens."""

    def __init__(self, base: str):
        from api.auth import issue_token

        self.base = base
        self.tokens = {
            "ONLINE_STORE": issue_token("online-store", "certificates:reserve certificates:read certificates:redeem",
                                        "ONLINE_STORE"),
            "POS": issue_token("pos-1", "certificates:reserve certificates:read certificates:redeem", "POS"),
            "admin": issue_token("support", "certificates:admin certificates:read"),
            "loader": issue_token("loader", "batches:write certificates:read"),
            "crm": issue_token("crm", "certificates:cvc certificates:read"),
        }
        self.session = requests.Session()

    def call(self, method: str, path: str, who: str = "ONLINE_STORE", **kw) -> requests.Response:
        headers = {"Authorization": "Bearer " + self.tokens[who], **kw.pop("headers", {})}
        return self.session.request(method, self.base + path, headers=headers, timeout=10, **kw)

    def reserve(self, order_id: str, nominal: str, channel: str = "ONLINE_STORE", line_id: str = "1",
                currency: str = "RUB", code: str | None = None) -> dict:
        body = {"channel": channel, "orderId": order_id, "lineId": line_id, "nominal": nominal,
                "currency": currency}
        if code:
            body["code"] = code
        resp = self.call("POST", "/certificates/next", channel, json=body)
        assert resp.status_code in (200, 201), resp.text
        return resp.json()

    def certificate(self, code: str) -> dict:
        resp = self.call("GET", f"/certificates/{code}", "admin")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def load(self, codes: list[str], nominal: str | None, currency: str = "RUB") -> dict:
        body = {"batchId": "b-" + codes[0], "currency": currency,
                "certificates": [{"code": c, **({"nominal": nominal} if nominal else {})} for c in codes]}
        resp = self.call("POST", "/batches", "loader", json=body)
        assert resp.status_code in (200, 201), resp.text
        return resp.json()


@pytest.fixture
def stream(procs):
    """A reader of this module's GiftCertificates.Stream topic."""
    from tests.e2e import flow

    reader = flow.TopicReader()
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def api(procs):
    return Api(procs.url)


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def currency():
    """A currency of this test only: its pool is empty until the test loads codes."""
    from tests.helpers import unique_currency

    return unique_currency()


@pytest.fixture(scope="module")
def mart(procs):
    """Empty service tables, a fresh mart database, and the bi process (``tests/e2e/bikit.py``),
    for one module (``test_bi_*.py``)."""
    from models.store.db import db
    from models.store.tables import ALL_TABLES
    from tests.e2e.bikit import BiProcess

    with db.connection_context():
        db.execute_sql(f"TRUNCATE {', '.join(t._meta.table_name for t in ALL_TABLES)} RESTART IDENTITY CASCADE")
    base = urlparse(os.environ["DATABASE_URL"])
    name = "gcp_bi_e2e_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(urlunparse(base._replace(path="/postgres")))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = urlunparse(base._replace(path=f"/{name}"))
    saved = os.environ.get("BI_DATABASE_URL")
    os.environ["BI_DATABASE_URL"] = url
    bi = BiProcess(procs, url)
    bi.db = psycopg2.connect(url)
    bi.db.autocommit = True
    try:
        yield bi
    finally:
        bi.db.close()
        bi.stop()
        if saved is None:
            os.environ.pop("BI_DATABASE_URL", None)
        else:
            os.environ["BI_DATABASE_URL"] = saved
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(scope="module")
def burst(api, mart, procs):
    """The burst of ``tests/e2e/bikit.py``'s ``Burst`` played once for the module, and the mart
    caught up with it: its currency, its certificates' codes and the number of stream events."""
    from tests.e2e import flow
    from tests.e2e.bikit import Burst, wait_for_mart
    from tests.helpers import unique_currency

    reader = flow.TopicReader(from_beginning=True)
    currency = unique_currency()
    codes = Burst(api, currency).run(reader)
    reader.poll(1.0)
    total = len(reader.records)
    reader.close()
    wait_for_mart(mart, total)
    return {"currency": currency, "codes": codes, "stream_events": total}
