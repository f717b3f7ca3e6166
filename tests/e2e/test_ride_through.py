"""Riding through outages, with the Procfile's processes running on servers of their own:
PostgreSQL restarted as by a crash (``pg_ctl stop -m immediate``), Redis restarted, the broker
frozen for longer than the consumer session timeout, each in the middle of a burst of sales and
authorize/capture calls. Afterwards every process is still alive, the web answered 503 (never a
500, never a hang) while the part was away, ready came back by itself, and every accepted input
had its effect exactly once, with no sequence gap.

The channel behaves as the contract asks a channel to: a 503 is retried with the same
Idempotency-Key, so every logical call is accepted exactly once in the end.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from tests.e2e import flow
from tests.e2e.conftest import E2E_ENV, ROOT, Api, Procs, wait_until
from tests.helpers import uid, unique_code, unique_currency

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("ride-through")]
D = Decimal
PROCESSES = ("web", "worker", "pump", "relay", "scheduler", "bi")
#: Sales per burst, and authorize/capture pairs per burst.
SALES, CAPTURES = 24, 12


class Own:
    """The servers and processes of this module, and a channel's view of them."""

    def __init__(self, stack, procs: Procs, api: Api):
        self.stack, self.procs, self.api = stack, procs, api
        self.statuses: Counter = Counter()
        self.http_errors: list[str] = []

    def call(self, method: str, path: str, who: str, body: dict | None = None) -> requests.Response:
        """A channel's call: retried with the same Idempotency-Key while the answer is 503."""
        key = "it-" + uuid.uuid4().hex
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, f"{method} {path} still refused after 60 s"
            try:
                resp = self.api.call(method, path, who, json=body or {}, headers={"Idempotency-Key": key})
            except requests.RequestException as exc:  # the web must never be down
                self.http_errors.append(f"{method} {path}: {exc}")
                time.sleep(0.2)
                continue
            self.statuses[resp.status_code] += 1
            if resp.status_code == 503:
                assert resp.headers.get("Retry-After"), resp.headers
                assert resp.json()["code"] in ("DEPENDENCY_UNAVAILABLE", "STATEMENT_TIMEOUT"), resp.text
                time.sleep(0.1)
                continue
            assert resp.status_code < 500, resp.text
            return resp

    def db(self):
        import psycopg2

        return psycopg2.connect(self.stack.database_url)


