"""The BI mart end to end: the Procfile processes plus ``bi`` (``python -m workers.bi``) as real
subprocesses; a realistic burst through HTTP and Kafka; the mart against the service's ledger.

The service's tables are emptied at the start of this module (as ``clean_db`` does), so the
ledger holds this burst only; the mart has a database of its own (``BI_DATABASE_URL``).
"""
from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg2
import pytest
import requests

from models.store.db import db
from tests.e2e import flow
from tests.e2e.conftest import ROOT, wait_until
from tests.helpers import uid, unique_code

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]
D = Decimal
CHROMIUM = Path("/usr/bin/chromium")


def metric(url: str, name: str, **labels) -> float | None:
    """The value of one sample of ``name`` with exactly these labels (None: no such sample)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(requests.get(url, timeout=5).text):
        for sample in family.samples:
            if sample.name == name and sample.labels == {k: str(v) for k, v in labels.items()}:
                return sample.value
    return None


class BiProcess:
    def __init__(self, procs, mart_url: str):
        from devstack import free_port

        self.procs = procs
        self.port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.port}/metrics"
        procs.commands.setdefault("bi", "python -m workers.bi")
        procs.env.update(BI_DATABASE_URL=mart_url, BI_METRICS_PORT=str(self.port), BI_METRICS_HOST="127.0.0.1")
        self.start("gcp-bi-" + uuid.uuid4().hex[:6])

    def start(self, group: str) -> None:
        self.procs.env["BI_CONSUMER_GROUP"] = group
        self.procs.start("bi")
        wait_until(lambda: self._up(), 60, "bi metrics")

    def _up(self) -> bool:
        dead = self.procs.dead()
        assert not dead, f"died: {dead}\n{self.procs.log_tail('bi')}"
        try:
            return requests.get(self.metrics_url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        import signal

        if "bi" in self.procs.running:
            self.procs.kill("bi", signal.SIGTERM)

    def lag(self) -> tuple[float | None, float | None]:
        topic = "GiftCertificates.Stream"
        return (metric(self.metrics_url, "gcp_bi_lag_messages", topic=topic),
                metric(self.metrics_url, "gcp_bi_lag_seconds", topic=topic))


@pytest.fixture(scope="module")
def mart(procs):
    """Empty service tables, a fresh mart database, and the bi process."""
    from models.store.tables import ALL_TABLES

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


def q(conn, sql: str, *params) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def service(sql: str, *params) -> list[tuple]:
    with db.connection_context():
        return db.execute_sql(sql, params).fetchall()


class Burst:
    """Sales on both channels, redemptions, both refunds, a lock, a cancellation, an expiry and an
    empty pool, played like the channels do it."""

    def __init__(self, api, currency: str):
        self.api, self.currency = api, currency
        self.pub = flow.Publisher()
        self.expected: dict[str, list[str]] = {}

    def sell(self, nominal: str, channel: str) -> tuple[str, str]:
        code = unique_code("BI")
        self.api.load([code], nominal, self.currency)
        order_id = uid("order-")
        assert self.api.reserve(order_id, nominal, channel, currency=self.currency)["code"] == code
        self.pub.send("order", flow.order(order_id, [flow.gc_line(code, nominal)], nominal, channel=channel,
                                          currency=self.currency))
        self.pub.send("payment", flow.payment(order_id, nominal, channel=channel, currency=self.currency,
                                              gc={"code": code, "operation": "PURCHASE"}))
        self.expected[code] = ["reserve", "issue", "notification.requested"]
        return code, order_id

    def redeem(self, code: str, amount: str, channel: str = "POS") -> str:
        order_id = uid("order-")
        self.pub.send("order", flow.order(order_id, [flow.product_line(amount, "1")], amount, channel=channel,
                                          currency=self.currency, tenders=[flow.gc_tender(code, amount)]))
        self.pub.send("payment", flow.payment(order_id, amount, channel=channel, currency=self.currency,
                                              method="GIFT_CERTIFICATE",
                                              gc={"code": code, "operation": "REDEMPTION", "amount": amount}))
        return order_id

    def run(self, stream) -> dict:
        cur = self.currency
        a, _ = self.sell("1500.00", "ONLINE_STORE")   # partial redemption, then a refund onto it
        b, _ = self.sell("1000.00", "POS")            # full redemption
        c, c_order = self.sell("700.00", "ONLINE_STORE")  # purchase refund to the buyer
        d, _ = self.sell("1000.00", "POS")            # locked
        e, _ = self.sell("800.00", "ONLINE_STORE")    # cancelled
        f, _ = self.sell("500.00", "POS")             # expires
        for code in (a, b, c, d, e, f):
            stream.wait_for(lambda r, code=code: len(r.for_key(code)) >= 3, 30, f"sale of {code}")
        a_order = self.redeem(a, "600.00")
        self.redeem(b, "1000.00", "ONLINE_STORE")
        stream.wait_for(lambda r: len(r.for_key(a)) >= 4 and len(r.for_key(b)) >= 4, 30, "redemptions")
        self.pub.send("order", flow.order(a_order, [flow.product_line("600.00", "1")], "600.00", channel="POS",
                                          currency=cur, event_type="ORDER_REFUNDED",
                                          refund_lines=[{"lineId": "1", "amount": "200.00"}]))
        self.pub.send("payment", flow.payment(a_order, "200.00", event_type="PAYMENT_REFUNDED", channel="POS",
                                              currency=cur, method="GIFT_CERTIFICATE",
                                              gc={"code": a, "operation": "REFUND", "amount": "200.00"}))
        self.pub.send("order", flow.order(c_order, [flow.gc_line(c, "700.00")], "700.00", currency=cur,
                                          event_type="ORDER_REFUNDED", refund_lines=[{"lineId": "1", "amount": "700.00"}]))
        self.pub.send("payment", flow.payment(c_order, "700.00", event_type="PAYMENT_REFUNDED", currency=cur,
                                              gc={"code": c, "operation": "PURCHASE"}))
        assert self.api.call("POST", f"/certificates/{d}/actions/lock", "admin",
                             json={"reason": "FRAUD_SUSPECTED"}).status_code == 200
        assert self.api.call("POST", f"/certificates/{e}/actions/cancel", "admin",
                             json={"reason": "CUSTOMER_REQUEST"}).status_code == 200
        with db.connection_context():
            db.execute_sql("UPDATE gift_certificate SET expires_at = now() WHERE code = %s", (f,))
        empty = uid("order-")
        resp = self.api.call("POST", "/certificates/next", "ONLINE_STORE", json={
            "channel": "ONLINE_STORE", "orderId": empty, "lineId": "1", "nominal": "300.00", "currency": cur})
        assert resp.status_code == 409 and resp.json()["code"] == "POOL_EMPTY"
        stream.wait_for(lambda r: (r.for_key(a)[-1]["eventType"] == "refund"
                                   and r.for_key(c)[-1].get("status") == "REFUNDED"
                                   and r.for_key(d)[-1]["eventType"] == "lock"
                                   and r.for_key(e)[-1]["eventType"] == "cancel"
                                   and r.for_key(f)[-1]["eventType"] == "expire"
                                   and r.for_key(empty)), 60, "the burst's last events")
        return {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f, "blocked_order": empty}


@pytest.fixture(scope="module")
def burst(api, mart, procs):
    from tests.helpers import unique_currency

    reader = flow.TopicReader(from_beginning=True)
    currency = unique_currency()
    codes = Burst(api, currency).run(reader)
    reader.poll(1.0)
    total = len(reader.records)
    reader.close()
    wait_for_mart(mart, total)
    return {"currency": currency, "codes": codes, "stream_events": total}


def wait_for_mart(mart, total: int, timeout: float = 60) -> None:
    wait_until(lambda: q(mart.db, "SELECT count(*) FROM bi.fact_event")[0][0] >= total, timeout,
               f"{total} facts in the mart")
    wait_until(lambda: mart.lag()[0] == 0, timeout, "the mart to catch up")


def ledger_by_channel(currency: str) -> dict:
    rows = service(
        "SELECT CASE WHEN o.channel IN ('ONLINE_STORE', 'POS') THEN o.channel ELSE coalesce(g.channel, 'SYSTEM') END,"
        " o.kind, sum(o.amount), count(*) FROM gift_certificate_operation o JOIN gift_certificate g"
        " ON g.id = o.certificate_id WHERE trim(o.currency) = %s GROUP BY 1, 2", currency)
    return {(ch, kind): (D(total), n) for ch, kind, total, n in rows}


def mart_by_channel(mart, currency: str) -> dict:
    rows = q(mart.db, "SELECT channel, sum(sold_amount), sum(sold_count), sum(redeemed_amount), sum(redeemed_count),"
                      " sum(refunded_cert_amount), sum(refunded_cert_count), sum(refunded_buyer_amount),"
                      " sum(refunded_buyer_count) FROM bi.daily_snapshot WHERE currency = %s GROUP BY 1", currency)
    out = {}
    for ch, sold, ns, red, nr, rc, nrc, rb, nrb in rows:
        for kind, amount, n, sign in (("ISSUE", sold, ns, 1), ("REDEEM", red, nr, -1),
                                      ("REFUND_CREDIT", rc, nrc, 1), ("PURCHASE_REFUND", rb, nrb, -1)):
            if n:
                out[(ch, kind)] = (sign * amount, n)
    return out


def all_figures(mart) -> dict:
    return {
        "daily": q(mart.db, "SELECT * FROM bi.daily_snapshot ORDER BY day, channel, currency"),
        "certs": q(mart.db, "SELECT code, status, balance, channel, last_sequence FROM bi.certificate ORDER BY code"),
        "facts": q(mart.db, "SELECT count(*), sum(balance_delta), sum(liability_delta) FROM bi.fact_event"),
        "pool": q(mart.db, "SELECT * FROM bi.pool_daily ORDER BY 1, 2, 3"),
        "anomalies": q(mart.db, "SELECT count(*) FROM bi.anomaly"),
    }


def test_the_mart_equals_the_ledger_reconciles_survives_a_replay_and_polices_its_input(burst, mart):
    cur = burst["currency"]
    # then its figures equal the service's ledger per channel, to the kopeck
    ledger, figures = ledger_by_channel(cur), mart_by_channel(mart, cur)
    assert figures == ledger
    assert figures == {
        ("ONLINE_STORE", "ISSUE"): (D("3000.00"), 3), ("POS", "ISSUE"): (D("2500.00"), 3),
        ("POS", "REDEEM"): (D("-600.00"), 1), ("ONLINE_STORE", "REDEEM"): (D("-1000.00"), 1),
        ("POS", "REFUND_CREDIT"): (D("200.00"), 1), ("ONLINE_STORE", "PURCHASE_REFUND"): (D("-700.00"), 1)}
    day = q(mart.db, "SELECT channel, expired_count, breakage_amount, cancelled_count, cancelled_amount, locked_count,"
                     " locked_end, blocked_count, liability FROM bi.daily_snapshot WHERE currency = %s"
                     " ORDER BY channel", cur)
    liability = {ch: D(v) for ch, v in service(
        "SELECT channel, sum(remaining_balance) FROM gift_certificate WHERE trim(currency) = %s AND status IN"
        " ('ISSUED', 'PARTIALLY_REDEEMED', 'REDEEMED', 'LOCKED', 'REFUND_PENDING', 'REFUND_PENDING_DETAILS')"
        " GROUP BY 1", cur)}
    assert liability == {"ONLINE_STORE": D("1100.00"), "POS": D("1000.00")}
    assert {r[0]: r[1:] for r in day} == {
        "ONLINE_STORE": (0, D("0.00"), 1, D("800.00"), 0, 0, 1, liability["ONLINE_STORE"]),
        "POS": (1, D("500.00"), 0, D("0.00"), 1, 1, 0, liability["POS"])}
    assert q(mart.db, "SELECT level FROM bi.pool_level WHERE currency = %s AND nominal = '300.00'", cur) == [(0,)]
    # and reconcile (the command, as operators run it) finds nothing
    env = {**os.environ, "BI_DATABASE_URL": mart.procs.env["BI_DATABASE_URL"]}
    done = subprocess.run([sys.executable, "-m", "bi.cli", "reconcile"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no differences" in done.stdout
    # when the whole stream is replayed from offset 0 (a new consumer group)
    before = all_figures(mart)
    mart.stop()
    mart.start("gcp-bi-replay-" + uuid.uuid4().hex[:6])
    wait_until(lambda: (metric(mart.metrics_url, "gcp_bi_messages_total", topic="GiftCertificates.Stream",
                               outcome="duplicates") or 0) >= burst["stream_events"], 60, "the replay")
    # then no figure changed
    assert all_figures(mart) == before
    # when a schema-invalid event and a sequence gap are injected into the stream
    pub = flow.Publisher()
    stream_topic = flow.topic_of("stream")
    bad_code = unique_code("BAD")
    pub.producer.produce(stream_topic, key=bad_code.encode(), value=json.dumps(
        {"eventId": str(uuid.uuid4()), "eventType": "issue", "occurredAt": "not-a-time", "channel": "POS",
         "status": "ISSUED", "payload": {"code": bad_code}}).encode())
    gap_code = unique_code("GAP")
    pub.producer.produce(stream_topic, key=gap_code.encode(), value=json.dumps(
        {"eventId": str(uuid.uuid4()), "eventType": "lock", "occurredAt": "2026-12-01T10:00:00.000Z",
         "channel": "SYSTEM", "status": "LOCKED", "sequence": 7,
         "payload": {"code": gap_code, "status": "LOCKED", "nominal": "100.00", "remainingBalance": "100.00",
                     "currency": "XGP"}}).encode())
    pub.flush()
    # then both land in bi.anomaly, the mart goes on, and its freshness falls back to near 0
    rows = wait_until(lambda: q(mart.db, "SELECT kind, code, expected, got FROM bi.anomaly ORDER BY id"), 30,
                      "anomalies")
    wait_until(lambda: len(q(mart.db, "SELECT 1 FROM bi.anomaly")) >= 2, 30, "both anomalies")
    rows = q(mart.db, "SELECT kind, code, expected, got FROM bi.anomaly ORDER BY id")
    # (two keys, two partitions: in either order)
    assert "SCHEMA_INVALID" in {r[0] for r in rows}
    assert ("SEQUENCE_GAP", gap_code, 1, 7) in rows
    assert (metric(mart.metrics_url, "gcp_bi_anomalies_total", kind="SEQUENCE_GAP",
                   topic="GiftCertificates.Stream") or 0) >= 1
    wait_until(lambda: mart.lag() == (0.0, 0.0), 30, "lag 0")
    assert not mart.procs.dead()


# ---- the report in headless Chromium ---------------------------------------------------------

class Tables(html.parser.HTMLParser):
    """Every <table id=...> of a page as {id: [[cell text, ...], ...]} (body rows)."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None
        self.resources: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for attr in ("src", "href", "data", "poster", "srcset"):
            if a.get(attr):
                self.resources.append(f"{tag}.{attr}={a[attr][:60]}")
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


