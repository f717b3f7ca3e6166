"""The inbox actor: one input message, recorded by the pump in ``inbox_message``, handled once.

The pump hands over inbox row ids (``process_inbox_batch``, a poll's worth at a time; a row that
fails there goes on alone through ``process_inbox`` and its retries). The actor locks the row,
skips it unless it is still ``PENDING`` (a duplicate hand-over, a redelivery after a crash),
turns the message into its command and runs it through ``models.services.handle``; the row
becomes ``DONE`` in the same
transaction as every effect, so a message is applied exactly once. Transient faults raise and
Dramatiq retries with backoff; after the last retry the row becomes ``FAILED`` and the pump
sends the message to the DLQ. A lost connection (PostgreSQL restarting, failing over) is no
fault of the message: it never counts towards ``FAILED``, the row stays ``PENDING``, and the
pump's sweeper hands it over again once Dramatiq's retries are spent.
"""
from __future__ import annotations

import logging

import dramatiq

from actors.common import ensure_db, final_attempt
from config import get_settings
from observability import Outages, dependency_of

log = logging.getLogger("gcp.actors.inbox")
#: Outages of this worker process's dependencies, logged once each.
OUTAGES = Outages("worker")
#: The Dramatiq queue of input messages.
QUEUE = "gcp-inbox"
_MAX_RETRIES = get_settings().actor_max_retries


#: Lock the message's key (an order, or a CRM client), then read the pending rows of that key
#: up to this one. Two statements, one round trip; the key is built from ``models.orders``'
#: constants, as ``orders.lock_key`` builds it, so every path that locks an order locks the
#: same thing.
_LOCK_AND_LOAD = """
SELECT pg_advisory_xact_lock(hashtextextended(%(ns)s || CASE WHEN topic = %(clients)s
         THEN %(client)s || (payload->>'clientId') ELSE %(order)s || (payload->>'orderId') END, 0))
  FROM inbox_message WHERE id = %(id)s;
SELECT m.id, m.payload, m.topic FROM inbox_message h
  JOIN inbox_message m ON m.topic = h.topic AND m.partition = h.partition AND m."offset" <= h."offset"
   AND m.message_key IS NOT DISTINCT FROM h.message_key
 WHERE h.id = %(id)s AND m.status = 'PENDING'
 ORDER BY m."offset", m.id
   FOR UPDATE OF m"""


def _lock_key(source: str, message: dict) -> str:
    from models import locks

    if source == "All_Clients":
        return locks.CLIENT + message["clientId"]
    return locks.ORDER + message["orderId"]


def process(inbox_id: int) -> str:
    """Handle inbox row ``inbox_id`` if still pending. Returns what happened.

    Messages of one key (an order, a client) are handled in their Kafka order: under the key's
    lock, the earlier rows of the same partition still pending are handled first, in the same
    transaction. So the worker threads' parallelism never reorders one order's messages.
    """
    from models import locks, orders, services as svc
    from models.db import connection, db
    from workers.contracts import contract_name

    with connection():
        with svc.transaction(), orders.held_locks():
            # one round trip: the key's lock (from the row itself), then the key's earlier rows
            # of the same partition still pending, this one included, in Kafka order
            rows = db.execute_sql(_LOCK_AND_LOAD, {
                "id": inbox_id, "clients": get_settings().topic_clients, "ns": locks.NAMESPACE,
                "client": locks.CLIENT, "order": locks.ORDER}).fetchall()
            if inbox_id not in [r[0] for r in rows]:
                return "skipped"  # handled already (a duplicate hand-over), or meanwhile
            source = contract_name(rows[0][2])
            head = next(message for row_id, message, _topic in rows if row_id == inbox_id)
            orders.mark_locked(_lock_key(source, head))
            for row_id, message, _topic in rows:
                if row_id == inbox_id:
                    _handle(source, message, row_id)
                    continue
                try:
                    with db.atomic():  # an earlier message that fails waits for its own retries
                        _handle(source, message, row_id)
                except Exception as exc:
                    log.warning("earlier message %s of key %s failed, left to its own retries: %s",
                                row_id, _lock_key(source, head), exc)
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

    if dependency_of(error) is not None:  # the database went away: not the message's fault
        OUTAGES.failed(dependency_of(error), error)
        return
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
            OUTAGES.ok()
        except Exception as exc:
            if dependency_of(exc) is None:
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
        OUTAGES.ok()
    except Exception as exc:
        if dependency_of(exc) is None:
            log.warning("inbox row %s failed (%s retry left): %s", inbox_id,
                        "no" if final else "a", exc)
        record_failure(inbox_id, exc, final)
        if not final:
            raise