@pytest.fixture(scope="module")
def own(stack):
    """Servers of this module only (restarting the run's shared PostgreSQL would break every
    other test), the Procfile's processes on them, and this test process pointed at them."""
    from config import reset_settings
    from devstack import EmbeddedStack, free_port
    from models.store.db import init_db

    root = Path(tempfile.mkdtemp(prefix="gcp-ride-"))
    servers = EmbeddedStack(root, database="gcp")
    # durable commits: the run's throwaway cluster has synchronous_commit off, and a crash then
    # loses commits already acknowledged (and published), as it would in production
    fast = os.environ.pop("GCP_PG_FAST", None)
    urls = servers.start()
    saved = {k: os.environ.get(k) for k in urls}
    os.environ.update(urls)
    reset_settings()
    init_db(urls["DATABASE_URL"])
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(E2E_ENV, PORT=str(free_port()), BI_METRICS_PORT="0", HEARTBEAT_INTERVAL_MS="1000",
               PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    subprocess.run([sys.executable, "app.py", "migrate"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    logdir = root / "logs"
    logdir.mkdir()
    procs = Procs(env, logdir)
    try:
        for name in PROCESSES:
            procs.start(name)
        procs.wait_web()
        wait_until(lambda: requests.get(procs.url + "/health/ready", timeout=3).json()["processes"]
                   .get("bi", {}).get("status") == "ok", 60, "every process beating")
        yield Own(servers, procs, Api(procs.url))
        dead = procs.dead()
        assert not dead, f"a process died: {dead}\n" + "\n".join(procs.log_tail(n) for n in dead)
    finally:
        procs.stop_all()
        servers.stop()
        if fast is not None:
            os.environ["GCP_PG_FAST"] = fast
        for key, value in saved.items():
            os.environ[key] = value
        reset_settings()
        init_db(os.environ["DATABASE_URL"])
        shutil.rmtree(root, ignore_errors=True)


class Watch(threading.Thread):
    """Polls /health/ready every 100 ms: when it went down and when it came back."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop = url + "/health/ready", threading.Event()
        self.samples: list[tuple[float, int, list]] = []

    def run(self):
        while not self.stop.is_set():
            try:
                resp = requests.get(self.url, timeout=5)
                self.samples.append((time.monotonic(), resp.status_code, resp.json().get("failing", [])))
            except requests.RequestException as exc:
                self.samples.append((time.monotonic(), 0, [str(exc)]))
            time.sleep(0.1)

    def ready_again_after(self, moment: float) -> float | None:
        for at, status, _ in self.samples:
            if at >= moment and status == 200:
                return at - moment
        return None

    def failing(self) -> set[str]:
        return {part for _, status, parts in self.samples if status != 200 for part in parts}


def burst(own: Own, fault, fault_after: int) -> dict:
    """Sales (reserve over HTTP, order and payment on Kafka) and authorize/capture calls, with
    ``fault()`` run in the middle. Returns what the checks need."""
    currency = unique_currency()
    pub = flow.Publisher()
    stream = flow.TopicReader()
    codes = [unique_code() for _ in range(SALES)]
    own.call("POST", "/batches", "loader", {"batchId": uid("b-"), "currency": currency,
                                           "certificates": [{"code": c, "nominal": "1000.00"} for c in codes]})
    # certificates to spend (a pool of their own), sold before the fault; the CVC as CRM fetches it
    spend, spend_currency = [], unique_currency()
    own.call("POST", "/batches", "loader", {"batchId": uid("b-"), "currency": spend_currency, "certificates": [
        {"code": unique_code(), "nominal": "1000.00"} for _ in range(3)]})
    for _ in range(3):
        order_id = uid("order-")
        code = own.call("POST", "/certificates/next", "ONLINE_STORE", {
            "channel": "ONLINE_STORE", "orderId": order_id, "lineId": "1", "nominal": "1000.00",
            "currency": spend_currency}).json()["code"]
        spend.append(code)
        pub.send("order", flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00",
                                     currency=spend_currency))
        pub.send("payment", flow.payment(order_id, "1000.00", currency=spend_currency))
    stream.wait_for(lambda r: all("issue" in [e["eventType"] for e in r.for_key(c)] for c in spend), 60,
                    "the certificates to spend issued")
    cvcs = {c: own.call("GET", f"/certificates/{c}/cvc", "crm").json()["cvc"] for c in spend}

    captured: Counter = Counter()
    sold: dict[str, str] = {}
    timing: dict[str, float] = {}
    fault_thread = threading.Thread(target=lambda: timing.update(fault() or {}), daemon=True)

    failures: list[str] = []

    def play():
        try:
            sell_and_spend()
        except BaseException as exc:  # surfaced by the checks
            import traceback

            failures.append(traceback.format_exc())

    def sell_and_spend():
        for i in range(SALES):
            if i == fault_after:
                timing["fault_started"] = time.monotonic()
                fault_thread.start()
            order_id = uid("order-")
            code = own.call("POST", "/certificates/next", "ONLINE_STORE", {
                "channel": "ONLINE_STORE", "orderId": order_id, "lineId": "1", "nominal": "1000.00",
                "currency": currency}).json()["code"]
            sold[code] = order_id
            pub.send("order", flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00",
                                         currency=currency), flush=False)
            pub.send("payment", flow.payment(order_id, "1000.00", currency=currency), flush=False)
            pub.producer.poll(0)
            if i < CAPTURES:
                target = spend[i % len(spend)]
                auth = own.call("POST", f"/certificates/{target}/authorizations", "ONLINE_STORE", {
                    "channel": "ONLINE_STORE", "orderId": uid("web-"), "amount": "10.00", "cvc": cvcs[target]})
                assert auth.status_code == 201, auth.text
                done = own.call("POST", f"/authorizations/{auth.json()['authorizationId']}/capture",
                                "ONLINE_STORE", {})
                assert done.status_code == 200, done.text
                captured[target] += 1
            time.sleep(0.05)
        pub.producer.flush(120)

    watch = Watch(own.procs.url)
    watch.start()
    player = threading.Thread(target=play, daemon=True)
    player.start()
    first_issue_seen: dict[str, float] = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # read the stream while the burst and the fault run
        stream.poll(0.2)
        now = time.monotonic()
        for code in sold:
            if code not in first_issue_seen and "issue" in [e["eventType"] for e in stream.for_key(code)]:
                first_issue_seen[code] = now
        if not player.is_alive() and (len(first_issue_seen) == len(sold) or failures):
            break
    player.join(5)
    fault_thread.join(60)
    stream.poll(2.0)  # anything doubled would show up now
    time.sleep(1.0)
    watch.stop.set()
    watch.join(5)
    assert not failures, failures[0] + "\n" + own.procs.log_tail("web")
    result = dict(currency=currency, stream=stream, sold=sold, spend=spend, captured=captured,
                  watch=watch, timing=timing, first_issue_seen=first_issue_seen)
    stream.close()
    return result


def check_exactly_once(own: Own, r: dict) -> None:
    assert not own.http_errors, own.http_errors[:5]
    assert own.statuses[500] == 0, own.statuses
    assert not own.procs.dead(), {n: own.procs.log_tail(n) for n in own.procs.dead()}
    stream, sold = r["stream"], r["sold"]
    assert len(sold) == SALES and len(r["first_issue_seen"]) == SALES, (len(sold), len(r["first_issue_seen"]))
    with own.db() as conn, conn.cursor() as cur:
        for code in list(sold) + r["spend"]:
            events = stream.for_key(code)
            types = [e["eventType"] for e in events]
            assert types.count("issue") <= 1, (code, types)
            assert Counter(e["eventId"] for e in events).most_common(1)[0][1] == 1, (code, types)
            cur.execute("SELECT g.status, g.remaining_balance, COALESCE(SUM(o.amount), 0) FROM gift_certificate g"
                        " LEFT JOIN gift_certificate_operation o ON o.certificate_id = g.id WHERE g.code = %s"
                        " GROUP BY g.status, g.remaining_balance", (code,))
            status, balance, ledger = cur.fetchone()
            assert balance == ledger, (code, balance, ledger)
            if code in sold:
                assert types.count("issue") == 1 and (status, balance) == ("ISSUED", D("1000.00")), (code, types)
                # the events read from the stream since the burst began follow on, gapless
                flow.assert_sequence(events)
        for code in r["spend"]:
            n = r["captured"][code]
            types = [e["eventType"] for e in stream.for_key(code)]
            assert types.count("authorization.captured") == n, (code, n, types)
            cur.execute("SELECT remaining_balance FROM gift_certificate WHERE code = %s", (code,))
            assert cur.fetchone()[0] == D("1000.00") - D("10.00") * n
        cur.execute("SELECT status, count(*) FROM inbox_message GROUP BY status")
        inbox = dict(cur.fetchall())
        assert set(inbox) == {"DONE"}, inbox
        cur.execute("SELECT count(*) FROM outbox_event WHERE published_at IS NULL")
        assert cur.fetchone()[0] == 0
    # every event of the burst is valid by the stream schema
    flow.assert_valid_stream([e for c in list(sold) + r["spend"] for e in stream.for_key(c)])


def report(what: str, own: Own, r: dict, back_key: str) -> None:
    back = r["timing"].get(back_key)
    ready = r["watch"].ready_again_after(back) if back else None
    after = sorted(t for t in r["first_issue_seen"].values() if back and t >= back)
    first_issue = after[0] - back if after else None
    print(f"\n[ride-through] {what}: refused with 503 {own.statuses[503]} times, "
          f"ready {ready:.2f} s after it came back, first issue {first_issue:.2f} s after; "
          f"ready failed on {sorted(r['watch'].failing())}", flush=True)
    assert ready is not None and ready < 10, ready


def test_a_postgresql_restart_in_a_burst_is_ridden_through(own):
    own.statuses.clear()

    def restart():
        time.sleep(0.3)
        own.stack._pg().pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=own.stack.pgdata,
                               user=own.stack._pg_user, timeout=60)
        down = time.monotonic()
        time.sleep(2.0)
        own.stack.start_postgres()
        return {"down": down, "back": time.monotonic()}

    r = burst(own, restart, fault_after=SALES // 3)
    check_exactly_once(own, r)
    assert own.statuses[503] > 0, "the outage was never seen by the web"
    assert "postgres" in r["watch"].failing()
    for name in ("pump", "relay", "scheduler", "bi"):  # each logged the outage once, not per attempt
        # (bi says it is back at its next batch, which may come a moment after the burst's end)
        wait_until(lambda: "postgres reachable again" in own.procs.log_tail(name, 200_000), 30,
                   f"{name} logging that postgres is reachable again")
        log = own.procs.log_tail(name, 200_000)
        assert log.count("postgres unreachable") == 1 and "postgres reachable again" in log, (name, log[-3000:])
    report("PostgreSQL restart (immediate, 2 s down)", own, r, "back")


def test_a_redis_restart_in_a_burst_is_ridden_through(own):
    own.statuses.clear()

    def restart():
        time.sleep(0.3)
        own.stack.restart_redis(down_for=2.0)
        return {"back": time.monotonic()}

    r = burst(own, restart, fault_after=SALES // 3)
    check_exactly_once(own, r)
    assert "redis" in r["watch"].failing()
    report("Redis restart (2 s down)", own, r, "back")


def test_a_broker_pause_longer_than_the_session_timeout_is_ridden_through(own):
    own.statuses.clear()

    def pause():
        time.sleep(0.3)
        own.stack.pause_kafka(8.0)  # session.timeout.ms is 6000
        return {"back": time.monotonic()}

    r = burst(own, pause, fault_after=SALES // 3)
    check_exactly_once(own, r)
    assert "kafka" in r["watch"].failing()
    report("Kafka broker frozen 8 s", own, r, "back")
