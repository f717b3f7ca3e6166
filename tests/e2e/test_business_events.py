"""Every business event of the contract, end to end: the Procfile processes run as real
subprocesses; the test plays the channels (HTTP + Kafka) and reads GiftCertificates.Stream."""
from decimal import Decimal

import pytest

from models.store.db import db
from tests.e2e import flow
from tests.helpers import uid, unique_code

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]
D = Decimal


@pytest.fixture
def pub():
    return flow.Publisher()


def sell(api, pub, stream, currency, nominal="1500.00", channel="ONLINE_STORE", payment_first=False):
    """Reserve through HTTP, then order + full payment through Kafka. Returns (code, order_id)."""
    code = unique_code()
    api.load([code], nominal, currency)
    order_id = uid("order-")
    assert api.reserve(order_id, nominal, channel, currency=currency)["code"] == code
    total = str(D(nominal) + D("500.00"))
    msgs = [("order", flow.order(order_id, [flow.gc_line(code, nominal), flow.product_line("500.00")], total,
                                 channel=channel, currency=currency)),
            ("payment", flow.payment(order_id, total, channel=channel, currency=currency,
                                     gc={"code": code, "operation": "PURCHASE"}))]
    for kind, msg in (reversed(msgs) if payment_first else msgs):
        pub.send(kind, msg)
    events = stream.wait_types(code, ["reserve", "issue", "notification.requested"])
    return code, order_id, events, msgs


def test_reserve_and_issue_after_full_payment_in_both_arrival_orders(api, pub, stream, currency):
    for payment_first in (False, True):
        code, order_id, events, msgs = sell(api, pub, stream, currency, payment_first=payment_first)
        flow.assert_valid_stream(events)
        assert flow.shape(events) == [("reserve", "RESERVED", "0.00", 1), ("issue", "ISSUED", "1500.00", 2),
                                 ("notification.requested", "NOTIFICATION_REQUESTED", "1500.00", 3)]
        issue = events[1]
        # caused by whichever of the two messages completed the order (they may be handled in
        # either order when they arrive together)
        assert issue["causationId"] in {m["eventId"] for _k, m in msgs} and issue["correlationId"] == order_id
        assert issue["payload"]["orderId"] == order_id and issue["payload"]["nominal"] == "1500.00"
        assert api.certificate(code)["status"] == "ISSUED"


def redeem_msgs(code, amount, currency, order_id=None):
    order_id = order_id or uid("order-")
    return order_id, [
        ("order", flow.order(order_id, [flow.product_line(amount, "1")], amount, channel="POS", currency=currency,
                             tenders=[flow.gc_tender(code, amount)])),
        ("payment", flow.payment(order_id, amount, channel="POS", currency=currency, method="GIFT_CERTIFICATE",
                                 gc={"code": code, "operation": "REDEMPTION", "amount": amount}))]


def test_redemption_partial_then_full(api, pub, stream, currency):
    code, *_ = sell(api, pub, stream, currency)
    for n, amount in enumerate(("600.00", "900.00"), start=4):  # two purchases, one after the other
        for kind, msg in redeem_msgs(code, amount, currency)[1]:
            pub.send(kind, msg)
        stream.wait_for(lambda r: len(r.for_key(code)) >= n, what=f"redemption of {amount}")
    events = stream.wait_types(code, ["reserve", "issue", "notification.requested", "redeem.partial", "redeem.full"])
    assert flow.shape(events[3:]) == [("redeem.partial", "PARTIALLY_REDEEMED", "900.00", 4),
                                 ("redeem.full", "REDEEMED", "0.00", 5)]
    assert events[3]["channel"] == "POS" and events[3]["payload"]["amount"] == "600.00"
    flow.assert_valid_stream(events)