class ProxyTrap:
    """A local HTTP proxy that answers nothing and records every request Chromium sends it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.requests.append(conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.sock.close()


#: Requests Chromium sends for itself even for a blank page, whatever flags it gets (network
#: time, component updates, account check): not the page's. Anything else fails the test.
BROWSER_OWN = (re.compile(r"^GET http://clients2\.google\.com/time/1/current\?"),
               re.compile(r"^POST http://update\.googleapis\.com/service/update2/json\?"),
               re.compile(r"^CONNECT (update\.googleapis\.com|accounts\.google\.com|www\.google\.com):443 "))


def page_requests(requests_seen: list[str]) -> list[str]:
    return [r for r in requests_seen if not any(p.match(r) for p in BROWSER_OWN)]


def chromium(args: list[str], profile: Path, proxy: ProxyTrap) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-extensions",
           "--no-pings", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
           "--disable-default-apps", "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate",
           f"--user-data-dir={profile}", f"--proxy-server=http://127.0.0.1:{proxy.port}",
           "--proxy-bypass-list=<-loopback>"] + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (Debian package `chromium`; "
                                                  "`.ci/run` installs it)")
def test_report_renders_in_headless_chromium_with_no_external_resource_and_the_marts_figures(burst, mart, tmp_path):
    from bi.report import DAILY_COLUMNS, cell, write_report

    out = tmp_path / "report"
    page = write_report(out_dir=out)
    assert page == out / "report.html"
    assert {p.name for p in out.glob("*.csv")} == {"liability.csv", "daily_snapshot.csv", "pool_daily.csv",
                                                   "pool_level.csv", "anomalies.csv"}
    text = page.read_text()
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    assert "google" not in text.lower()  # so the browser's own calls to Google are not the page's
    proxy = ProxyTrap()
    profile = Path(tempfile.mkdtemp(prefix="gcp-chromium-"))
    try:
        done = chromium(["--dump-dom", page.resolve().as_uri()], profile, proxy)
        assert done.returncode == 0, done.stderr[-2000:]
        shot = tmp_path / "report.png"
        chromium([f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", page.resolve().as_uri()],
                 profile, proxy)
    finally:
        proxy.close()
        shutil.rmtree(profile, ignore_errors=True)
    # then the page loaded nothing from anywhere: no request of the page reached the proxy
    # (every http and https request goes through it), and every resource in the rendered DOM
    # is an inline data: URI
    assert page_requests(proxy.requests) == [], proxy.requests
    dom = Tables()
    dom.feed(done.stdout)
    assert dom.resources and all(r.startswith("img.src=data:image/png;base64,") for r in dom.resources), dom.resources
    assert len([r for r in dom.resources if r.startswith("img.")]) == 4
    assert shot.exists() and shot.stat().st_size > 10_000
    # and the figures it shows are the mart's, to the kopeck
    rows = q(mart.db, f"SELECT {', '.join(DAILY_COLUMNS)} FROM bi.daily_snapshot ORDER BY day, channel, currency")
    assert dom.tables["daily_snapshot"] == [[cell(v) for v in r] for r in rows]
    shown = {(r[1], r[2]): r for r in dom.tables["daily_snapshot"]}
    cur = burst["currency"]
    assert shown[("POS", cur)][DAILY_COLUMNS.index("breakage_amount")] == "500.00"
    assert shown[("ONLINE_STORE", cur)][DAILY_COLUMNS.index("sold_amount")] == "3000.00"
    anomalies = q(mart.db, "SELECT count(*) FROM bi.anomaly")[0][0]
    assert len([r for r in dom.tables["anomalies"] if r != ["none"]]) == anomalies
    assert re.search(r"Outstanding liability", done.stdout)
