"""The inbox use cases: one input message, recorded by the pump in ``inbox_message``, applied once.

:func:`process` locks the message's key and its row, and skips it unless it is still
``PENDING`` (a duplicate hand-over, a redelivery after a crash); it turns the message into its
command and runs it through ``models.service.messagebus.handle``. The row becomes ``DONE`` in
the same transaction as every effect, so a message is applied exactly once. Messages of one key
(an order, a CRM client) are applied in their Kafka order. :func:`record_failure` counts a
failed attempt; the actor (``actors/inbox.py``) owns the retries.
"""
from __future__ import annotations

import logging

from config import get_settings
from models.domain import commands, locks
from models.domain.errors import failure_summary
from models.service.handlers import orders
from models.service.unit_of_work import UnitOfWork
from models.store.db import connection

log = logging.getLogger("gcp.inbox")
#: The command of each input topic's messages, and its handler (the one
#: ``models.service.messagebus.COMMAND_HANDLERS`` names).
COMMAND_OF = {commands.SALES_ORDER: (commands.OrderMessage, orders.on_order_message),
              commands.PAYMENTS: (commands.PaymentMessage, orders.on_payment_message),
              commands.CLIENTS: (commands.ClientMessage, orders.on_client_message)}

#: What the message is about: its topic and the subject it names.
_HEAD = ("SELECT topic, payload->>'orderId', payload->>'clientId' FROM inbox_message"
         " WHERE id = %s AND status = 'PENDING'")
#: The pending rows of the message's key up to this one, in Kafka order, locked.
_PENDING_UP_TO = """
SELECT m.id, m.payload, m.topic FROM inbox_message h
  JOIN inbox_message m ON m.topic = h.topic AND m.partition = h.partition AND m."offset" <= h."offset"
   AND m.message_key IS NOT DISTINCT FROM h.message_key
 WHERE h.id = %(id)s AND m.status = 'PENDING'
 ORDER BY m."offset", m.id
   FOR UPDATE OF m"""


def subject_key(source: str, order_id: str | None, client_id: str | None) -> str | None:
    """The transaction lock of an input message: its CRM client, else its order (None: it
    names neither, which its schema never lets through)."""
    if source == commands.CLIENTS:
        return locks.client_key(client_id) if client_id is not None else None
    return locks.order_key(order_id) if order_id is not None else None


def lock_and_load(uow: UnitOfWork, inbox_id: int) -> tuple[str, list[tuple[int, dict, str]]]:
    """Under the message's key's lock, the key's earlier rows of the same partition still
    pending, this one included, in Kafka order (locked). Returns the source (the topic's
    contract name) and the rows; no rows when the message is not pending any more."""
    head = uow.execute(_HEAD, (inbox_id,)).fetchone()
    if head is None:
        return "", []
    topic, order_id, client_id = head
    source = get_settings().contract_of(topic)
    rows = uow.execute(_PENDING_UP_TO, {"id": inbox_id}, lock=subject_key(source, order_id, client_id))
    return source, rows.fetchall()


def process_message(cmd: commands.ProcessInboxMessage, ctx: commands.Context) -> str:
    """The bus's entry to :func:`process`."""
    return process(cmd.inbox_id)


def process(inbox_id: int) -> str:
    """Handle inbox row ``inbox_id`` if still pending. Returns what happened (``done``,
    ``skipped``).

    Messages of one key (an order, a client) are handled in their Kafka order: under the key's
    lock, the earlier rows of the same partition still pending are handled first, in the same
    transaction. So the worker threads' parallelism never reorders one order's messages.
    """
    with connection(), UnitOfWork() as uow:
        source, rows = lock_and_load(uow, inbox_id)
        if inbox_id not in [row_id for row_id, _message, _topic in rows]:
            return "skipped"  # handled already (a duplicate hand-over), or meanwhile
        for row_id, message, _topic in rows:
            if row_id == inbox_id:
                _handle(uow, source, message, row_id)
                continue
            # a savepoint: an earlier message that fails waits for its own retries, and
            # takes its recorded effects (its queued writes) with it
            try:
                with UnitOfWork() as earlier:
                    _handle(earlier, source, message, row_id)
            except Exception as exc:
                log.warning("earlier message %s of inbox row %s failed, left to its own retries: %s",
                            row_id, inbox_id, failure_summary(exc))
    return "done"


def _handle(uow: UnitOfWork, source: str, payload: dict, inbox_id: int) -> None:
    command, handler = COMMAND_OF[source]
    handled = handler(command(payload), orders.message_context(payload, source))
    uow.queue("UPDATE inbox_message SET status = 'DONE', processed_at = now(),"
              " attempts = attempts + 1 WHERE id = %s", (inbox_id,))  # sent with the COMMIT
    log.debug("message handled", extra={"eventId": payload.get("eventId"), "source": source,
                                       "effects": handled["effects"], "note": handled["note"]})


def record_failure(cmd: commands.RecordInboxFailure, ctx: commands.Context) -> str:
    """Count a failed attempt of a message (not of its database: the caller tells those apart);
    after the last one the row is FAILED and the pump dead-letters it. Returns what the row
    says of the failure (:func:`~models.domain.errors.failure_summary`)."""
    text = failure_summary(cmd.error)
    with connection(), UnitOfWork(ctx) as uow:
        uow.execute(
            "UPDATE inbox_message SET attempts = attempts + 1, last_error = %s, "
            "status = CASE WHEN %s THEN 'FAILED' ELSE status END WHERE id = %s AND status = 'PENDING'",
            (text, cmd.final, cmd.inbox_id))
    return text