def test_api_capture_is_confirmed_by_the_tender_and_a_mismatch_alerts(api, pub, stream, currency):
    code, *_ = sell(api, pub, stream, currency)
    cvc = api.call("GET", f"/certificates/{code}/cvc", "crm").json()["cvc"]
    auths = []
    for amount in ("250.00", "200.00"):
        order_id = uid("order-")
        auth = api.call("POST", f"/certificates/{code}/authorizations", json={
            "channel": "ONLINE_STORE", "orderId": order_id, "amount": amount, "cvc": cvc})
        assert auth.status_code == 201, auth.text
        auth_id = auth.json()["authorizationId"]
        assert api.call("POST", f"/authorizations/{auth_id}/capture", json={}).status_code == 200
        auths.append((order_id, auth_id))
    # when the orders name their captured authorizations (the second with the wrong amount)
    for (order_id, auth_id), tender in zip(auths, ("250.00", "250.00")):
        pub.send("order", flow.order(order_id, [flow.product_line(tender, "1")], tender, currency=currency,
                                     tenders=[flow.gc_tender(code, tender, auth_id)]))
    events = stream.wait_types(code, ["reserve", "issue", "notification.requested", "audit",
                                      "authorization.created", "authorization.captured",
                                      "authorization.created", "authorization.captured", "alert"])
    # then nothing more is debited, and the mismatch is an alert
    assert api.certificate(code)["remainingBalance"] == "1050.00"
    alert = events[-1]
    assert alert["status"] == "ALERT" and alert["payload"]["code"] == "CAPTURE_MISMATCH"
    assert alert["payload"]["message"] == f"tender 250.00 differs from captured authorization {auths[1][1]} (200.00)"
    assert flow.shape(events[4:8]) == [("authorization.created", "ISSUED", "1500.00", 5),
                                  ("authorization.captured", "PARTIALLY_REDEEMED", "1250.00", 6),
                                  ("authorization.created", "PARTIALLY_REDEEMED", "1250.00", 7),
                                  ("authorization.captured", "PARTIALLY_REDEEMED", "1050.00", 8)]
    flow.assert_valid_stream(events)


def test_purchase_refund_pending_then_refunded_or_pending_details(api, pub, stream, currency):
    for needs_details in (False, True):
        code, order_id, _, msgs = sell(api, pub, stream, currency)
        pub.send("order", flow.order(order_id, [flow.gc_line(code, "1500.00")], "2000.00", currency=currency,
                                     event_type="ORDER_REFUNDED", refund_lines=[{"lineId": "1", "amount": "1500.00"}]))
        if needs_details:
            pub.send("payment", flow.payment(order_id, "1500.00", event_type="REFUND_FAILED", currency=currency,
                                             gc={"code": code, "operation": "PURCHASE"}, minute=7,
                                             refund={"reason": "card expired", "requisitesRequired": True}))
        pub.send("payment", flow.payment(order_id, "1500.00", event_type="PAYMENT_REFUNDED", currency=currency,
                                         gc={"code": code, "operation": "PURCHASE"}, minute=9))
        expected = ["reserve", "issue", "notification.requested", "refund"] + \
            (["refund.pendingDetails"] if needs_details else []) + ["refund"]
        events = stream.wait_types(code, expected)
        assert events[3]["status"] == "REFUND_PENDING" and events[3]["payload"]["refundableAmount"] == "1500.00"
        assert flow.shape(events[-1:]) == [("refund", "REFUNDED", "0.00", len(expected))]
        if needs_details:
            assert events[4]["status"] == "REFUND_PENDING_DETAILS"
        flow.assert_valid_stream(events)


def test_refund_back_onto_a_certificate(api, pub, stream, currency):
    code, *_ = sell(api, pub, stream, currency)
    order_id, msgs = redeem_msgs(code, "600.00", currency)
    for kind, msg in msgs:
        pub.send(kind, msg)
    pub.send("order", flow.order(order_id, [flow.product_line("600.00", "1")], "600.00", channel="POS",
                                 currency=currency, event_type="ORDER_REFUNDED",
                                 refund_lines=[{"lineId": "1", "amount": "200.00"}]))
    pub.send("payment", flow.payment(order_id, "200.00", event_type="PAYMENT_REFUNDED", channel="POS",
                                     currency=currency, method="GIFT_CERTIFICATE",
                                     gc={"code": code, "operation": "REFUND", "amount": "200.00"}))
    events = stream.wait_types(code, ["reserve", "issue", "notification.requested", "redeem.partial", "refund"])
    assert flow.shape(events[3:]) == [("redeem.partial", "PARTIALLY_REDEEMED", "900.00", 4),
                                 ("refund", "PARTIALLY_REDEEMED", "1100.00", 5)]


def test_cancelled_order_releases_its_reservation(api, pub, stream, currency):
    code = unique_code()
    api.load([code], "1000.00", currency)
    order_id = uid("order-")
    api.reserve(order_id, "1000.00", currency=currency)
    pub.send("order", flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00", currency=currency,
                                 event_type="ORDER_CANCELLED"))
    events = stream.wait_types(code, ["reserve", "release"])
    assert flow.shape(events) == [("reserve", "RESERVED", "0.00", 1), ("release", "AVAILABLE", "0.00", 2)]
    assert events[1]["payload"]["reason"] == "ORDER_CANCELLED"
    assert api.certificate(code)["status"] == "AVAILABLE"


