"""The key of every ``error`` and ``alert`` the service emits (contract section 4, revision 3):
the certificate it names, else the order it names, else its subject, so an alert about a
certificate lands in that certificate's partition, in order with its events. Each kind is
raised here through its real use case against PostgreSQL and Redis; then every record is
checked against the rule, by the test and by ``verify``'s ``stream.key`` check."""
from decimal import Decimal

import pytest

from config import reset_settings
from models.domain import commands
from models.domain.errors import DomainError
from models.domain.events import alert_key
from models.service import messagebus
from models.store.db import db
from models.store.tables import OutboxEvent
from tests.e2e import flow
from tests.helpers import issued, load, uid, unique_code, unique_currency
from tests.integration.apikit import cvc_of
from tests.integration.corrkit import deliver, reserved
from workers.verify import check_alert_keys

D = Decimal


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


def test_the_rule():
    assert alert_key({"certificateCode": "C1", "orderId": "o-1"}, "pool:RUB/ELECTRONIC/OPEN") == "C1"
    assert alert_key({"orderId": "o-1"}, "pool:RUB/ELECTRONIC/OPEN") == "o-1"
    assert alert_key({}, "pool:RUB/ELECTRONIC/OPEN") == "pool:RUB/ELECTRONIC/OPEN"


def wrong_cvc(code: str, actor: str) -> str:
    try:
        messagebus.handle(commands.Authorize(code, "POS", uid("o-"), D("1.00"), "000000"
                                             if cvc_of(code) != "000000" else "111111"),
                          commands.Context(actor=actor, channel="POS"))
    except DomainError as refused:
        return refused.code
    raise AssertionError("a wrong CVC was accepted")


def raise_every_kind(monkeypatch) -> set[str]:
    """Raise each kind of error and alert once; returns the certificates and orders concerned."""
    concerned = set()
    currency = unique_currency()
    # LINE_MISMATCH (names the certificate and the order)
    code, order_id = reserved("5000.00", currency)
    deliver("order", flow.order(order_id, [flow.gc_line(code, "500.00")], "500.00", currency=currency))
    deliver("payment", flow.payment(order_id, "500.00", currency=currency))
    concerned |= {code, order_id}
    # ORDER_TOTAL_MISMATCH and CURRENCY_MISMATCH (name the order)
    code, order_id = reserved("5000.00", currency)
    deliver("order", flow.order(order_id, [flow.gc_line(code, "5000.00")], "1.00", currency=currency))
    deliver("payment", flow.payment(order_id, "1.00", currency=currency))
    deliver("payment", flow.payment(order_id, "9.00", currency="XTS"))
    concerned |= {code, order_id}
    # ORDER_CANCELLED_AFTER_PAYMENT and PAID_AFTER_CANCEL (name the order)
    code, order_id = reserved("100.00", currency)
    deliver("order", flow.order(order_id, [flow.gc_line(code, "100.00")], "100.00", currency=currency))
    deliver("payment", flow.payment(order_id, "100.00", event_type="PAYMENT_AUTHORIZED", currency=currency))
    deliver("order", flow.order(order_id, [flow.gc_line(code, "100.00")], "100.00", currency=currency,
                                event_type="ORDER_CANCELLED", minute=1))
    deliver("payment", flow.payment(order_id, "100.00", currency=currency, minute=2))
    concerned |= {code, order_id}
    # an error for a refused effect: the purchase refund of a spent certificate (names both)
    code, order_id = reserved("100.00", currency)
    deliver("order", flow.order(order_id, [flow.gc_line(code, "100.00")], "100.00", currency=currency))
    deliver("payment", flow.payment(order_id, "100.00", currency=currency))
    messagebus.handle(commands.Redeem(code, D("100.00"), currency), commands.Context(causation_id=uid("e-")))
    deliver("order", flow.order(order_id, [flow.gc_line(code, "100.00")], "100.00", currency=currency,
                                event_type="ORDER_REFUNDED", refund_lines=[{"lineId": "1", "amount": "100.00"}],
                                minute=3))
    concerned |= {code, order_id}
    # CAPTURE_MISMATCH (names the certificate)
    code = issued("100.00", currency)
    messagebus.handle(commands.ConfirmCapture(code, D("10.00"), "auth-" + "0" * 32))
    concerned.add(code)
    # NOTIFICATION_FAILED (names the certificate)
    code = issued("100.00", currency)
    messagebus.handle(commands.RecordSmsOutcome(code, uid("n-"), False, "gateway down", alert=True))
    concerned.add(code)
    # an All_Clients error: a notification result about an unknown certificate
    code = unique_code()
    deliver("client", flow.notification_result(code))
    concerned.add(code)
    # CVC_ATTEMPTS (the certificate locks) and CVC_ATTEMPTS_EXCEEDED (the client's budget)
    monkeypatch.setenv("CVC_CLIENT_BUDGET", "7/10 minutes")
    reset_settings()
    try:
        first, second = issued("100.00", currency), issued("100.00", currency)
        actor = uid("till-")
        answers = [wrong_cvc(first, actor) for _ in range(5)] + [wrong_cvc(second, actor) for _ in range(3)]
    finally:
        monkeypatch.delenv("CVC_CLIENT_BUDGET")
        reset_settings()
    assert answers[-1] == "CVC_ATTEMPTS_EXCEEDED", answers
    concerned |= {first, second}
    # POOL_LOW_WATER (names neither: keyed by its pool segment)
    pool_currency = unique_currency()
    load(2, "100.00", pool_currency)
    messagebus.handle(commands.Reserve("ONLINE_STORE", uid("order-"), "1", D("100.00"), pool_currency))
    concerned.add(f"pool:{pool_currency}/ELECTRONIC/100.00")
    return concerned


