"""Helpers of the ``verify`` tests (``test_verify_invariants.py``, ``test_verify_command_and_stream.py``):
deliver a Kafka message through the inbox as the pump does, sell a certificate as in
production, corrupt rows inside a transaction rolled back afterwards, and the rules a report
names."""
from __future__ import annotations

import contextlib
from decimal import Decimal

from models.domain import commands, timeutil
from models.service import messagebus
from models.store.db import db
from models.store.tables import GiftCertificate, InboxMessage
from tests.e2e import flow
from tests.helpers import load, uid

D = Decimal


def deliver(kind: str, msg: dict) -> None:
    """Record ``msg`` in the inbox as the pump does, then run the actor's body on it."""
    from models.service.inbox import process

    topic = flow.topic_of(kind)
    row = (InboxMessage.insert(event_id=msg["eventId"], topic=topic, partition=0, offset=0,
                               message_key=flow.key_of(kind, msg), payload=msg, received_at=timeutil.utcnow())
           .on_conflict_ignore().execute())
    process(row or InboxMessage.get(InboxMessage.event_id == msg["eventId"]).id)


def cert(code: str) -> GiftCertificate:
    return GiftCertificate.get(GiftCertificate.code == code)


def sell(nominal: str = "1500.00", currency: str = "RUB") -> tuple[str, str]:
    """A certificate reserved, ordered and paid in full through the inbox, as in production."""
    code = load(1, nominal, currency)[0]
    order_id = uid("order-")
    messagebus.handle(commands.Reserve("ONLINE_STORE", order_id, "1", D(nominal), currency, code=code))
    deliver("order", flow.order(order_id, [flow.gc_line(code, nominal)], nominal, currency=currency))
    deliver("payment", flow.payment(order_id, nominal, currency=currency))
    assert cert(code).status == "ISSUED"
    return code, order_id


@contextlib.contextmanager
def corrupted():
    """A transaction rolled back at the end: the corruption is seen by verify on this
    connection only, and never by anyone else."""
    with db.atomic() as txn:
        yield lambda sql, params=(): db.execute_sql(sql, params)
        txn.rollback()


def rules(lines: list[str]) -> set[str]:
    return {line.split(" ", 1)[0] for line in lines}
