"""Contract revision 2 (2026-12-01), tried as a channel would: payments in another currency,
the /cvc answers, the operation's order in money-movement events, cancel from LOCKED."""
from decimal import Decimal

from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import GiftCertificate
from tests.e2e import flow
from tests.helpers import issued, load, uid, unique_currency
from tests.integration.apikit import auth, authorize, cvc_of
from tests.integration.corrkit import deliver, events

D = Decimal


def test_a_captured_payment_in_another_currency_gets_a_currency_mismatch_error(stack):
    currency = unique_currency()
    (code,) = load(1, "1000.00", currency)
    order_id = uid("order-")
    with db.connection_context():
        messagebus.handle(commands.Reserve("ONLINE_STORE", order_id, "1", D("1000.00"), currency, code=code))
        deliver("order", flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00", currency=currency))
        # when Payments captures the total, but in EUR, and the same message comes twice
        eur = flow.payment(order_id, "1000.00", currency="EUR")
        deliver("payment", eur)
        deliver("payment", dict(eur, eventId=flow.eid()))
        # then nothing is issued, and one error says why
        assert GiftCertificate.get(GiftCertificate.code == code).status == "RESERVED"
        said = [e for e in events(order_id) if e["eventType"] == "error"]
    assert len(said) == 1
    payload = said[0]["payload"]
    assert payload["code"] == "CURRENCY_MISMATCH" and payload["source"] == "All_Payments"
    assert payload["paymentId"] == eur["paymentId"] and "EUR" in payload["message"]
    flow.assert_valid_stream(said)


def test_the_cvc_answers_with_nothing_pending_and_once_disclosed(client):
    crm = auth("certificates:cvc")
    currency = unique_currency()
    (reserved_code,) = load(1, "1000.00", currency)
    with db.connection_context():
        messagebus.handle(commands.Reserve("POS", uid("o-"), "1", D("1000.00"), currency, code=reserved_code))
    # a reserved certificate: nothing to disclose yet
    resp = client.get(f"/certificates/{reserved_code}/cvc", headers=crm)
    assert resp.status_code == 409 and resp.json["code"] == "NO_NOTIFICATION_PENDING"
    # an issued one: once, then CVC_ALREADY_DISCLOSED
    code = issued()
    first = client.get(f"/certificates/{code}/cvc", headers=crm)
    assert first.status_code == 200 and first.json["cvc"] == cvc_of(code)
    second = client.get(f"/certificates/{code}/cvc", headers=crm)
    assert second.status_code == 409 and second.json["code"] == "CVC_ALREADY_DISCLOSED"
    # delivery confirmed: nothing pending any more
    with db.connection_context():
        messagebus.handle(commands.NotificationResult(code, True))
    third = client.get(f"/certificates/{code}/cvc", headers=crm)
    assert third.status_code == 409 and third.json["code"] == "NO_NOTIFICATION_PENDING"


def money_events(code: str) -> dict[str, dict]:
    with db.connection_context():
        return {e["eventType"]: e["payload"] for e in events(code)}


def test_money_movement_events_name_the_operations_order_and_amount(client):
    code = issued("1000.00")
    sale_order = client.get(f"/certificates/{code}", headers=auth("certificates:read")).json["orderId"]
    cvc = cvc_of(code)
    # API: authorize + capture for one order, authorize + void for another
    buy = uid("buy-")
    hold = client.post(f"/certificates/{code}/authorizations", headers=auth(channel="POS"), json={
        "channel": "POS", "orderId": buy, "amount": "300.00", "cvc": cvc}).json
    assert client.post(f"/authorizations/{hold['authorizationId']}/capture", headers=auth(channel="POS"),
                       json={"amount": "250.00"}).status_code == 200
    other = uid("other-")
    held = client.post(f"/certificates/{code}/authorizations", headers=auth(channel="POS"), json={
        "channel": "POS", "orderId": other, "amount": "50.00", "cvc": cvc}).json
    assert client.post(f"/authorizations/{held['authorizationId']}/void", headers=auth(channel="POS")).status_code == 200
    # Kafka: a redemption, then a refund onto the certificate, by a third order
    shop = uid("shop-")
    with db.connection_context():
        deliver("order", flow.order(shop, [flow.product_line("100.00", "1")], "100.00", channel="POS",
                                    tenders=[flow.gc_tender(code, "100.00")]))
        deliver("payment", flow.payment(shop, "100.00", channel="POS", method="GIFT_CERTIFICATE",
                                        gc={"code": code, "operation": "REDEMPTION", "amount": "100.00"}))
        deliver("payment", flow.payment(shop, "40.00", event_type="PAYMENT_REFUNDED", channel="POS",
                                        method="GIFT_CERTIFICATE",
                                        gc={"code": code, "operation": "REFUND", "amount": "40.00"}))
        deliver("order", flow.order(shop, [flow.product_line("100.00", "1")], "100.00", channel="POS",
                                    event_type="ORDER_REFUNDED", refund_lines=[{"lineId": "1", "amount": "40.00"}]))
    seen = money_events(code)
    expected = {"authorization.created": (other, "50.00"), "authorization.captured": (buy, "250.00"),
                "authorization.voided": (other, "50.00"), "redeem.partial": (shop, "100.00"),
                "refund": (shop, "40.00")}
    for event_type, (order_id, amount) in expected.items():
        assert seen[event_type]["orderId"] == order_id, (event_type, seen[event_type])
        assert seen[event_type]["amount"] == amount, (event_type, seen[event_type])
    # the issue still names the sale, and so does the certificate
    assert seen["issue"]["orderId"] == sale_order
    view = client.get(f"/certificates/{code}", headers=auth("certificates:read")).json
    assert view["orderId"] == sale_order and view["remainingBalance"] == "690.00"


def test_a_locked_certificate_can_be_cancelled(client):
    code = issued()
    admin = auth("certificates:admin")
    assert client.post(f"/certificates/{code}/actions/lock", headers=admin, json={"reason": "FRAUD"}).status_code == 200
    resp = client.post(f"/certificates/{code}/actions/cancel", headers=admin, json={"reason": "FRAUD_CONFIRMED"})
    assert resp.status_code == 200 and resp.json["status"] == "CANCELLED"
    assert [e["eventType"] for e in events(code)][-2:] == ["lock", "cancel"]
