"""Helpers of the BI mart end-to-end tests (``test_bi_mart.py``, ``test_bi_report.py``; their
``mart`` and ``burst`` fixtures are in ``conftest.py``): the ``bi`` process (``python -m
workers.bi``) beside the Procfile processes, a realistic burst played through HTTP and Kafka as
the channels do it, and queries of the mart and of the service's database."""
from __future__ import annotations

import uuid

import requests

from models.store.db import db
from tests.e2e import flow
from tests.e2e.conftest import wait_until
from tests.helpers import uid, unique_code


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


def now() -> str:
    """The time now, RFC 3339: the burst's messages say when they happen, as the channels' do
    (``reconcile --sources`` compares by day)."""
    import datetime as dt

    ts = dt.datetime.now(dt.timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


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
                                          currency=self.currency, occurredAt=now()))
        self.pub.send("payment", flow.payment(order_id, nominal, channel=channel, currency=self.currency,
                                              gc={"code": code, "operation": "PURCHASE"}, occurredAt=now()))
        self.expected[code] = ["reserve", "issue", "notification.requested"]
        return code, order_id

    def redeem(self, code: str, amount: str, channel: str = "POS") -> str:
        order_id = uid("order-")
        self.pub.send("order", flow.order(order_id, [flow.product_line(amount, "1")], amount, channel=channel,
                                          currency=self.currency, tenders=[flow.gc_tender(code, amount)],
                                          occurredAt=now()))
        self.pub.send("payment", flow.payment(order_id, amount, channel=channel, currency=self.currency,
                                              method="GIFT_CERTIFICATE",
                                              gc={"code": code, "operation": "REDEMPTION", "amount": amount},
                                              occurredAt=now()))
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
                                          refund_lines=[{"lineId": "1", "amount": "200.00"}], occurredAt=now()))
        self.pub.send("payment", flow.payment(a_order, "200.00", event_type="PAYMENT_REFUNDED", channel="POS",
                                              currency=cur, method="GIFT_CERTIFICATE",
                                              gc={"code": a, "operation": "REFUND", "amount": "200.00"},
                                              occurredAt=now()))
        self.pub.send("order", flow.order(c_order, [flow.gc_line(c, "700.00")], "700.00", currency=cur,
                                          event_type="ORDER_REFUNDED", refund_lines=[{"lineId": "1", "amount": "700.00"}],
                                          occurredAt=now()))
        self.pub.send("payment", flow.payment(c_order, "700.00", event_type="PAYMENT_REFUNDED", currency=cur,
                                              gc={"code": c, "operation": "PURCHASE"}, occurredAt=now()))
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


def wait_for_mart(mart, total: int, timeout: float = 60) -> None:
    wait_until(lambda: q(mart.db, "SELECT count(*) FROM bi.fact_event")[0][0] >= total, timeout,
               f"{total} facts in the mart")
    wait_until(lambda: mart.lag()[0] == 0, timeout, "the mart to catch up")
