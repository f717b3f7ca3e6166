"""The inbox actors: retries around the inbox use case (``models/service/inbox.py``, through the
bus: ``ProcessInboxMessage``, ``RecordInboxFailure``).

The pump hands over inbox row ids (``process_inbox_batch``, a poll's worth at a time; a row that
fails there goes on alone through ``process_inbox`` and its retries). Transient faults raise and
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
from models.domain import commands
from models.domain.errors import failure_summary
from models.store.liveness import Outages
from observability import dependency_of

log = logging.getLogger("gcp.actors.inbox")
#: Outages of this worker process's dependencies, logged once each.
OUTAGES = Outages("worker")
#: The Dramatiq queue of input messages.
QUEUE = "gcp-inbox"
_MAX_RETRIES = get_settings().actor_max_retries


def record_failure(inbox_id: int, error: BaseException, final: bool) -> None:
    """Count a failed attempt; a database outage is not the message's fault and counts nothing."""
    if dependency_of(error) is not None:
        OUTAGES.failed(dependency_of(error), error)
        return
    from models.service import messagebus  # the model is loaded where actors run, not where they are sent

    try:
        messagebus.handle(commands.RecordInboxFailure(inbox_id, error, final))
    except Exception:  # the database itself is down: Dramatiq retries, the sweeper re-sends
        log.exception("could not record the failure of inbox row %s", inbox_id)
        if final:
            raise


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def process_inbox_batch(inbox_ids: list[int]) -> None:
    """Handle a batch of inbox rows (the pump's hand-over of one poll), each in its own
    transaction. A row that fails is counted and handed to :func:`process_inbox`, whose retries
    with backoff (and, after the last, the DLQ) are per message."""
    from models.service import messagebus

    ensure_db()
    for inbox_id in inbox_ids:
        try:
            messagebus.handle(commands.ProcessInboxMessage(inbox_id))
            OUTAGES.ok()
        except Exception as exc:
            if dependency_of(exc) is None:
                log.warning("inbox row %s failed, retrying it on its own: %s", inbox_id,
                            failure_summary(exc))
            record_failure(inbox_id, exc, final=False)
            process_inbox.send_with_options(args=(inbox_id,), delay=get_settings().actor_min_backoff_ms)


@dramatiq.actor(queue_name=QUEUE, max_retries=_MAX_RETRIES)
def process_inbox(inbox_id: int) -> None:
    """Handle one inbox row (the pump's hand-over)."""
    from models.service import messagebus

    ensure_db()
    final = final_attempt(_MAX_RETRIES)
    try:
        messagebus.handle(commands.ProcessInboxMessage(inbox_id))
        OUTAGES.ok()
    except Exception as exc:
        if dependency_of(exc) is not None:  # an outage: counts nothing; its text names a host
            record_failure(inbox_id, exc, final)
            if not final:
                raise
            return  # the sweeper hands the row over again
        summary = failure_summary(exc)
        log.warning("inbox row %s failed (%s retry left): %s", inbox_id, "no" if final else "a", summary)
        record_failure(inbox_id, exc, final)
        if not final:  # Dramatiq retries it, and logs this: the summary, not the original's text
            raise InboxAttemptFailed(summary) from None


class InboxAttemptFailed(Exception):
    """An attempt at an inbox row failed (its :func:`models.domain.errors.failure_summary`)."""