def test_every_alert_and_error_is_keyed_by_what_it_names(monkeypatch):
    concerned = raise_every_kind(monkeypatch)
    rows = [r for r in OutboxEvent.select().where(OutboxEvent.event_type.in_(("alert", "error")))
            if r.message_key in concerned]
    kinds = {(r.event_type, r.envelope["payload"]["code"]) for r in rows}
    # then every kind was raised here
    expected = {("alert", "LINE_MISMATCH"), ("alert", "ORDER_TOTAL_MISMATCH"), ("error", "CURRENCY_MISMATCH"),
                ("alert", "ORDER_CANCELLED_AFTER_PAYMENT"), ("alert", "PAID_AFTER_CANCEL"),
                ("alert", "CAPTURE_MISMATCH"), ("alert", "NOTIFICATION_FAILED"), ("alert", "CVC_ATTEMPTS"),
                ("alert", "CVC_ATTEMPTS_EXCEEDED"), ("alert", "POOL_LOW_WATER")}
    assert expected <= kinds, expected - kinds
    assert sum(t == "error" for t, _ in kinds) >= 3, kinds  # the refused refund, the client's, the currency
    # and each is keyed by the certificate it names, else the order, else its subject
    for r in rows:
        payload = r.envelope["payload"]
        assert r.message_key == alert_key(payload, r.message_key) and r.message_key, (r.message_key, payload)
        if payload.get("certificateCode"):
            assert r.message_key == payload["certificateCode"], payload
        elif payload.get("orderId"):
            assert r.message_key == payload["orderId"], payload
        else:
            assert r.message_key.startswith("pool:"), payload
        flow.assert_valid_stream([r.envelope])
    # and verify's stream.key check agrees over the whole outbox
    with db.connection().cursor() as cur:
        assert check_alert_keys(cur) == []


def test_verify_names_an_alert_keyed_otherwise():
    code = issued("100.00", unique_currency())
    messagebus.handle(commands.ConfirmCapture(code, D("10.00"), "auth-" + "1" * 32))
    row = (OutboxEvent.select().where((OutboxEvent.message_key == code) & (OutboxEvent.event_type == "alert"))
           .get())
    OutboxEvent.update(message_key="somewhere-else").where(OutboxEvent.id == row.id).execute()
    with db.connection().cursor() as cur:
        (violation,) = [v for v in check_alert_keys(cur) if str(row.event_id) in v.subject]
    assert violation.rule == "stream.key" and code in violation.figures