def test_lapsed_reservation_lost_to_another_order_then_empty_pool_then_refill(api, pub, stream, currency):
    code = unique_code()
    api.load([code], "700.00", currency)
    order_id = uid("order-")
    api.reserve(order_id, "700.00", currency=currency)
    pub.send("order", flow.order(order_id, [flow.gc_line(code, "700.00")], "700.00", currency=currency))
    # given the reservation lapses (no payment yet): the scheduler releases it
    with db.connection_context():
        db.execute_sql("UPDATE gift_certificate SET reserved_until = now() WHERE code = %s", (code,))
    stream.wait_types(code, ["reserve", "release"])
    # and another order takes the code
    api.reserve(uid("other-"), "700.00", "POS", currency=currency, code=code)
    # when the first order is paid, hours later, on an empty pool
    pub.send("payment", flow.payment(order_id, "700.00", currency=currency))
    blocked = stream.wait_types(order_id, ["issue.blocked"])[0]
    assert blocked["status"] == "ISSUE_BLOCKED" and "sequence" not in blocked
    level = blocked["payload"].pop("pool")  # contract revision 3: the segment, and its level after
    assert blocked["payload"] == {"orderId": order_id, "lineId": "1", "nominal": "700.00", "currency": currency,
                                  "reason": "POOL_EMPTY"}
    assert {k: level[k] for k in ("kind", "currency", "nominal", "available")} == {
        "kind": "ELECTRONIC", "currency": currency, "nominal": "700.00", "available": 0}
    blocked["payload"]["pool"] = level
    flow.assert_valid_stream([blocked])
    # when a batch refills the pool, then the order gets a fresh certificate at once
    fresh = unique_code()
    api.load([fresh], "700.00", currency)
    events = stream.wait_types(fresh, ["reserve", "issue", "notification.requested"])
    assert events[1]["payload"]["orderId"] == order_id and events[1]["correlationId"] == order_id
    assert api.certificate(code)["status"] == "RESERVED"  # still the other order's


def test_reserve_on_an_empty_pool_is_issue_blocked(api, stream, currency):
    order_id = uid("order-")
    resp = api.call("POST", "/certificates/next", json={"channel": "ONLINE_STORE", "orderId": order_id,
                                                        "lineId": "1", "nominal": "300.00", "currency": currency})
    assert resp.status_code == 409 and resp.json()["code"] == "POOL_EMPTY"
    assert stream.wait_types(order_id, ["issue.blocked"])[0]["payload"]["reason"] == "POOL_EMPTY"


def test_crm_notification_results(api, pub, stream, currency):
    sent, *_ = sell(api, pub, stream, currency)
    failed, *_ = sell(api, pub, stream, currency)
    pub.send("client", flow.notification_result(sent, "DELIVERED"))
    pub.send("client", flow.notification_result(failed, "FAILED"))
    events = stream.wait_types(sent, ["reserve", "issue", "notification.requested", "notification.sent"])
    assert flow.shape(events[-1:]) == [("notification.sent", "NOTIFICATION_SENT", "1500.00", 4)]
    events = stream.wait_types(failed, ["reserve", "issue", "notification.requested", "notification.failed"])
    assert events[-1]["status"] == "NOTIFICATION_FAILED"
    assert api.certificate(sent)["notificationStatus"] == "NOTIFICATION_SENT"


def test_holds_and_certificates_expire_on_time(api, pub, stream, currency):
    code, *_ = sell(api, pub, stream, currency)
    cvc = api.call("GET", f"/certificates/{code}/cvc", "crm").json()["cvc"]
    auth = api.call("POST", f"/certificates/{code}/authorizations", json={
        "channel": "ONLINE_STORE", "orderId": uid("o-"), "amount": "100.00", "cvc": cvc}).json()
    with db.connection_context():
        db.execute_sql("UPDATE authorization_hold SET expires_at = now() WHERE id = %s", (auth["authorizationId"],))
    stream.wait_types(code, ["reserve", "issue", "notification.requested", "audit", "authorization.created",
                             "authorization.expired"])
    with db.connection_context():
        db.execute_sql("UPDATE gift_certificate SET expires_at = now() WHERE code = %s", (code,))
    events = stream.wait_types(code, ["reserve", "issue", "notification.requested", "audit", "authorization.created",
                                      "authorization.expired", "expire"])
    assert flow.shape(events[-2:]) == [("authorization.expired", "ISSUED", "1500.00", 6),
                                  ("expire", "EXPIRED", "1500.00", 7)]
    flow.assert_sequence(events)


