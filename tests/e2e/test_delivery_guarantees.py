"""Delivery guarantees end to end, with the Procfile processes as real subprocesses:
duplicates and reverse order change nothing; poison messages go to the DLQ while processing goes
on; SIGKILL of the pump, the worker and the relay in a burst loses nothing and applies nothing
twice."""
import threading
import time
from collections import Counter
from decimal import Decimal

import pytest

from models.store.db import db
from models.store.tables import GiftCertificate, Operation
from tests.e2e import flow
from tests.e2e.conftest import wait_until
from tests.helpers import uid, unique_code

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]
D = Decimal


def state(code):
    with db.connection_context():
        row = GiftCertificate.get(GiftCertificate.code == code)
        ledger = sum((o.amount for o in Operation.select().where(Operation.certificate == row.id)), D("0"))
        return row.status, row.remaining_balance, ledger


def purchase_story(code, order_id, currency):
    total = "2000.00"
    return [
        ("order", flow.order(order_id, [flow.gc_line(code, "1500.00"), flow.product_line("500.00")], total,
                             currency=currency, minute=0)),
        ("payment", flow.payment(order_id, "1200.00", currency=currency, payment_id="card-" + order_id, minute=1)),
        ("payment", flow.payment(order_id, "800.00", currency=currency, payment_id="sbp-" + order_id, minute=2)),
        ("order", flow.order(order_id, [flow.gc_line(code, "1500.00")], total, currency=currency, minute=5,
                             event_type="ORDER_REFUNDED", refund_lines=[{"lineId": "1", "amount": "1500.00"}])),
        ("payment", flow.payment(order_id, "1500.00", event_type="REFUND_FAILED", currency=currency, minute=7,
                                 payment_id="r-" + order_id, gc={"code": code, "operation": "PURCHASE"},
                                 refund={"requisitesRequired": True})),
        ("payment", flow.payment(order_id, "1500.00", event_type="PAYMENT_REFUNDED", currency=currency, minute=9,
                                 payment_id="r-" + order_id, gc={"code": code, "operation": "PURCHASE"})),
    ]


def spend_story(code, order_id, currency):
    return [
        ("order", flow.order(order_id, [flow.product_line("900.00", "1")], "900.00", channel="POS",
                             currency=currency, tenders=[flow.gc_tender(code, "600.00"),
                                                         {"type": "CARD", "amount": "300.00"}])),
        ("payment", flow.payment(order_id, "600.00", channel="POS", currency=currency, method="GIFT_CERTIFICATE",
                                 gc={"code": code, "operation": "REDEMPTION", "amount": "600.00"}, minute=1)),
        ("order", flow.order(order_id, [flow.product_line("900.00", "1")], "900.00", channel="POS",
                             currency=currency, event_type="ORDER_REFUNDED", minute=30,
                             refund_lines=[{"lineId": "1", "amount": "200.00"}])),
        ("payment", flow.payment(order_id, "200.00", event_type="PAYMENT_REFUNDED", channel="POS",
                                 currency=currency, method="GIFT_CERTIFICATE", minute=31,
                                 gc={"code": code, "operation": "REFUND", "amount": "200.00"})),
    ]


def test_duplicated_and_reversed_messages_give_the_same_state_and_stream(api, stream, currency):
    pub = flow.Publisher()
    runs = {}
    for direction in ("forward", "reverse"):
        code = unique_code()
        api.load([code], "1500.00", currency)
        order_id = uid("order-")
        api.reserve(order_id, "1500.00", currency=currency)
        msgs = purchase_story(code, order_id, currency)
        if direction == "reverse":
            msgs.reverse()
        for kind, msg in msgs:  # every message twice: a producer retry, a redelivery
            pub.send(kind, msg, flush=False)
            pub.send(kind, msg, flush=False)
        pub.flush()
        events = stream.wait_types(code, ["reserve", "issue", "notification.requested", "refund",
                                          "refund.pendingDetails", "refund"], timeout=30)
        runs[direction] = (flow.shape(events), state(code))
    assert runs["forward"] == runs["reverse"]
    assert runs["forward"][1] == ("REFUNDED", D("0.00"), D("0.00"))

    spent = {}
    for direction in ("forward", "reverse"):
        code = unique_code()
        api.load([code], "1500.00", currency)
        order_id = uid("order-")
        api.reserve(order_id, "1500.00", currency=currency)
        for kind, msg in purchase_story(code, order_id, currency)[:3]:
            pub.send(kind, msg)
        stream.wait_types(code, ["reserve", "issue", "notification.requested"])
        msgs = spend_story(code, uid("pos-"), currency)
        for kind, msg in (msgs if direction == "forward" else list(reversed(msgs))) * 2:
            pub.send(kind, msg, flush=False)
        pub.flush()
        events = stream.wait_types(code, ["reserve", "issue", "notification.requested", "redeem.partial",
                                          "refund"], timeout=30)
        spent[direction] = (flow.shape(events), state(code))
    assert spent["forward"] == spent["reverse"]
    assert spent["forward"][1] == ("PARTIALLY_REDEEMED", D("1100.00"), D("1100.00"))


