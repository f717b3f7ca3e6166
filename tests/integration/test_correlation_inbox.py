"""The inbox actor's own guarantees, against real PostgreSQL (no Kafka in between): a transient
fault rolls the whole message back, an order's messages are handled in their Kafka order whatever
the thread order, the actor takes the same order lock as ``lock_order``; and the client topic's
notification results and profiles."""
import pytest

from models.domain import locks, timeutil
from models.store.db import db
from models.store.tables import InboxMessage
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
    types,
)


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


def test_a_transient_fault_rolls_everything_back_and_the_retry_applies_once():
    code, order_id = reserved()
    deliver("order", sale(code, order_id))
    paid = flow.payment(order_id, "2000.00")
    # given a database fault in the middle of the payment's handling (a trigger refusing the
    # order update), the whole transaction is undone, inbox row included
    db.execute_sql("""CREATE OR REPLACE FUNCTION gcp_test_fault() RETURNS trigger AS $$
        BEGIN IF NEW.order_id = '%s' THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END
        $$ LANGUAGE plpgsql""" % order_id)
    db.execute_sql("CREATE TRIGGER gcp_test_fault BEFORE UPDATE ON sales_order FOR EACH ROW "
                   "EXECUTE FUNCTION gcp_test_fault()")
    try:
        with pytest.raises(Exception, match="injected fault"):
            deliver("payment", paid)
        assert cert(code).status == "RESERVED"
        assert InboxMessage.get(InboxMessage.event_id == paid["eventId"]).status == "PENDING"
    finally:
        db.execute_sql("DROP TRIGGER gcp_test_fault ON sales_order")
    # when retried, then it applies once
    deliver("payment", paid)
    assert cert(code).status == "ISSUED" and types(code).count("issue") == 1


def test_messages_of_one_order_are_handled_in_their_kafka_order_whatever_the_thread_order():
    from models.service.inbox import process

    code, order_id = sold()
    deliver("order", refund_order(code, order_id))
    failed = purchase_refund(order_id, code, "REFUND_FAILED", minute=7, refund={"requisitesRequired": True})
    paid = purchase_refund(order_id, code, minute=9)
    ids = []
    for offset, msg in ((41, failed), (42, paid)):  # the pump recorded both, in this order
        ids.append(InboxMessage.insert(event_id=msg["eventId"], topic=flow.topic_of("payment"), partition=2,
                                       offset=offset, message_key=order_id, payload=msg,
                                       received_at=timeutil.utcnow()).execute())
    # when a worker thread takes the later one first
    assert process(ids[1]) == "done"
    # then the earlier one was handled before it, in the same go
    assert [e for e in types(code)][-2:] == ["refund.pendingDetails", "refund"]
    assert process(ids[0]) == "skipped"
    assert InboxMessage.get_by_id(ids[0]).status == "DONE"


def test_the_inbox_actor_takes_the_very_lock_that_lock_order_takes():
    """The actor locks the order with the message's rows (one round trip); other paths call
    uow.lock_order. Both must lock the same key, or an order's messages and its scheduler expiry
    could race."""
    import threading

    from models.service.inbox import lock_and_load
    from models.service.unit_of_work import UnitOfWork

    order_id = uid("order-")
    msg = flow.payment(order_id, "10.00")
    inbox_id = (InboxMessage.insert(event_id=msg["eventId"], topic=flow.topic_of("payment"), partition=0,
                                    offset=0, message_key=order_id, payload=msg, received_at=timeutil.utcnow())
                .execute())
    held, release = threading.Event(), threading.Event()

    def actor_side():
        with db.connection_context(), UnitOfWork() as uow:
            lock_and_load(uow, inbox_id)
            held.set()
            release.wait(10)

    t = threading.Thread(target=actor_side)
    t.start()
    try:
        assert held.wait(10)
        # then the key uow.lock_order would lock is taken
        with db.atomic():
            taken = db.execute_sql("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                                   (locks.NAMESPACE + locks.ORDER + order_id,)).fetchone()[0]
        assert taken is False
    finally:
        release.set()
        t.join()
    with db.atomic():
        free = db.execute_sql("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                              (locks.NAMESPACE + locks.ORDER + order_id,)).fetchone()[0]
    assert free is True


def test_crm_notification_results_and_client_profiles():
    code = issued()
    deliver("client", flow.notification_result(code, "FAILED"))
    assert cert(code).notification_status == "NOTIFICATION_FAILED"
    deliver("client", flow.notification_result(code, "DELIVERED"))
    row = cert(code)
    assert row.notification_status == "NOTIFICATION_SENT" and row.cvc_encrypted is None
    assert types(code)[-2:] == ["notification.failed", "notification.sent"]
    # an unknown certificate gives an error event, the message is handled
    deliver("client", flow.notification_result("NOPE000000000"))
    assert events("NOPE000000000")[0]["payload"]["code"] == "CERTIFICATE_NOT_FOUND"
    # a profile update is kept (newest wins)
    client = uid("client-")
    for minute, phone in ((5, "+79990000005"), (1, "+79990000001")):
        deliver("client", {"eventId": flow.eid(), "eventType": "CLIENT_UPDATED", "occurredAt": flow.at(minute),
                           "clientId": client, "phone": phone})
    from models.store.tables import ClientProfile
    assert ClientProfile.get_by_id(client).phone == "+79990000005"