def test_support_lock_unlock_cancel(api, pub, stream, currency):
    code, *_ = sell(api, pub, stream, currency)
    for action, body in (("lock", {"reason": "FRAUD_SUSPECTED"}), ("unlock", None), ("cancel", {"reason": "ANNULLED"})):
        resp = api.call("POST", f"/certificates/{code}/actions/{action}", "admin", json=body or {})
        assert resp.status_code == 200, resp.text
    events = stream.wait_types(code, ["reserve", "issue", "notification.requested", "lock", "unlock", "cancel"])
    assert [e["status"] for e in events[3:]] == ["LOCKED", "ISSUED", "CANCELLED"]
    flow.assert_sequence(events)
    flow.assert_valid_stream(events)


def test_authorization_voided(api, pub, stream, currency):
    code, *_ = sell(api, pub, stream, currency)
    cvc = api.call("GET", f"/certificates/{code}/cvc", "crm").json()["cvc"]
    auth = api.call("POST", f"/certificates/{code}/authorizations", json={
        "channel": "ONLINE_STORE", "orderId": uid("o-"), "amount": "300.00", "cvc": cvc}).json()
    assert api.call("POST", f"/authorizations/{auth['authorizationId']}/void").status_code == 200
    events = stream.wait_types(code, ["reserve", "issue", "notification.requested", "audit",
                                      "authorization.created", "authorization.voided"])
    assert flow.shape(events[-1:]) == [("authorization.voided", "ISSUED", "1500.00", 6)]
    assert events[-1]["payload"]["available"] == "1500.00"


def test_refused_purchase_refund_of_a_spent_certificate_is_an_error_event(api, pub, stream, currency):
    code, order_id, *_ = sell(api, pub, stream, currency)
    for kind, msg in redeem_msgs(code, "1500.00", currency)[1]:
        pub.send(kind, msg)
    stream.wait_types(code, ["reserve", "issue", "notification.requested", "redeem.full"])
    refund = flow.order(order_id, [flow.gc_line(code, "1500.00")], "2000.00", currency=currency,
                        event_type="ORDER_REFUNDED", refund_lines=[{"lineId": "1", "amount": "1500.00"}])
    pub.send("order", refund)
    events = stream.wait_types(code, ["reserve", "issue", "notification.requested", "redeem.full", "error"])
    error = events[-1]
    assert error["status"] == "ERROR" and "sequence" not in error
    assert error["payload"]["certificateCode"] == code and error["payload"]["source"] == "All_SalesOrder"
    assert error["causationId"] == refund["eventId"] and "fully redeemed" in error["payload"]["message"]
    flow.assert_valid_stream([error])
    assert api.certificate(code)["status"] == "REDEEMED"


def test_an_order_total_below_its_certificate_lines_issues_nothing_until_corrected(api, pub, stream, currency):
    code = unique_code()
    api.load([code], "5000.00", currency)
    order_id = uid("order-")
    assert api.reserve(order_id, "5000.00", "ONLINE_STORE", currency=currency)["code"] == code
    # given an order of total 1.00 selling the 5000.00 certificate, paid 1.00 in full
    pub.send("order", flow.order(order_id, [flow.gc_line(code, "5000.00")], "1.00", currency=currency))
    pub.send("payment", flow.payment(order_id, "1.00", currency=currency))
    # then one alert ORDER_TOTAL_MISMATCH, keyed by the order, names both sums; nothing is issued
    (alert,) = stream.wait_types(order_id, ["alert"])
    assert alert["payload"]["code"] == "ORDER_TOTAL_MISMATCH"
    assert (alert["payload"]["linesTotal"], alert["payload"]["orderTotal"]) == ("5000.00", "1.00")
    assert alert["payload"]["orderId"] == order_id and "certificateCode" not in alert["payload"]
    assert api.certificate(code)["status"] == "RESERVED"
    # when the order is corrected and the rest is captured, the certificate is issued as usual
    pub.send("order", flow.order(order_id, [flow.gc_line(code, "5000.00")], "5000.00", currency=currency,
                                 event_type="ORDER_UPDATED", minute=1))
    pub.send("payment", flow.payment(order_id, "4999.00", currency=currency))
    events = stream.wait_types(code, ["reserve", "issue", "notification.requested"])
    assert events[1]["payload"]["remainingBalance"] == "5000.00"
    assert len(stream.for_key(order_id)) == 1  # no second alert
    flow.assert_valid_stream(events + [alert])
