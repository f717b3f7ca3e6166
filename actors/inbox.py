"""The inbox actor: one input message, recorded by the pump in ``inbox_message``, handled once.

The pump hands over inbox row ids (``process_inbox_batch``, a poll's worth at a time; a row that
fails there goes on alone through ``process_inbox`` and its retries). The actor locks the row,
skips it unless it is still ``PENDING`` (a duplicate hand-over, a redelivery after a crash),
turns the message into its command and runs it through ``models.services.handle``; the row
becomes ``DONE`` in the same
transaction as every effect, so a message is applied exactly once. Transient faults raise and
Dramatiq retries with backoff; after the last retry the row becomes ``FAILED`` and the pump
sends the message to the DLQ.
"""
from __future__ import annotations

import logging

import dramatiq

from actors.common import ensure_db, final_attempt
from config import get_settings

log = logging.getLogger("gcp.actors.inbox")
#: The Dramatiq queue of input messages.
QUEUE = "gcp-inbox"
_MAX_RETRIES = get_settings().actor_max_retries


def process(inbox_id: int) -> str:
    """Handle inbox row ``inbox_id`` if still pending. Returns what happened.

    Messages of one key (an order, a client) are handled in their Kafka order: under the key's
    lock, the earlier rows of the same partition still pending are handled first, in the same
    transaction. So the worker threads' parallelism never reorders one order's messages.
    """
    from models import orders, services as svc
    from models.db import connection, db
    from workers.contracts import contract_name

    with connection():
        with svc.transaction(), orders.held_locks():
            head = db.execute_sql(
                'SELECT status, topic, partition, "offset", message_key, payload FROM inbox_message'
                " WHERE id = %s", (inbox_id,)).fetchone()
            if head is None or head[0] != "PENDING":
                return "skipped"
            _status, topic, partition, offset, key, payload = head
            source = contract_name(topic)
            if source == "All_Clients":
                orders.lock_key("client:" + payload["clientId"])
            else:
                orders.lock_order(payload["orderId"])
            rows = db.execute_sql(
                'SELECT id, payload FROM inbox_message WHERE topic = %s AND partition = %s AND "offset" <= %s'
                " AND message_key IS NOT DISTINCT FROM %s AND status = 'PENDING' ORDER BY \"offset\", id"
                " FOR UPDATE", (topic, partition, offset, key)).fetchall()
            if inbox_id not in [r[0] for r in rows]:
                return "skipped"  # handled meanwhile, with an earlier message of its key
            for row_id, message in rows:
                if row_id == inbox_id:
                    _handle(source, message, row_id)
                    continue
                try:
                    with db.atomic():  # an earlier message that fails waits for its own retries
                        _handle(source, message, row_id)
                except Exception as exc:
                    log.warning("earlier message %s of key %s failed, left to its own retries: %s",
                                row_id, key, exc)
    return "done"


def _handle(source: str, payload: dict, inbox_id: int) -> None:
    from models import orders, services as svc
    from models.db import db

    commands = {"All_SalesOrder": orders.OrderMessage, "All_Payments": orders.PaymentMessage,
                "All_Clients": orders.ClientMessage}
    outcome = svc.handle(commands[source](payload), orders.message_context(payload, source))
    db.defer("UPDATE inbox_message SET status = 'DONE', processed_at = now(),"
             " attempts = attempts + 1 WHERE id = %s", (inbox_id,))  # sent with the COMMIT
    log.debug("message handled", extra={"eventId": payload.get("eventId"), "source": source,
                                       "effects": outcome.effects, "note": outcome.note})


def record_failure(inbox_id: int, error: BaseException, final: bool) -> None:
    """Count a failed attempt; after the last one the row is FAILED (the pump dead-letters it)."""
    from models.db import connection, db

    text = f"{type(error).__name__}: {error}"[:1000]
    try:
        with connection(), db.atomic():
            db.execute_sql(
                "UPDATE inbox_message SET attempts = attempts + 1, last_error = %s, "
                "status = CASE WHEN %s THEN 'FAILED' ELSE status END WHERE id = %s AND status = 'PENDING'",
                (text, final, inbox_id))
    except Exception:  # the database itself is down: Dramatiq retries, the sweeper re-sends
        log.exception("could not record the failure of inbox row %s", inbox_id)
        if final:
            raise


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def process_inbox_batch(inbox_ids: list[int]) -> None:
    """Handle a batch of inbox rows (the pump's hand-over of one poll), each in its own
    transaction. A row that fails is counted and handed to :func:`process_inbox`, whose retries
    with backoff (and, after the last, the DLQ) are per message."""
    ensure_db()
    for inbox_id in inbox_ids:
        try:
            process(inbox_id)
        except Exception as exc:
            log.warning("inbox row %s failed, retrying it on its own: %s", inbox_id, exc)
            record_failure(inbox_id, exc, final=False)
            process_inbox.send_with_options(args=(inbox_id,), delay=get_settings().actor_min_backoff_ms)


@dramatiq.actor(queue_name=QUEUE, max_retries=_MAX_RETRIES)
def process_inbox(inbox_id: int) -> None:
    """Handle one inbox row (the pump's hand-over)."""
    ensure_db()
    final = final_attempt(_MAX_RETRIES)
    try:
        process(inbox_id)
    except Exception as exc:
        log.warning("inbox row %s failed (%s retry left): %s", inbox_id,
                    "no" if final else "a", exc)
        record_failure(inbox_id, exc, final)
        if not final:
            raise
