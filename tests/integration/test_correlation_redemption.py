"""The inbox actor redeeming certificates tendered in orders, against real PostgreSQL (no Kafka
in between): tender and capture in either order, a debit beyond the balance, a tender naming an
API capture, and an order kept only once a certificate concerns it. Each message goes through
the inbox exactly as the pump leaves it."""
from decimal import Decimal

import pytest

from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import AuthorizationHold, OrderEffect
from tests.e2e import flow
from tests.helpers import issued, uid
from tests.integration.corrkit import cert, deliver, events

D = Decimal


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


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
                      commands.Context(actor="web", channel="ONLINE_STORE"))
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
