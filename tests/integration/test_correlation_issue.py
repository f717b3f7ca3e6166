"""The inbox actor issuing sold certificates, against real PostgreSQL (no Kafka in between):
an order and its payments in either order, partial payments, a lost reservation resold or
blocked on an empty pool, and a cancelled order. Each message goes through the inbox exactly as
the pump leaves it."""
from decimal import Decimal

import pytest

from models.domain import commands
from models.service import messagebus
from models.store import repository
from models.store.db import db
from models.store.tables import BlockedIssue
from tests.e2e import flow
from tests.helpers import load, uid, unique_currency
from tests.integration.corrkit import cert, deliver, events, reserved, sale, types

D = Decimal


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


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
