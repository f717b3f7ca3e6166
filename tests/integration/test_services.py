"""The use cases against real PostgreSQL: lifecycle, ledger, outbox, audit."""
from decimal import Decimal

import pytest

from models.domain import commands
from models.domain.errors import DomainError
from models.service import messagebus
from models.store import queries
from models.store.db import db
from models.store.tables import AuditLog, GiftCertificate, Operation, OutboxEvent
from tests.helpers import issued, load, uid, unique_currency

D = Decimal


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


def stream(code):
    return [e.envelope for e in OutboxEvent.select().join(GiftCertificate)
            .where(GiftCertificate.code == code).order_by(OutboxEvent.id)]


def test_reserve_issue_authorize_capture_keeps_ledger_and_stream_in_step():
    # given a loaded certificate
    currency = unique_currency()
    code = load(1, "1500.00", currency)[0]
    order = uid("order-")
    # when it is reserved, issued, authorized and partly captured
    view = messagebus.handle(commands.Reserve("ONLINE_STORE", order, "1", D("1500.00"), currency))
    created = view.pop("created")
    assert created and view["code"] == code and view["status"] == "RESERVED"
    again = messagebus.handle(commands.Reserve("ONLINE_STORE", order, "1", D("1500.00"), currency))
    created2 = again.pop("created")
    assert not created2 and again["code"] == code
    messagebus.handle(commands.Issue(code))
    row = GiftCertificate.get(GiftCertificate.code == code)
    from models.store import cvc
    secret = cvc.decrypt(row.cvc_encrypted)
    hold = messagebus.handle(commands.Authorize(code, "POS", "o-2", D("600.00"), secret), commands.Context(actor="pos-1", channel="POS"))
    assert hold["available"] == "900.00"
    cap = messagebus.handle(commands.Capture(hold["authorizationId"], D("500.00")))
    # then the balance, the ledger and the stream agree
    assert cap == {"authorizationId": hold["authorizationId"], "code": code, "captured": "500.00",
                   "remainingBalance": "1000.00", "status": "PARTIALLY_REDEEMED", "currency": currency}
    total = sum(o.amount for o in Operation.select().join(GiftCertificate).where(GiftCertificate.code == code))
    assert total == D("1000.00")
    events = stream(code)
    assert [e["eventType"] for e in events] == ["reserve", "issue", "notification.requested",
                                               "authorization.created", "authorization.captured"]
    assert [e["sequence"] for e in events] == [1, 2, 3, 4, 5]
    assert events[-1]["payload"]["remainingBalance"] == "1000.00"
    assert AuditLog.select().where(AuditLog.code == code).count() == 5
    assert queries.certificate_view(code)["available"] == "1000.00"


def test_empty_pool_commits_issue_blocked_and_refuses():
    currency = unique_currency()
    order = uid("order-")
    with pytest.raises(DomainError) as err:
        messagebus.handle(commands.Reserve("ONLINE_STORE", order, "1", D("100.00"), currency))
    assert err.value.code == "POOL_EMPTY"
    blocked = OutboxEvent.get(OutboxEvent.message_key == order)
    assert blocked.event_type == "issue.blocked" and blocked.sequence is None
    assert blocked.envelope["payload"]["reason"] == "POOL_EMPTY"


def test_wrong_cvc_five_times_locks_with_alert():
    code = issued()
    for i in range(5):
        with pytest.raises(DomainError) as err:
            messagebus.handle(commands.Authorize(code, "POS", "o", D("1.00"), "000000x"))
        assert err.value.code == "CVC_MISMATCH"
    row = GiftCertificate.get(GiftCertificate.code == code)
    assert row.status == "LOCKED" and row.lock_reason == "CVC_ATTEMPTS"
    types = [e["eventType"] for e in stream(code)]
    assert types[-1] == "lock"
    assert OutboxEvent.select().where((OutboxEvent.message_key == code) & (OutboxEvent.event_type == "alert")).count() == 1
    with pytest.raises(DomainError) as err:
        messagebus.handle(commands.Authorize(code, "POS", "o", D("1.00"), "123456"))
    assert err.value.code == "NOT_REDEEMABLE"
