"""Cross-channel and line safety of issuing (contract section 4, Issue), against real PostgreSQL:
an order line is issued only with its own channel's reservation, never one that contradicts it in
amount, currency or code, and never while the certificate lines exceed the order's total; each
refusal is one alert keyed as the contract says."""
from decimal import Decimal

import pytest

from models.domain import commands, timeutil
from models.service import messagebus
from models.store.db import db
from models.store.tables import GiftCertificate, OrderEffect, OutboxEvent
from tests.e2e import flow
from tests.helpers import load, uid, unique_currency
from tests.integration.corrkit import cert, deliver, events, reserved, types

D = Decimal


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


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
