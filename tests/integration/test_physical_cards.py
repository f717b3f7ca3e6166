"""Physical cards (contract revision 2): the batch brings each card's printed CVC, the service
keeps only its keyed hash, and the card sold at a POS authorizes with the printed CVC."""
import pytest

from models.store import cvc as cvc_secret
from models.store.db import db
from models.store.tables import AuditLog, GiftCertificate, IdempotencyKey, OutboxEvent
from tests.e2e import flow
from tests.helpers import uid, unique_code, unique_currency
from tests.integration.apikit import auth
from tests.integration.corrkit import deliver

PRINTED = "739164"


def load_physical(client, currency, code, cvc=PRINTED, **extra):
    return client.post("/batches", headers={**auth("batches:write"), "Idempotency-Key": uid("k-")}, json={
        "batchId": uid("phys-"), "kind": "PHYSICAL", "currency": currency,
        "certificates": [{"code": code, "nominal": "3000.00", "cvc": cvc, **extra}]})


def test_a_printed_card_is_loaded_sold_at_a_pos_authorized_with_its_cvc_and_captured(client):
    currency, code = unique_currency(), unique_code("PC")
    # given a physical batch with the CVC printed under the card's scratch panel
    assert load_physical(client, currency, code).status_code == 201
    with db.connection_context():
        row = GiftCertificate.get(GiftCertificate.code == code)
    assert row.cvc_encrypted is None and row.cvc_key_id == cvc_secret.current_key_id()
    assert cvc_secret.matches(code, PRINTED, row.cvc_hash, row.cvc_key_id)
    # when the card is scanned and sold at a POS
    pos = auth(("certificates:reserve", "certificates:read", "certificates:redeem"), channel="POS")
    order_id = uid("pos-")
    reserved = client.post("/certificates/next", headers=pos, json={
        "channel": "POS", "orderId": order_id, "lineId": "1", "nominal": "3000.00", "currency": currency,
        "code": code})
    assert reserved.status_code == 201, reserved.json
    with db.connection_context():
        deliver("order", flow.order(order_id, [flow.gc_line(code, "3000.00")], "3000.00", channel="POS",
                                    currency=currency, phone=None))
        deliver("payment", flow.payment(order_id, "3000.00", channel="POS", currency=currency, method="CASH"))
    view = client.get(f"/certificates/{code}", headers=pos).json
    assert view["status"] == "ISSUED" and view["notificationStatus"] is None
    # then it is never notified nor disclosed
    cvc = client.get(f"/certificates/{code}/cvc", headers=auth("certificates:cvc"))
    assert cvc.status_code == 409 and cvc.json["code"] == "NO_NOTIFICATION_PENDING"
    # and the printed CVC authorizes, and the hold captures
    hold = client.post(f"/certificates/{code}/authorizations", headers=pos, json={
        "channel": "POS", "orderId": uid("buy-"), "amount": "1200.00", "cvc": PRINTED})
    assert hold.status_code == 201, hold.json
    captured = client.post(f"/authorizations/{hold.json['authorizationId']}/capture", headers=pos)
    assert captured.status_code == 200 and captured.json["remainingBalance"] == "1800.00"
    # and the plain CVC is stored nowhere: not in the row, the audit, the outbox, the idempotency keys
    with db.connection_context():
        texts = [str(r.__data__) for r in GiftCertificate.select().where(GiftCertificate.code == code)]
        texts += [str(a.__data__) for a in AuditLog.select().where(AuditLog.code == code)]
        texts += [str(e.envelope) for e in OutboxEvent.select().where(OutboxEvent.message_key == code)]
        texts += [str(k.__data__) for k in IdempotencyKey.select()]
    assert not any(PRINTED in t for t in texts)


def test_the_brute_force_lock_applies_to_a_printed_card(client):
    currency, code = unique_currency(), unique_code("PC")
    assert load_physical(client, currency, code).status_code == 201
    pos = auth(("certificates:reserve", "certificates:redeem", "certificates:read"), channel="POS")
    order_id = uid("pos-")
    client.post("/certificates/next", headers=pos, json={
        "channel": "POS", "orderId": order_id, "lineId": "1", "nominal": "3000.00", "currency": currency,
        "code": code})
    with db.connection_context():
        deliver("order", flow.order(order_id, [flow.gc_line(code, "3000.00")], "3000.00", channel="POS",
                                    currency=currency, phone=None))
        deliver("payment", flow.payment(order_id, "3000.00", channel="POS", currency=currency))
    answers = [client.post(f"/certificates/{code}/authorizations", headers=pos, json={
        "channel": "POS", "orderId": uid("o-"), "amount": "1.00", "cvc": "000000"}).status_code
        for _ in range(5)]
    assert answers == [403] * 5
    view = client.get(f"/certificates/{code}", headers=pos).json
    assert view["status"] == "LOCKED" and view["lockReason"] == "CVC_ATTEMPTS"


@pytest.mark.parametrize("kind, item, message", [
    ("ELECTRONIC", {"cvc": "123456"}, "an ELECTRONIC certificate brings no CVC"),
    ("PHYSICAL", {}, "a PHYSICAL card needs its printed CVC"),
    ("PHYSICAL", {"cvc": "12345"}, "a PHYSICAL card needs its printed CVC"),
    ("PHYSICAL", {"cvc": "12a456"}, "a PHYSICAL card needs its printed CVC"),
])
def test_a_cvc_is_required_for_physical_cards_and_refused_for_electronic_ones(client, kind, item, message):
    code = unique_code("PC")
    resp = client.post("/batches", headers=auth("batches:write"), json={
        "batchId": uid("b-"), "kind": kind, "currency": unique_currency(),
        "certificates": [{"code": code, "nominal": "100.00", **item}]})
    assert resp.status_code == 422 and resp.json["code"] == "VALIDATION_ERROR"
    assert message in str(resp.json["details"]["fields"]["json"]["certificates"]["0"]["cvc"])
    with db.connection_context():
        assert not GiftCertificate.select().where(GiftCertificate.code == code).exists()
