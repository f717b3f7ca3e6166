"""The mart's consumer against the real Tansu Kafka and PostgreSQL of the harness.

Each test gets topics of its own and a mart database of its own (``BI_DATABASE_URL``), then
plays stream events as the relay publishes them, and input messages as the channels send them.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from decimal import Decimal
from urllib.parse import urlparse, urlunparse

import psycopg2
import pytest
from confluent_kafka import Producer

from tests.e2e import flow

D = Decimal


@pytest.fixture
def mart(stack):
    """Fresh topics, a fresh mart database and consumer group; yields a :class:`MartHarness`."""
    from config import reset_settings
    from workers.kafka import ensure_topics

    saved = {k: os.environ.get(k) for k in os.environ if k.startswith("TOPIC_") and k != "TOPIC_PARTITIONS"}
    saved.update({k: os.environ.get(k) for k in ("BI_DATABASE_URL", "BI_CONSUMER_GROUP")})
    suffix = ".bi" + uuid.uuid4().hex[:6]
    for key, value in list(saved.items()):
        if key.startswith("TOPIC_"):
            os.environ[key] = value + suffix
    base = urlparse(os.environ["DATABASE_URL"])
    name = "gcp_bi_" + uuid.uuid4().hex[:10]
    admin = psycopg2.connect(urlunparse(base._replace(path="/postgres")))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    os.environ["BI_DATABASE_URL"] = urlunparse(base._replace(path=f"/{name}"))
    os.environ["BI_CONSUMER_GROUP"] = "gcp-bi" + suffix
    reset_settings()
    ensure_topics()
    harness = MartHarness()
    try:
        yield harness
    finally:
        harness.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_settings()
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


class MartHarness:
    def __init__(self):
        from workers.bi.schema import connect
        from workers.kafka import producer_config

        self.producer = Producer(producer_config())
        self.consumers = []
        self.db = connect(application_name="test-bi")
        self.db.autocommit = True
        self.sequences: dict[str, int] = {}

    # -- Kafka
    def send_raw(self, topic: str, key: str | None, value: bytes) -> None:
        self.producer.produce(topic, key=key.encode() if key else None, value=value)
        self.producer.flush(30)

    def send(self, event: dict, key: str | None = None) -> dict:
        from config import get_settings

        key = key or event["payload"].get("code") or event["payload"].get("orderId")
        self.send_raw(get_settings().topic_stream, key, json.dumps(event).encode())
        return event

    def consumer(self, group: str | None = None):
        from workers.bi.consumer import BiConsumer

        c = BiConsumer(group=group)
        self.consumers.append(c)
        return c

    def drain(self, consumer, want: int, timeout: float = 30.0):
        """Step ``consumer`` until it received ``want`` messages and is caught up."""
        got, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            got += consumer.step(0.2).received
            if got >= want:
                consumer.refresh_lag(force=True)
                if consumer.caught_up:
                    return got
        raise AssertionError(f"received {got} of {want} messages")

    # -- the mart
    def rows(self, sql: str, *params) -> list[tuple]:
        with self.db.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def figures(self) -> dict:
        """Every figure of the mart (facts, states, snapshots, pool), for before/after comparisons."""
        return {
            "facts": self.rows("SELECT count(*), coalesce(sum(balance_delta), 0), coalesce(sum(liability_delta), 0)"
                               " FROM bi.fact_event"),
            "certs": self.rows("SELECT code, status, balance, last_sequence FROM bi.certificate ORDER BY code"),
            "daily": self.rows("SELECT * FROM bi.daily_snapshot ORDER BY day, channel, currency"),
            "pool": self.rows("SELECT currency, kind, nominal, level FROM bi.pool_segment ORDER BY 1, 2, 3"),
            "pool_daily": self.rows("SELECT * FROM bi.pool_segment_daily ORDER BY 1, 2, 3, 4"),
            "anomalies": self.rows("SELECT anomaly_key, kind FROM bi.anomaly ORDER BY anomaly_key"),
            "orders": self.rows("SELECT count(*) FROM bi.order_event"),
            "payments": self.rows("SELECT count(*) FROM bi.payment_event"),
        }

    def close(self):
        for c in self.consumers:
            try:
                c.close()
            except Exception:
                pass
        self.db.close()


# ---- stream events as the relay publishes them ------------------------------------------------

def now_iso(offset_s: float = 0.0) -> str:
    ts = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_s)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


class Cert:
    """One certificate's events with their sequence, built like ``models.service.unit_of_work.UnitOfWork.emit``."""

    def __init__(self, nominal: str = "1500.00", channel: str = "ONLINE_STORE", currency: str = "RUB"):
        self.code = ("BI" + uuid.uuid4().hex[:14]).upper()
        self.nominal, self.channel, self.currency = nominal, channel, currency
        self.balance, self.status, self.seq = "0.00", "AVAILABLE", 0
        self.order_id = "order-" + uuid.uuid4().hex[:8]

    def event(self, etype: str, status: str, balance: str | None = None, channel: str | None = None,
              envelope_status: str | None = None, occurred_at: str | None = None, seq: int | None = None,
              **payload) -> dict:
        self.seq = seq if seq is not None else self.seq + 1
        self.status = status
        if balance is not None:
            self.balance = balance
        body = {"code": self.code, "status": status, "nominal": self.nominal, "remainingBalance": self.balance,
                "currency": self.currency, "kind": "ELECTRONIC", "channel": self.channel,
                "orderId": self.order_id}
        body.update(payload)
        return {"eventId": str(uuid.uuid4()), "eventType": etype, "occurredAt": occurred_at or now_iso(),
                "channel": channel or self.channel, "status": envelope_status or status,
                "correlationId": self.order_id, "causationId": str(uuid.uuid4()), "sequence": self.seq,
                "payload": body}

    def sold(self) -> list[dict]:
        return [self.event("reserve", "RESERVED"), self.event("issue", "ISSUED", self.nominal)]


