"""The inbox use case: one input message, recorded by the pump in ``inbox_message``, applied once.

:func:`process` locks the row and skips it unless it is still ``PENDING`` (a duplicate
hand-over, a redelivery after a crash), turns the message into its command and runs it through
``models.service.messagebus.handle``; the row becomes ``DONE`` in the same transaction as every effect,
so a message is applied exactly once. Messages of one key (an order, a CRM client) are applied
in their Kafka order. :func:`record_failure` counts a failed attempt; the actor
(``actors/inbox.py``) owns the retries.
"""
from __future__ import annotations

import logging
from pathlib import Path

from config import get_settings
from models.domain import commands, locks
from models.domain.errors import DomainError
from models.service import messagebus
from models.service import unit_of_work as work
from models.service.handlers import orders
from models.store.db import connection, db

log = logging.getLogger("gcp.inbox")
#: The command of each input topic's messages.
COMMAND_OF = {"All_SalesOrder": commands.OrderMessage, "All_Payments": commands.PaymentMessage,
              "All_Clients": commands.ClientMessage}


#: Lock the message's key (an order, or a CRM client), then read the pending rows of that key
#: up to this one. Two statements, one round trip; the key is built from ``models.domain.locks``'
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
    if source == "All_Clients":
        return locks.CLIENT + message["clientId"]
    return locks.ORDER + message["orderId"]


def process(inbox_id: int) -> str:
    """Handle inbox row ``inbox_id`` if still pending. Returns what happened.

    Messages of one key (an order, a client) are handled in their Kafka order: under the key's
    lock, the earlier rows of the same partition still pending are handled first, in the same
    transaction. So the worker threads' parallelism never reorders one order's messages.
    """
    with connection():
        with work.transaction(), orders.held_locks():
            # one round trip: the key's lock (from the row itself), then the key's earlier rows
            # of the same partition still pending, this one included, in Kafka order
            rows = db.execute_sql(_LOCK_AND_LOAD, {
                "id": inbox_id, "clients": get_settings().topic_clients, "ns": locks.NAMESPACE,
                "client": locks.CLIENT, "order": locks.ORDER}).fetchall()
            if inbox_id not in [r[0] for r in rows]:
                return "skipped"  # handled already (a duplicate hand-over), or meanwhile
            source = get_settings().contract_of(rows[0][2])
            head = next(message for row_id, message, _topic in rows if row_id == inbox_id)
            orders.mark_locked(_lock_key(source, head))
            for row_id, message, _topic in rows:
                if row_id == inbox_id:
                    _handle(source, message, row_id)
                    continue
                # a savepoint: an earlier message that fails waits for its own retries, and
                # takes its recorded effects (its later writes) with it
                try:
                    with work.transaction():
                        _handle(source, message, row_id)
                except Exception as exc:
                    log.warning("earlier message %s of key %s failed, left to its own retries: %s",
                                row_id, _lock_key(source, head), exc)
    return "done"


def _handle(source: str, payload: dict, inbox_id: int) -> None:
    outcome = messagebus.handle(COMMAND_OF[source](payload), orders.message_context(payload, source))
    work.later("UPDATE inbox_message SET status = 'DONE', processed_at = now(),"
               " attempts = attempts + 1 WHERE id = %s", (inbox_id,))  # sent with the COMMIT
    log.debug("message handled", extra={"eventId": payload.get("eventId"), "source": source,
                                       "effects": outcome["effects"], "note": outcome["note"]})


def failure_summary(error: BaseException) -> str:
    """What a failed attempt may say in the inbox row, the DLQ's ``error`` header and the log:
    the error's class, a refusal's code and message, a database error's SQLSTATE, constraint and
    table, and the line that raised it. Never the exception's own text: a driver's DETAIL
    ("Failing row contains ...") or a parser's message quotes the values of the message, such
    as the buyer's phone."""
    if isinstance(error, DomainError):
        text = f"{type(error).__name__} {error.code}: {error.message}"
    else:
        # Peewee re-raises psycopg2's error as its own, the original as its first argument
        driver = next((e for e in (error, error.__cause__, error.__context__, *error.args[:1])
                       if hasattr(e, "pgcode")), None)
        text = type(driver or error).__name__
        diag = getattr(driver, "diag", None)
        for label, value in (("SQLSTATE", getattr(driver, "pgcode", None)),
                             ("constraint", getattr(diag, "constraint_name", None)),
                             ("table", getattr(diag, "table_name", None))):
            if value:
                text += f" {label} {value}"
    ours = None  # the last line of this project's code the error passed through
    tb = error.__traceback__
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename)
        if _ROOT in path.parents and "site-packages" not in path.parts:
            ours = f"{path.relative_to(_ROOT)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return (text + (f" at {ours}" if ours else ""))[:1000]


_ROOT = Path(__file__).resolve().parents[2]  # the checkout (models/service/inbox.py)


def record_failure(inbox_id: int, error: BaseException, final: bool) -> None:
    """Count a failed attempt of a message (not of its database: the caller tells those apart);
    after the last one the row is FAILED and the pump dead-letters it."""
    text = failure_summary(error)
    with connection(), db.atomic():
        db.execute_sql(
            "UPDATE inbox_message SET attempts = attempts + 1, last_error = %s, "
            "status = CASE WHEN %s THEN 'FAILED' ELSE status END WHERE id = %s AND status = 'PENDING'",
            (text, final, inbox_id))
