"""The BI mart end to end: the Procfile processes plus ``bi`` (``python -m workers.bi``) as real
subprocesses; a realistic burst through HTTP and Kafka; the mart against the service's ledger,
``reconcile``, a replay from offset 0, and anomalies injected into the stream.

The service's tables are emptied at the start of this module (as ``clean_db`` does), so the
ledger holds this burst only; the mart has a database of its own (``BI_DATABASE_URL``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest

from tests.e2e import flow
from tests.e2e.bikit import metric, q, service
from tests.e2e.conftest import ROOT, wait_until
from tests.helpers import unique_code

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]
D = Decimal


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
        "pool": q(mart.db, "SELECT * FROM bi.pool_segment_daily ORDER BY 1, 2, 3, 4"),
        "anomalies": q(mart.db, "SELECT count(*) FROM bi.anomaly"),
    }


def test_the_mart_equals_the_ledger_reconciles_survives_a_replay_and_polices_its_input(burst, mart, api):
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
    # and the pool levels are the service's, segment by segment (each sale loaded its one code)
    levels = {(k, n): lv for k, n, lv in q(mart.db, "SELECT kind, nominal, level FROM bi.pool_segment"
                                                    " WHERE currency = %s", cur)}
    assert levels == {("ELECTRONIC", n): 0 for n in ("300.00", "500.00", "700.00", "800.00", "1000.00", "1500.00")}
    # when a batch of 3 is loaded (not on the stream) and one of them reserved
    api.load([unique_code("LV") for _ in range(3)], "400.00", cur)
    api.reserve("order-lv-" + uuid.uuid4().hex[:6], "400.00", currency=cur)
    # then the mart's level of that segment is what GET /pool says
    pool = api.call("GET", "/pool", "ONLINE_STORE").json()
    told = {(s["kind"], s["nominal"]): s["available"] for s in pool["byNominal"] if s["currency"] == cur}
    assert told == {("ELECTRONIC", "400.00"): 2}
    wait_until(lambda: q(mart.db, "SELECT level FROM bi.pool_segment WHERE currency = %s AND nominal = '400.00'",
                         cur) == [(2,)], 30, "the level of the 400.00 segment")
    from models.store.tables import OutboxEvent

    outbox = f"SELECT count(*) FROM {OutboxEvent._meta.table_name}"  # (the reservation's alert too)
    wait_until(lambda: q(mart.db, "SELECT count(*) FROM bi.fact_event")[0][0] >= service(outbox)[0][0], 30,
               "every event of the service in the mart")
    # and reconcile (the command, as operators run it) finds nothing: against the ledger, the
    # roll-forward of every closed day, and the orders and payments seen (--sources)
    env = {**os.environ, "BI_DATABASE_URL": mart.procs.env["BI_DATABASE_URL"]}
    for args in ([], ["--sources"]):
        done = subprocess.run([sys.executable, "-m", "workers.bi.cli", "reconcile", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
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