def test_facts_states_and_snapshots_then_a_replay_from_offset_0_changes_nothing(mart):
    # given a sale on each channel, a partial and a full redemption, both refunds, a lock
    online, pos = Cert("1500.00", "ONLINE_STORE"), Cert("1000.00", "POS")
    events = online.sold() + pos.sold() + [
        online.event("redeem.partial", "PARTIALLY_REDEEMED", "900.00", channel="POS", amount="600.00"),
        online.event("refund", "PARTIALLY_REDEEMED", "1100.00", channel="POS", amount="200.00"),
        pos.event("redeem.full", "REDEEMED", "0.00", amount="1000.00"),
        online.event("lock", "LOCKED", reason="FRAUD_SUSPECTED", channel="SYSTEM"),
    ]
    refunded = Cert("700.00", "ONLINE_STORE")
    events += refunded.sold() + [
        refunded.event("refund", "REFUND_PENDING", refundableAmount="700.00"),
        refunded.event("refund", "REFUNDED", "0.00", amount="700.00"),
    ]
    for e in events:
        mart.send(e)
    # an input order and payment too
    pub_order = flow.order("order-x-" + uuid.uuid4().hex[:6], [flow.gc_line(online.code, "1500.00")], "1500.00")
    from config import get_settings

    s = get_settings()
    mart.send_raw(s.topic_sales_order, pub_order["orderId"], json.dumps(pub_order).encode())
    pay = flow.payment(pub_order["orderId"], "1500.00", gc={"code": online.code, "operation": "PURCHASE"})
    mart.send_raw(s.topic_payments, pay["orderId"], json.dumps(pay).encode())
    c = mart.consumer()
    mart.drain(c, len(events) + 2)
    today = dt.datetime.now(dt.timezone.utc).date()
    # then one fact per event, the certificates' states, and today's snapshot per channel
    assert mart.rows("SELECT count(*) FROM bi.fact_event")[0][0] == len(events)
    assert mart.rows("SELECT status, balance, channel, last_sequence FROM bi.certificate WHERE code = %s",
                     online.code) == [("LOCKED", D("1100.00"), "ONLINE_STORE", 5)]
    daily = {r[0]: r[1:] for r in mart.rows(
        "SELECT channel, sold_count, sold_amount, redeemed_amount, refunded_cert_amount, refunded_buyer_amount,"
        " locked_count, liability, locked_end FROM bi.daily_snapshot WHERE day = %s AND currency = 'RUB'", today)}
    assert daily["ONLINE_STORE"] == (2, D("2200.00"), D("0.00"), D("0.00"), D("700.00"), 0, D("1100.00"), 1)
    assert daily["POS"] == (1, D("1000.00"), D("1600.00"), D("200.00"), D("0.00"), 0, D("0.00"), 0)
    assert daily["SYSTEM"][5] == 1  # the lock, by support
    assert mart.rows("SELECT count(*) FROM bi.order_event")[0][0] == 1
    assert mart.rows("SELECT gc_code, amount FROM bi.payment_event") == [(online.code, D("1500.00"))]
    assert mart.rows("SELECT count(*) FROM bi.anomaly")[0][0] == 0
    before = mart.figures()
    # when the same events come again (a redelivery) and a new group replays from offset 0
    for e in events[:4]:
        mart.send(e)
    mart.drain(c, 4)
    replay = mart.consumer(group="gcp-bi-replay-" + uuid.uuid4().hex[:6])
    mart.drain(replay, len(events) + 6)
    # then no figure changed
    assert mart.figures() == before


