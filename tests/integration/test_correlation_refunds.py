"""The inbox actor refunding certificates, against real PostgreSQL (no Kafka in between): a
purchase refund to the buyer (pending, needing requisites, refused once fully redeemed), a refund
credited back onto a certificate, and a whole sale-and-refund story delivered in reverse. Each
message goes through the inbox exactly as the pump leaves it."""
from decimal import Decimal

import pytest

from models.domain import commands
from models.service import messagebus
from models.store.db import db
from tests.e2e import flow
from tests.helpers import issued, uid
from tests.integration.corrkit import (
    cert,
    deliver,
    events,
    purchase_refund,
    refund_order,
    reserved,
    sale,
    sold,
)

D = Decimal


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


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
