"""The inbox actor and the correlation rules against real PostgreSQL (no Kafka in between):
each message goes through the inbox exactly as the pump leaves it."""
from decimal import Decimal

import pytest

from models.domain import commands, locks, timeutil
from models.service import messagebus
from models.service import unit_of_work as work
from models.store import repository
from models.store.db import db
from models.store.tables import (
    AuthorizationHold,
    BlockedIssue,
    GiftCertificate,
    InboxMessage,
    OrderEffect,
    OutboxEvent,
)
from tests.e2e import flow
from tests.helpers import issued, load, uid, unique_currency

D = Decimal


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


def deliver(kind: str, msg: dict) -> str:
    """Record ``msg`` in the inbox as the pump does, then run the actor's body on it."""
    from models.service.inbox import process

    topic = flow.topic_of(kind)
    row = (InboxMessage.insert(event_id=msg["eventId"], topic=topic, partition=0, offset=0,
                               message_key=flow.key_of(kind, msg), payload=msg, received_at=timeutil.utcnow())
           .on_conflict_ignore().execute())
    inbox_id = row or InboxMessage.get(InboxMessage.event_id == msg["eventId"]).id
    return process(inbox_id)


def events(key: str) -> list[dict]:
    return [e.envelope for e in OutboxEvent.select().where(OutboxEvent.message_key == key)
            .order_by(OutboxEvent.id)]


def types(key: str) -> list[str]:
    return [e["eventType"] for e in events(key)]


def cert(code: str) -> GiftCertificate:
    return GiftCertificate.get(GiftCertificate.code == code)


def reserved(nominal="1500.00", currency="RUB", channel="ONLINE_STORE"):
    code = load(1, nominal, currency)[0]
    order_id = uid("order-")
    messagebus.handle(commands.Reserve(channel, order_id, "1", D(nominal), currency, code=code))
    return code, order_id


def sale(code, order_id, nominal="1500.00", **kw):
    return flow.order(order_id, [flow.gc_line(code, nominal), flow.product_line("500.00")],
                      str(D(nominal) + 500), **kw)


def test_order_then_payment_issues_once_and_a_duplicate_changes_nothing():
    code, order_id = reserved()
    created = sale(code, order_id)
    paid = flow.payment(order_id, "2000.00", gc={"code": code, "operation": "PURCHASE"})
    # when the order arrives, then nothing is issued yet
    assert deliver("order", created) == "done"
    assert cert(code).status == "RESERVED"
    # when the payment completes it, then the certificate is issued, caused by the payment
    deliver("payment", paid)
    assert cert(code).status == "ISSUED" and cert(code).remaining_balance == D("1500.00")
    issue = events(code)[1]
    assert issue["eventType"] == "issue" and issue["causationId"] == paid["eventId"]
    assert issue["correlationId"] == order_id and issue["sequence"] == 2
    # when both are delivered again, then nothing changes
    assert deliver("payment", paid) == "skipped" and deliver("order", created) == "skipped"
    again = dict(paid, eventId=flow.eid())  # the same payment re-sent under a new event id
    deliver("payment", again)
    assert types(code) == ["reserve", "issue", "notification.requested"]


def test_payment_hours_before_the_order_issues_when_the_order_arrives():
    code, order_id = reserved()
    # given the payment first (the scheduler keeps the reservation: a payment was seen)
    deliver("payment", flow.payment(order_id, "2000.00", minute=0))
    assert repository.payment_seen(order_id, "ONLINE_STORE") and not repository.payment_seen(order_id, "POS")
    assert cert(code).status == "RESERVED"
    # when the order arrives hours later, then it is issued, by the order's event
    created = sale(code, order_id, minute=180)
    deliver("order", created)
    assert cert(code).status == "ISSUED"
    assert events(code)[1]["causationId"] == created["eventId"]


def test_partial_payments_issue_only_when_the_total_is_reached():
    code, order_id = reserved()
    deliver("order", sale(code, order_id))
    deliver("payment", flow.payment(order_id, "1200.00"))
    assert cert(code).status == "RESERVED"
    deliver("payment", flow.payment(order_id, "800.00"))
    assert cert(code).status == "ISSUED"