def test_poison_messages_go_to_the_dlq_with_headers_and_processing_goes_on(api, stream, currency):
    pub, dlq = flow.Publisher(), flow.TopicReader("dlq")
    code = unique_code()
    api.load([code], "1000.00", currency)
    order_id = uid("order-")
    api.reserve(order_id, "1000.00", currency=currency)
    bad_schema = flow.order(order_id, [{"lineId": "1", "type": "GIFT_CERTIFICATE", "amount": "1000.00"}],
                            "1000.00", currency=currency)  # a certificate line without its code
    pub.send("order", b'{"eventId": "x", "eventType": ', key=order_id)
    pub.send("order", bad_schema)
    pub.send("order", flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00", currency=currency))
    pub.send("payment", flow.payment(order_id, "1000.00", currency=currency))
    stream.wait_types(code, ["reserve", "issue", "notification.requested"])
    records = dlq.wait_for(lambda r: len([x for x in r.records if x.key == order_id]) >= 2
                           and [x for x in r.records if x.key == order_id], what="two DLQ entries")
    errors = [r.headers["error"] for r in records]
    assert errors[0].startswith("INVALID_JSON") and errors[1].startswith("SCHEMA_VIOLATION: /lines/0")
    for r in records:
        assert set(r.headers) >= {"error", "sourceTopic", "sourcePartition", "sourceOffset"}
        assert r.headers["sourceTopic"] == flow.topic_of("order")


def test_sigkill_of_pump_worker_and_relay_in_a_burst_loses_nothing_and_doubles_nothing(procs, api, stream, currency):
    pub = flow.Publisher()
    n = 40
    # given certificates reserved for n orders, and n issued ones to spend
    codes, orders = [], []
    for _ in range(n):
        code = unique_code()
        codes.append(code)
    api.load(codes, "1000.00", currency)
    for code in codes:
        order_id = uid("order-")
        assert api.reserve(order_id, "1000.00", currency=currency)["code"] == code
        orders.append(order_id)
    spend_codes = [unique_code() for _ in range(n // 2)]
    api.load(spend_codes, "1000.00", currency)
    spend_orders = []
    for code in spend_codes:
        order_id = uid("order-")
        api.reserve(order_id, "1000.00", currency=currency)
        spend_orders.append(order_id)
        for kind, msg in (("order", flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00",
                                               currency=currency)),
                          ("payment", flow.payment(order_id, "1000.00", currency=currency))):
            pub.send(kind, msg, flush=False)
    pub.flush()
    wait_until(lambda: all(len(stream.for_key(c)) >= 3 for c in spend_codes) or stream.poll(0.2), 30,
               "spendable certificates issued")
    # when a burst of sales and redemptions runs at ~100 messages/s
    burst = []
    for code, order_id in zip(codes, orders):
        burst.append(("order", flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00", currency=currency)))
        burst.append(("payment", flow.payment(order_id, "1000.00", currency=currency)))
    for code in spend_codes:
        burst += spend_story(code, uid("pos-"), currency)[:2]

    def play():
        for kind, msg in burst:
            pub.send(kind, msg, flush=False)
            pub.producer.poll(0)
            time.sleep(0.01)
        pub.flush()

    player = threading.Thread(target=play)
    player.start()
    # and the pump, the worker and the relay are killed with SIGKILL in the middle of it
    time.sleep(0.3)
    procs.kill("pump")
    time.sleep(0.3)
    procs.restart("pump")
    time.sleep(0.4)
    procs.kill("worker")
    time.sleep(0.2)
    procs.kill("relay")
    procs.restart("worker")
    time.sleep(0.3)
    procs.restart("relay")
    player.join(60)
    # then every sale is issued once and every redemption debited once
    wait_until(lambda: stream.poll(0.3) or (all(len(stream.for_key(c)) >= 3 for c in codes)
                                             and all(len(stream.for_key(c)) >= 4 for c in spend_codes)),
               90, "every effect on the stream")
    stream.poll(2.0)  # anything doubled would show up now
    for code in codes:
        assert [e["eventType"] for e in stream.for_key(code)] == ["issue", "notification.requested"] or \
            [e["eventType"] for e in stream.for_key(code)] == ["reserve", "issue", "notification.requested"], code
        assert state(code) == ("ISSUED", D("1000.00"), D("1000.00"))
    for code in spend_codes:
        types = [e["eventType"] for e in stream.for_key(code)]
        assert types[-1] == "redeem.partial" and types.count("redeem.partial") == 1, types
        assert state(code) == ("PARTIALLY_REDEEMED", D("400.00"), D("400.00"))
    # and no event appears twice on the stream, nor a sequence gap
    for code in codes + spend_codes:
        events = stream.for_key(code)
        seqs = [e["sequence"] for e in events]
        assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs), (code, seqs)
        assert Counter(e["eventId"] for e in events).most_common(1)[0][1] == 1
    assert not procs.dead()
