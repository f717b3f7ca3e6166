"""Helpers of the inbox actor and correlation tests (``test_correlation_*.py``, and the tests of
alert keys, physical cards and contract revision 2): deliver a Kafka message through the inbox
exactly as the pump leaves it, read a key's outbox events, and set up reserved, sold and refunded
certificates."""
from decimal import Decimal

from models.domain import commands, timeutil
from models.service import messagebus
from models.store.tables import GiftCertificate, InboxMessage, OutboxEvent
from tests.e2e import flow
from tests.helpers import load, uid

D = Decimal


def deliver(kind: str, msg: dict) -> str:
    """Record ``msg`` in the inbox as the pump does, then run the actor's body on it."""
    from models.service.inbox import process

    topic = flow.topic_of(kind)
    row = (InboxMessage.insert(event_id=msg["eventId"], topic=topic, partition=0, offset=0,
                               message_key=flow.key_of(kind, msg), payload=msg, received_at=timeutil.utcnow())
           .on_conflict_ignore().execute())
    inbox_id = row or InboxMessage.get(InboxMessage.event_id == msg["eventId"]).id
    return process(inbox_id)


def events(key: str) -> list[dict]:
    return [e.envelope for e in OutboxEvent.select().where(OutboxEvent.message_key == key)
            .order_by(OutboxEvent.id)]


def types(key: str) -> list[str]:
    return [e["eventType"] for e in events(key)]


def cert(code: str) -> GiftCertificate:
    return GiftCertificate.get(GiftCertificate.code == code)


def reserved(nominal="1500.00", currency="RUB", channel="ONLINE_STORE"):
    code = load(1, nominal, currency)[0]
    order_id = uid("order-")
    messagebus.handle(commands.Reserve(channel, order_id, "1", D(nominal), currency, code=code))
    return code, order_id


def sale(code, order_id, nominal="1500.00", **kw):
    return flow.order(order_id, [flow.gc_line(code, nominal), flow.product_line("500.00")],
                      str(D(nominal) + 500), **kw)


def sold(nominal="1500.00"):
    code, order_id = reserved(nominal)
    deliver("order", sale(code, order_id, nominal))
    deliver("payment", flow.payment(order_id, str(D(nominal) + 500), payment_id="pay-1" + order_id))
    assert cert(code).status == "ISSUED"
    return code, order_id


def refund_order(code, order_id, amount="1500.00", minute=5):
    return flow.order(order_id, [flow.gc_line(code, "1500.00")], "2000.00", event_type="ORDER_REFUNDED",
                      refund_lines=[{"lineId": "1", "amount": amount}], minute=minute)


def purchase_refund(order_id, code, event_type="PAYMENT_REFUNDED", minute=9, **extra):
    return flow.payment(order_id, "1500.00", event_type=event_type, payment_id="pay-1r" + order_id,
                        gc={"code": code, "operation": "PURCHASE"}, minute=minute, **extra)