def test_lost_reservation_resells_the_same_code_when_free_else_a_fresh_one():
    currency = unique_currency()
    code, order_id = reserved("1000.00", currency)
    spare = load(1, "1000.00", currency)[0]
    # given the reservation lapsed and was released
    messagebus.handle(commands.Release(code, "RESERVATION_EXPIRED"))
    deliver("order", flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00", currency=currency))
    # when paid, then the very same code is reserved again and issued
    deliver("payment", flow.payment(order_id, "1000.00", currency=currency))
    assert cert(code).status == "ISSUED" and cert(code).order_id == order_id
    # given another order whose code was meanwhile sold to someone else
    taken, other_order = reserved("1000.00", currency)
    messagebus.handle(commands.Release(taken, "RESERVATION_EXPIRED"))
    messagebus.handle(commands.Reserve("POS", uid("thief-"), "1", D("1000.00"), currency, code=taken))
    deliver("order", flow.order(other_order, [flow.gc_line(taken, "1000.00")], "1000.00", currency=currency))
    deliver("payment", flow.payment(other_order, "1000.00", currency=currency))
    # then a fresh certificate from the pool is issued for the line, never the taken one
    assert cert(taken).status == "RESERVED" and cert(taken).order_id != other_order
    fresh = cert(spare)
    assert fresh.status == "ISSUED" and fresh.order_id == other_order and fresh.line_id == "1"


def test_lost_reservation_on_an_empty_pool_blocks_then_issues_oldest_first_on_refill():
    currency = unique_currency()
    first_code, first = reserved("700.00", currency)
    second_code, second = reserved("700.00", currency)
    for code, order_id in ((first_code, first), (second_code, second)):
        messagebus.handle(commands.Release(code, "RESERVATION_EXPIRED"))
        messagebus.handle(commands.Reserve("POS", uid("thief-"), "1", D("700.00"), currency, code=code))
    # when both orders are paid while the pool is empty
    for order_id, code in ((first, first_code), (second, second_code)):
        deliver("order", flow.order(order_id, [flow.gc_line(code, "700.00")], "700.00", currency=currency))
        deliver("payment", flow.payment(order_id, "700.00", currency=currency))
    # then each gets one issue.blocked keyed by the order, and waits
    assert types(first) == ["issue.blocked"] and types(second) == ["issue.blocked"]
    assert events(first)[0]["payload"]["reason"] == "POOL_EMPTY"
    assert [b.order_id for b in BlockedIssue.select().where(BlockedIssue.currency == currency)
            .order_by(BlockedIssue.id)] == [first, second]
    # when a batch adds one code, then the oldest blocked order gets it; no new issue.blocked
    one = load(1, "700.00", currency)[0]
    assert messagebus.handle(commands.ResolveBlockedIssues()) == {"issued": [one]}
    assert cert(one).order_id == first and cert(one).status == "ISSUED"
    assert types(second) == ["issue.blocked"]
    # when another arrives, then the second order gets it
    two = load(1, "700.00", currency)[0]
    assert messagebus.handle(commands.ResolveBlockedIssues()) == {"issued": [two]}
    assert cert(two).order_id == second


def test_redemption_needs_tender_and_capture_in_either_order_and_debits_once():
    code = issued("1500.00")
    for first_kind in ("order", "payment"):
        order_id = uid("order-")
        tender_order = flow.order(order_id, [flow.product_line("900.00", "1")], "900.00", channel="POS",
                                  tenders=[flow.gc_tender(code, "600.00" if first_kind == "order" else "100.00"),
                                           {"type": "CARD", "amount": "300.00"}])
        amount = "600.00" if first_kind == "order" else "100.00"
        capture = flow.payment(order_id, amount, channel="POS", method="GIFT_CERTIFICATE",
                               gc={"code": code, "operation": "REDEMPTION", "amount": amount})
        pair = [("order", tender_order), ("payment", capture)]
        if first_kind == "payment":
            pair.reverse()
        deliver(*pair[0])
        deliver(*pair[1])
        deliver(*pair[1])
    # then 600 + 100 were debited once each
    assert cert(code).remaining_balance == D("800.00") and cert(code).status == "PARTIALLY_REDEEMED"
    redeems = [e for e in events(code) if e["eventType"].startswith("redeem")]
    assert [(e["eventType"], e["payload"]["amount"], e["payload"]["remainingBalance"]) for e in redeems] == [
        ("redeem.partial", "600.00", "900.00"), ("redeem.partial", "100.00", "800.00")]
    assert redeems[0]["channel"] == "POS"


def test_redemption_beyond_the_balance_is_refused_with_an_error_event():
    code = issued("100.00")
    order_id = uid("order-")
    deliver("order", flow.order(order_id, [flow.product_line("500.00", "1")], "500.00",
                                tenders=[flow.gc_tender(code, "500.00")]))
    deliver("payment", flow.payment(order_id, "500.00", method="GIFT_CERTIFICATE",
                                    gc={"code": code, "operation": "REDEMPTION"}))
    assert cert(code).remaining_balance == D("100.00")
    error = [e for e in events(code) if e["eventType"] == "error"][0]
    assert error["payload"]["code"] == "INSUFFICIENT_FUNDS" and error["payload"]["source"] == "All_Payments"
    assert OrderEffect.get(OrderEffect.order_id == order_id).outcome == "REFUSED"


def api_capture(code, amount):
    row = cert(code)
    from models.store import cvc
    hold = messagebus.handle(commands.Authorize(code, "ONLINE_STORE", uid("o-"), D(amount), cvc.decrypt(row.cvc_encrypted)),
                      work.Context(actor="web", channel="ONLINE_STORE"))
    messagebus.handle(commands.Capture(hold["authorizationId"]))
    return hold["authorizationId"]


def test_tender_naming_an_api_capture_confirms_it_and_a_mismatch_alerts():
    code = issued("1500.00")
    auth = api_capture(code, "250.00")
    order_id = uid("order-")
    # when the order names the captured authorization with the same amount
    deliver("order", flow.order(order_id, [flow.product_line("250.00", "1")], "250.00",
                                tenders=[flow.gc_tender(code, "250.00", auth)]))
    deliver("payment", flow.payment(order_id, "250.00", method="GIFT_CERTIFICATE",
                                    gc={"code": code, "operation": "REDEMPTION"}))
    # then it is confirmed and nothing more is debited
    assert cert(code).remaining_balance == D("1250.00")
    assert AuthorizationHold.get_by_id(auth).confirmed_by is not None
    # when another order names a capture of 200.00 with a tender of 250.00
    auth2 = api_capture(code, "200.00")
    bad = flow.order(uid("order-"), [flow.product_line("250.00", "1")], "250.00",
                     tenders=[flow.gc_tender(code, "250.00", auth2)])
    deliver("order", bad)
    # then an alert names the mismatch and the balance is untouched
    alert = [e for e in events(code) if e["eventType"] == "alert"][-1]
    assert alert["status"] == "ALERT" and alert["causationId"] == bad["eventId"]
    assert alert["payload"] == {"code": "CAPTURE_MISMATCH", "source": "All_SalesOrder", "certificateCode": code,
                                "authorizationId": auth2,
                                "message": f"tender 250.00 differs from captured authorization {auth2} (200.00)"}
    assert cert(code).remaining_balance == D("1050.00")


def sold(nominal="1500.00"):
    code, order_id = reserved(nominal)
    deliver("order", sale(code, order_id, nominal))
    deliver("payment", flow.payment(order_id, str(D(nominal) + 500), payment_id="pay-1" + order_id))
    assert cert(code).status == "ISSUED"
    return code, order_id


def refund_order(code, order_id, amount="1500.00", minute=5):
    return flow.order(order_id, [flow.gc_line(code, "1500.00")], "2000.00", event_type="ORDER_REFUNDED",
                      refund_lines=[{"lineId": "1", "amount": amount}], minute=minute)


def purchase_refund(order_id, code, event_type="PAYMENT_REFUNDED", minute=9, **extra):
    return flow.payment(order_id, "1500.00", event_type=event_type, payment_id="pay-1r" + order_id,
                        gc={"code": code, "operation": "PURCHASE"}, minute=minute, **extra)


def test_purchase_refund_pending_then_refunded_with_zero_balance():
    code, order_id = sold()
    deliver("order", refund_order(code, order_id))
    assert cert(code).status == "REFUND_PENDING"
    deliver("payment", purchase_refund(order_id, code))
    row = cert(code)
    assert row.status == "REFUNDED" and row.remaining_balance == D("0.00") and row.cvc_encrypted is None
    refunds = [e for e in events(code) if e["eventType"] == "refund"]
    assert [e["status"] for e in refunds] == ["REFUND_PENDING", "REFUNDED"]
    assert refunds[0]["payload"]["refundableAmount"] == "1500.00"
    assert refunds[1]["payload"]["remainingBalance"] == "0.00"


def test_purchase_refund_needing_requisites_then_confirmed():
    code, order_id = sold()
    deliver("order", refund_order(code, order_id))
    deliver("payment", purchase_refund(order_id, code, "REFUND_FAILED", minute=7,
                                       refund={"reason": "card expired", "requisitesRequired": True},
                                       failureReason="card expired"))
    assert cert(code).status == "REFUND_PENDING_DETAILS"
    assert events(code)[-1]["eventType"] == "refund.pendingDetails"
    deliver("payment", purchase_refund(order_id, code))
    assert cert(code).status == "REFUNDED"


def test_purchase_refund_of_a_fully_redeemed_certificate_is_refused_with_an_error():
    code, order_id = sold()
    messagebus.handle(commands.Redeem(code, D("1500.00")))
    deliver("order", refund_order(code, order_id))
    assert cert(code).status == "REDEEMED"
    error = events(code)[-1]
    assert error["eventType"] == "error" and error["status"] == "ERROR"
    assert "fully redeemed" in error["payload"]["message"] and error["payload"]["certificateCode"] == code
    # and Payments' confirmation then changes nothing
    deliver("payment", purchase_refund(order_id, code))
    assert cert(code).status == "REDEEMED"


def test_refund_onto_a_certificate_credits_back_never_above_nominal():
    code = issued("1500.00")
    order_id = uid("order-")
    deliver("order", flow.order(order_id, [flow.product_line("900.00", "1")], "900.00", channel="POS",
                                tenders=[flow.gc_tender(code, "600.00"), {"type": "CARD", "amount": "300.00"}]))
    deliver("payment", flow.payment(order_id, "600.00", channel="POS", method="GIFT_CERTIFICATE",
                                    gc={"code": code, "operation": "REDEMPTION", "amount": "600.00"}))
    back = flow.payment(order_id, "200.00", event_type="PAYMENT_REFUNDED", channel="POS",
                        method="GIFT_CERTIFICATE", gc={"code": code, "operation": "REFUND", "amount": "200.00"})
    # when only Payments' refund is there, then nothing is credited yet
    deliver("payment", back)
    assert cert(code).remaining_balance == D("900.00")
    # when the order refund arrives, then 200.00 go back
    deliver("order", flow.order(order_id, [flow.product_line("900.00", "1")], "900.00", channel="POS",
                                event_type="ORDER_REFUNDED", refund_lines=[{"lineId": "1", "amount": "200.00"}]))
    assert cert(code).remaining_balance == D("1100.00")
    assert events(code)[-1]["eventType"] == "refund" and events(code)[-1]["payload"]["amount"] == "200.00"
    # when more than was spent is refunded, then the balance stops at the nominal
    more = flow.payment(order_id, "900.00", event_type="PAYMENT_REFUNDED", channel="POS",
                        method="GIFT_CERTIFICATE", gc={"code": code, "operation": "REFUND", "amount": "900.00"})
    deliver("payment", more)
    assert cert(code).remaining_balance == D("1500.00") and cert(code).status == "ISSUED"


def test_cancelled_order_releases_its_reservation_but_not_after_a_payment():
    code, order_id = reserved()
    deliver("order", sale(code, order_id, event_type="ORDER_CANCELLED"))
    row = cert(code)
    assert row.status == "AVAILABLE" and row.order_id is None
    assert types(code)[-1] == "release" and events(code)[-1]["payload"]["reason"] == "ORDER_CANCELLED"
    # given a reservation whose order saw a payment
    code2, order2 = reserved()
    deliver("payment", flow.payment(order2, "100.00", event_type="PAYMENT_AUTHORIZED"))
    deliver("order", sale(code2, order2, event_type="ORDER_CANCELLED"))
    # then it is kept, and support is alerted
    assert cert(code2).status == "RESERVED"
    assert types(order2) == ["alert"] and events(order2)[0]["payload"]["code"] == "ORDER_CANCELLED_AFTER_PAYMENT"
    # and a late ORDER_CREATED of the cancelled order issues nothing
    deliver("order", sale(code, order_id))
    deliver("payment", flow.payment(order_id, "2000.00"))
    assert cert(code).status == "AVAILABLE"


def test_crm_notification_results_and_client_profiles():
    code = issued()
    deliver("client", flow.notification_result(code, "FAILED"))
    assert cert(code).notification_status == "NOTIFICATION_FAILED"
    deliver("client", flow.notification_result(code, "DELIVERED"))
    row = cert(code)
    assert row.notification_status == "NOTIFICATION_SENT" and row.cvc_encrypted is None
    assert types(code)[-2:] == ["notification.failed", "notification.sent"]
    # an unknown certificate gives an error event, the message is handled
    deliver("client", flow.notification_result("NOPE000000000"))
    assert events("NOPE000000000")[0]["payload"]["code"] == "CERTIFICATE_NOT_FOUND"
    # a profile update is kept (newest wins)
    client = uid("client-")
    for minute, phone in ((5, "+79990000005"), (1, "+79990000001")):
        deliver("client", {"eventId": flow.eid(), "eventType": "CLIENT_UPDATED", "occurredAt": flow.at(minute),
                           "clientId": client, "phone": phone})
    from models.store.tables import ClientProfile
    assert ClientProfile.get_by_id(client).phone == "+79990000005"


def test_the_whole_story_in_reverse_gives_the_same_state_and_events():
    stories = []
    for direction in ("forward", "reverse"):
        code, order_id = reserved()
        msgs = [("order", sale(code, order_id, minute=0)),
                ("payment", flow.payment(order_id, "2000.00", payment_id="pay-" + order_id, minute=1)),
                ("order", refund_order(code, order_id, minute=5)),
                ("payment", purchase_refund(order_id, code, "REFUND_FAILED", minute=7,
                                            refund={"requisitesRequired": True})),
                ("payment", purchase_refund(order_id, code, minute=9))]
        for kind, msg in (msgs if direction == "forward" else list(reversed(msgs))):
            deliver(kind, msg)
        row = cert(code)
        stories.append(((row.status, row.remaining_balance),
                        [(e["eventType"], e["status"], e["payload"]["remainingBalance"], e["sequence"])
                         for e in events(code)]))
    assert stories[0] == stories[1]
    assert stories[0][0] == ("REFUNDED", D("0.00"))
    assert [t for t, *_ in stories[0][1]] == ["reserve", "issue", "notification.requested", "refund",
                                              "refund.pendingDetails", "refund"]


def test_a_transient_fault_rolls_everything_back_and_the_retry_applies_once():
    code, order_id = reserved()
    deliver("order", sale(code, order_id))
    paid = flow.payment(order_id, "2000.00")
    # given a database fault in the middle of the payment's handling (a trigger refusing the
    # order update), the whole transaction is undone, inbox row included
    db.execute_sql("""CREATE OR REPLACE FUNCTION gcp_test_fault() RETURNS trigger AS $$
        BEGIN IF NEW.order_id = '%s' THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END
        $$ LANGUAGE plpgsql""" % order_id)
    db.execute_sql("CREATE TRIGGER gcp_test_fault BEFORE UPDATE ON sales_order FOR EACH ROW "
                   "EXECUTE FUNCTION gcp_test_fault()")
    try:
        with pytest.raises(Exception, match="injected fault"):
            deliver("payment", paid)
        assert cert(code).status == "RESERVED"
        assert InboxMessage.get(InboxMessage.event_id == paid["eventId"]).status == "PENDING"
    finally:
        db.execute_sql("DROP TRIGGER gcp_test_fault ON sales_order")
    # when retried, then it applies once
    deliver("payment", paid)
    assert cert(code).status == "ISSUED" and types(code).count("issue") == 1


def test_messages_of_one_order_are_handled_in_their_kafka_order_whatever_the_thread_order():
    from models.service.inbox import process

    code, order_id = sold()
    deliver("order", refund_order(code, order_id))
    failed = purchase_refund(order_id, code, "REFUND_FAILED", minute=7, refund={"requisitesRequired": True})
    paid = purchase_refund(order_id, code, minute=9)
    ids = []
    for offset, msg in ((41, failed), (42, paid)):  # the pump recorded both, in this order
        ids.append(InboxMessage.insert(event_id=msg["eventId"], topic=flow.topic_of("payment"), partition=2,
                                       offset=offset, message_key=order_id, payload=msg,
                                       received_at=timeutil.utcnow()).execute())
    # when a worker thread takes the later one first
    assert process(ids[1]) == "done"
    # then the earlier one was handled before it, in the same go
    assert [e for e in types(code)][-2:] == ["refund.pendingDetails", "refund"]
    assert process(ids[0]) == "skipped"
    assert InboxMessage.get_by_id(ids[0]).status == "DONE"


def test_an_order_without_certificates_is_not_kept_until_one_concerns_them():
    from models.store.tables import SalesOrder

    order_id = uid("order-")
    deliver("order", flow.order(order_id, [flow.product_line("10.00", "1")], "10.00"))
    deliver("payment", flow.payment(order_id, "10.00"))
    assert SalesOrder.get_or_none(SalesOrder.order_id == order_id) is None
    # when an update adds a certificate tender, then the order is kept and correlated
    code = issued("100.00")
    deliver("order", flow.order(order_id, [flow.product_line("10.00", "1")], "10.00", event_type="ORDER_UPDATED",
                                tenders=[flow.gc_tender(code, "10.00")], minute=1))
    deliver("payment", flow.payment(order_id, "10.00", method="GIFT_CERTIFICATE",
                                    gc={"code": code, "operation": "REDEMPTION"}))
    assert SalesOrder.get_or_none(SalesOrder.order_id == order_id) is not None
    assert cert(code).remaining_balance == D("90.00")


def test_the_inbox_actor_takes_the_very_lock_that_lock_order_takes():
    """The actor locks the order in SQL (one round trip); other paths call orders.lock_order.
    Both must lock the same key, or an order's messages and its scheduler expiry could race."""
    import threading

    from config import get_settings
    from models.service.inbox import _LOCK_AND_LOAD

    order_id = uid("order-")
    msg = flow.payment(order_id, "10.00")
    inbox_id = (InboxMessage.insert(event_id=msg["eventId"], topic=flow.topic_of("payment"), partition=0,
                                    offset=0, message_key=order_id, payload=msg, received_at=timeutil.utcnow())
                .execute())
    held, release = threading.Event(), threading.Event()

    def actor_side():
        with db.connection_context(), db.atomic():
            db.execute_sql(_LOCK_AND_LOAD, {
                "id": inbox_id, "clients": get_settings().topic_clients, "ns": locks.NAMESPACE,
                "client": locks.CLIENT, "order": locks.ORDER}).fetchall()
            held.set()
            release.wait(10)

    t = threading.Thread(target=actor_side)
    t.start()
    try:
        assert held.wait(10)
        # then the key orders.lock_order would lock is taken
        with db.atomic():
            taken = db.execute_sql("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                                   (locks.NAMESPACE + locks.ORDER + order_id,)).fetchone()[0]
        assert taken is False
    finally:
        release.set()
        t.join()
    with db.atomic():
        free = db.execute_sql("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                              (locks.NAMESPACE + locks.ORDER + order_id,)).fetchone()[0]
    assert free is True


# ---- cross-channel and line safety (contract section 4, Issue) --------------------------------

def alerts(order_id: str, code: str = "LINE_MISMATCH") -> list[dict]:
    """The order's alerts of ``code``, each checked to be keyed as the contract says: by the
    certificate it names, else by the order."""
    found = []
    for row in OutboxEvent.select().where(OutboxEvent.event_type == "alert").order_by(OutboxEvent.id):
        payload = row.envelope["payload"]
        if payload.get("orderId") == order_id and payload["code"] == code:
            assert row.message_key == (payload.get("certificateCode") or order_id), row.envelope
            found.append(payload)
    return found


def test_an_order_line_is_issued_only_with_its_own_channels_reservation():
    currency = unique_currency()
    online_code, pos_code = load(2, "1000.00", currency)
    order_id = uid("web-order-")
    # given the customer's online reservation, and a POS token reserving against the same order line
    messagebus.handle(commands.Reserve("ONLINE_STORE", order_id, "1", D("1000.00"), currency, code=online_code))
    messagebus.handle(commands.Reserve("POS", order_id, "1", D("1000.00"), currency, code=pos_code))
    # when the online order is paid (its line names no code)
    deliver("order", flow.order(order_id, [{"lineId": "1", "type": "GIFT_CERTIFICATE", "amount": "1000.00"}],
                                "1000.00", currency=currency))
    deliver("payment", flow.payment(order_id, "1000.00", currency=currency))
    # then the customer's own reservation is issued, never the POS one
    assert cert(online_code).status == "ISSUED"
    assert cert(pos_code).status == "RESERVED" and cert(pos_code).order_id == order_id
    # and the online payment does not pin the POS reservation: it lapses back to the pool
    GiftCertificate.update(reserved_until=timeutil.utcnow()).where(GiftCertificate.code == pos_code).execute()
    assert messagebus.handle(commands.ExpireOrderReservation(pos_code, order_id)) is not None
    assert cert(pos_code).status == "AVAILABLE"


def test_another_channels_reservation_of_the_line_issues_nothing_and_alerts():
    currency = unique_currency()
    (pos_code,) = load(1, "1000.00", currency)
    order_id = uid("web-order-")
    messagebus.handle(commands.Reserve("POS", order_id, "1", D("1000.00"), currency, code=pos_code))
    deliver("order", flow.order(order_id, [flow.gc_line(pos_code, "1000.00")], "1000.00", currency=currency))
    deliver("payment", flow.payment(order_id, "1000.00", currency=currency))
    assert cert(pos_code).status == "RESERVED"
    (alert,) = alerts(order_id)
    assert "POS" in alert["message"] and alert["reservation"]["channel"] == "POS"
    assert alert["line"]["channel"] == "ONLINE_STORE" and alert["source"] == "All_Payments"
    effect = OrderEffect.get((OrderEffect.order_id == order_id) & (OrderEffect.effect_key == "issue:1"))
    assert effect.outcome == "REFUSED" and "LINE_MISMATCH" in effect.detail


@pytest.mark.parametrize("line_amount, order_currency, names_other_code, expect", [
    ("500.00", None, False, "the line amount is 500.00, the reserved nominal 5000.00"),
    ("5000.00", "EUR", False, "the order is in EUR, the reservation in"),
    ("5000.00", None, True, "the line names certificate"),
])
def test_a_line_that_contradicts_its_reservation_issues_nothing(line_amount, order_currency,
                                                               names_other_code, expect):
    currency = unique_currency()
    code, other = load(2, "5000.00", currency)
    order_id = uid("order-")
    messagebus.handle(commands.Reserve("ONLINE_STORE", order_id, "1", D("5000.00"), currency, code=code))
    paid_in = order_currency or currency
    line = flow.gc_line(other if names_other_code else code, line_amount)
    # when the order sells the line for another amount / currency / code, and is paid in full
    deliver("order", flow.order(order_id, [line], line_amount, currency=paid_in))
    deliver("payment", flow.payment(order_id, line_amount, currency=paid_in))
    # then nothing is issued, and one LINE_MISMATCH alert names both values
    assert cert(code).status == "RESERVED" and cert(code).remaining_balance == 0
    assert cert(other).status == "AVAILABLE"
    (alert,) = alerts(order_id)
    assert expect in alert["message"], alert
    assert alert["reservation"]["certificateCode"] == code
    assert alert["reservation"]["nominal"] == "5000.00"
    assert alert["line"]["amount"] == line_amount and alert["line"]["currency"] == paid_in
    # keyed by the certificate it names (contract example 23), in order with its events
    assert alert["certificateCode"] == code and "alert" in types(code)
    flow.assert_valid_stream(events(order_id) + events(code))


def test_an_order_whose_certificate_lines_exceed_its_total_issues_nothing_until_corrected():
    currency = unique_currency()
    code, order_id = reserved("5000.00", currency)
    # given an order of total 1.00 selling the 5000.00 certificate, and a 1.00 capture
    deliver("order", flow.order(order_id, [flow.gc_line(code, "5000.00")], "1.00", currency=currency))
    deliver("payment", flow.payment(order_id, "1.00", currency=currency))
    # then nothing is issued, and one ORDER_TOTAL_MISMATCH alert, keyed by the order, names both sums
    assert cert(code).status == "RESERVED" and cert(code).remaining_balance == 0
    (alert,) = alerts(order_id, "ORDER_TOTAL_MISMATCH")
    assert alert["linesTotal"] == "5000.00" and alert["orderTotal"] == "1.00"
    # when more is captured, still nothing, and no second alert
    deliver("payment", flow.payment(order_id, "5000.00", currency=currency))
    assert cert(code).status == "RESERVED" and len(alerts(order_id, "ORDER_TOTAL_MISMATCH")) == 1
    # when an ORDER_UPDATED corrects the total, the captures now cover it: the line is issued
    deliver("order", flow.order(order_id, [flow.gc_line(code, "5000.00")], "5000.00", currency=currency,
                                event_type="ORDER_UPDATED", minute=1))
    assert cert(code).status == "ISSUED" and cert(code).remaining_balance == D("5000.00")
    flow.assert_valid_stream(events(order_id) + events(code))