def test_a_schema_invalid_event_and_a_sequence_gap_and_repeat_land_in_bi_anomaly(mart):
    from workers.bi import metrics
    from config import get_settings

    cert = Cert("1000.00")
    first = cert.sold()
    gap = cert.event("redeem.partial", "PARTIALLY_REDEEMED", "800.00", amount="200.00", seq=4)  # 3 is missing
    repeat = cert.event("redeem.partial", "PARTIALLY_REDEEMED", "600.00", amount="200.00", seq=4)
    bad = {"eventId": str(uuid.uuid4()), "eventType": "issue", "occurredAt": "yesterday", "channel": "POS",
           "status": "ISSUED", "payload": {"code": cert.code}}
    counted = metrics.ANOMALIES.labels("SCHEMA_INVALID", "GiftCertificates.Stream")._value.get()
    for e in first + [gap, repeat]:
        mart.send(e)
    mart.send(bad, key=cert.code)
    mart.send_raw(get_settings().topic_stream, cert.code, b"{not json")
    c = mart.consumer()
    # when the mart reads them, it goes on (no exception) and records each case
    mart.drain(c, 6)
    anomalies = mart.rows("SELECT kind, code, expected, got, topic FROM bi.anomaly ORDER BY id")
    kinds = [a[0] for a in anomalies]
    assert kinds.count("SCHEMA_INVALID") == 2
    assert ("SEQUENCE_GAP", cert.code, 3, 4, "GiftCertificates.Stream") in anomalies
    assert ("SEQUENCE_REPEAT", cert.code, 5, 4, "GiftCertificates.Stream") in anomalies
    assert metrics.ANOMALIES.labels("SCHEMA_INVALID", "GiftCertificates.Stream")._value.get() == counted + 2
    # the gap is applied (the payload's balance heals the state), the repeat is not counted
    assert mart.rows("SELECT status, balance, last_sequence FROM bi.certificate WHERE code = %s", cert.code) == [
        ("PARTIALLY_REDEEMED", D("800.00"), 4)]
    assert mart.rows("SELECT applied FROM bi.fact_event WHERE event_id = %s", repeat["eventId"]) == [(False,)]
    assert mart.rows("SELECT sum(redeemed_amount) FROM bi.daily_snapshot")[0][0] == D("200.00")
    # and a replay records nothing twice
    before = mart.figures()
    mart.drain(mart.consumer(group="gcp-bi-replay-" + uuid.uuid4().hex[:6]), 6)
    assert mart.figures() == before


