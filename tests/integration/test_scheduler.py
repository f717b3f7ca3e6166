"""The scheduler against real PostgreSQL: holds, reservations and certificates expire on time;
a refilled pool issues blocked paid orders at once (NOTIFY)."""
import threading
import time
from decimal import Decimal

import pytest

from models.domain import commands, timeutil
from models.service import messagebus
from models.service.unit_of_work import UnitOfWork
from models.store import cvc
from models.store.db import db
from models.store.tables import AuthorizationHold, BlockedIssue, GiftCertificate, OutboxEvent
from tests.e2e import flow
from tests.helpers import issued, load, uid, unique_currency

D = Decimal


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


def cert(code):
    return GiftCertificate.get(GiftCertificate.code == code)


def last_event(key):
    return OutboxEvent.select().where(OutboxEvent.message_key == key).order_by(OutboxEvent.id.desc()).first().envelope


def test_overdue_hold_expires_and_gives_the_money_back():
    from workers.scheduler import tick

    code = issued("1000.00")
    hold = messagebus.handle(commands.Authorize(code, "POS", "o-1", D("400.00"), cvc.decrypt(cert(code).cvc_encrypted)))
    # given the hold is past its expiry
    db.execute_sql("UPDATE authorization_hold SET expires_at = now() - interval '1 second' WHERE id = %s",
                   (hold["authorizationId"],))
    # when the scheduler ticks, then it is expired and announced
    assert hold["authorizationId"] in tick().holds_expired
    assert AuthorizationHold.get_by_id(hold["authorizationId"]).status == "EXPIRED"
    event = last_event(code)
    assert event["eventType"] == "authorization.expired" and event["payload"]["available"] == "1000.00"
    # and a second tick changes nothing
    assert hold["authorizationId"] not in tick().holds_expired


def test_lapsed_reservation_is_released_unless_its_order_saw_a_payment():
    from workers.scheduler import tick

    currency = unique_currency()
    free, kept = load(2, "500.00", currency)
    unpaid, paid = uid("order-"), uid("order-")
    messagebus.handle(commands.Reserve("ONLINE_STORE", unpaid, "1", D("500.00"), currency, code=free))
    messagebus.handle(commands.Reserve("ONLINE_STORE", paid, "1", D("500.00"), currency, code=kept))
    with UnitOfWork() as uow:
        uow.orders.record_payment_message(flow.payment(paid, "500.00", currency=currency), timeutil.utcnow())
    db.execute_sql("UPDATE gift_certificate SET reserved_until = now() - interval '1 second' "
                   "WHERE code IN (%s, %s)", (free, kept))
    # when the scheduler ticks
    released = tick().reservations_released
    # then only the unpaid one goes back to the pool
    assert free in released and kept not in released
    assert cert(free).status == "AVAILABLE" and cert(kept).status == "RESERVED"
    event = last_event(free)
    assert event["eventType"] == "release" and event["payload"]["reason"] == "RESERVATION_EXPIRED"
    assert event["correlationId"] == unpaid


def test_certificate_past_expires_at_expires():
    from workers.scheduler import tick

    code = issued("800.00")
    db.execute_sql("UPDATE gift_certificate SET expires_at = now() - interval '1 second' WHERE code = %s", (code,))
    assert code in tick().certificates_expired
    assert cert(code).status == "EXPIRED" and last_event(code)["eventType"] == "expire"


def test_a_batch_refilling_the_pool_issues_the_blocked_order_at_once():
    from workers.scheduler import Scheduler

    currency = unique_currency()
    order_id = uid("order-")
    with messagebus.transaction() as uow:
        uow.lock_order(order_id)
        BlockedIssue.create(order_id=order_id, line_id="1", channel="ONLINE_STORE", nominal=D("900.00"),
                            currency=currency, kind="ELECTRONIC", status="BLOCKED", created_at=timeutil.utcnow())
    scheduler, stop = Scheduler(), threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # the scheduler is listening
        # when a batch adds a fitting code
        code = load(1, "900.00", currency)[0]
        # then the blocked order gets it within moments (NOTIFY, not the one-minute fallback)
        deadline = time.monotonic() + 5
        while cert(code).status != "ISSUED" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cert(code).status == "ISSUED" and cert(code).order_id == order_id
        assert BlockedIssue.get(BlockedIssue.order_id == order_id).code == code
    finally:
        stop.set()
        thread.join(10)


def test_only_one_scheduler_works():
    from workers.scheduler import Scheduler

    first, second = Scheduler(), Scheduler()
    try:
        assert first.try_lead() and not second.try_lead()
    finally:
        first.conn.close()
        second.conn.close()