def test_a_late_event_is_booked_on_the_arrival_day_and_a_closed_day_never_changes(mart):
    yesterday = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    stamp = yesterday.strftime("%Y-%m-%dT12:00:00.000Z")
    cert = Cert("500.00", "POS")
    mart.send(cert.event("reserve", "RESERVED", occurred_at=stamp))
    mart.send(cert.event("issue", "ISSUED", "500.00", occurred_at=stamp))
    c = mart.consumer()
    mart.drain(c, 2)
    # when yesterday is closed (the mart is caught up, the grace period is over)
    closed = c.mart.close_due_days(dt.datetime.now(dt.timezone.utc), c.caught_up, grace=dt.timedelta(0))
    assert closed == [yesterday.date()]
    frozen = mart.rows("SELECT * FROM bi.daily_snapshot WHERE day = %s ORDER BY channel", yesterday.date())
    assert [(r[1], r[3], r[4], r[-4], r[-2]) for r in frozen] == [("POS", 1, D("500.00"), D("500.00"), True)]
    # and a late redemption of yesterday arrives today
    late = mart.send(cert.event("redeem.partial", "PARTIALLY_REDEEMED", "300.00", amount="200.00",
                                occurred_at=yesterday.strftime("%Y-%m-%dT18:00:00.000Z")))
    mart.drain(c, 1)
    today = dt.datetime.now(dt.timezone.utc).date()
    # then yesterday is unchanged, and the redemption is booked today with its own date kept
    assert mart.rows("SELECT * FROM bi.daily_snapshot WHERE day = %s ORDER BY channel", yesterday.date()) == frozen
    assert mart.rows("SELECT event_date, booked_date FROM bi.fact_event WHERE event_id = %s", late["eventId"]) == [
        (yesterday.date(), today)]
    assert mart.rows("SELECT redeemed_amount, liability FROM bi.daily_snapshot WHERE day = %s AND channel = 'POS'",
                     today) == [(D("200.00"), D("300.00"))]


def _level(kind: str, cur: str, nominal: str | None, available: int, at: str) -> dict:
    return {"kind": kind, "currency": cur, "nominal": nominal, "available": available, "countedAt": at}


def test_pool_levels_are_taken_from_the_events_by_segment_and_blocked_issues(mart):
    cur = "XBI"
    a, b = Cert("500.00", currency=cur), Cert("500.00", currency=cur)
    o = Cert("250.00", currency=cur)  # an open-value code reserved for 250.00
    blocked = {"eventId": str(uuid.uuid4()), "eventType": "issue.blocked", "occurredAt": now_iso(),
               "channel": "ONLINE_STORE", "status": "ISSUE_BLOCKED", "correlationId": "o-1", "causationId": "r",
               "payload": {"orderId": "o-1", "lineId": "1", "nominal": "700.00", "currency": cur,
                           "reason": "POOL_EMPTY", "pool": _level("ELECTRONIC", cur, "700.00", 0, now_iso())}}
    # a PHYSICAL card of the same nominal is a segment of its own; b's level was counted after
    # a's but is sent first (another partition): the level counted last stands
    physical = Cert("500.00", "POS", currency=cur)
    first, second = now_iso(), now_iso(0.001)
    events = [b.event("reserve", "RESERVED", pool=_level("ELECTRONIC", cur, "500.00", 40, second)),
              a.event("reserve", "RESERVED", pool=_level("ELECTRONIC", cur, "500.00", 41, first)),
              physical.event("reserve", "RESERVED", kind="PHYSICAL", pool=_level("PHYSICAL", cur, "500.00", 3, first)),
              o.event("reserve", "RESERVED", pool=_level("ELECTRONIC", cur, None, 9, first))]
    for e in events:
        mart.send(e)
    c = mart.consumer()
    mart.drain(c, 4)
    levels = dict(((k, n), lv) for k, n, lv in mart.rows(
        "SELECT kind, nominal, level FROM bi.pool_segment WHERE currency = %s", cur))
    assert levels == {("ELECTRONIC", "500.00"): 40, ("PHYSICAL", "500.00"): 3, ("ELECTRONIC", "OPEN"): 9}
    mart.send(blocked)
    mart.drain(c, 1)
    mart.send(a.event("release", "AVAILABLE", reason="ORDER_CANCELLED",
                      pool=_level("ELECTRONIC", cur, "500.00", 41, now_iso(0.01))))
    mart.drain(c, 1)
    assert mart.rows("SELECT kind, nominal, reserved, released, blocked, level_end FROM bi.pool_segment_daily"
                     " WHERE currency = %s ORDER BY 1, 2", cur) == [
        ("ELECTRONIC", "500.00", 2, 1, 0, 41), ("ELECTRONIC", "700.00", 0, 0, 1, 0),
        ("ELECTRONIC", "OPEN", 1, 0, 0, 9), ("PHYSICAL", "500.00", 1, 0, 0, 3)]
    assert mart.rows("SELECT sum(blocked_count) FROM bi.daily_snapshot WHERE currency = %s", cur) == [(1,)]
