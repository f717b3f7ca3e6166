"""Which ``GiftCertificates.DLQ`` entries were sent back through the pump (table
``dlq_replay``), for the DLQ tools (``workers/dlq.py``). An entry's id is
``<partition>:<offset>`` in the DLQ topic."""
from __future__ import annotations

import datetime as dt

from models.store.tables import DlqReplay


def replayed(dlq_ids: list[str]) -> set[str]:
    """The ids among ``dlq_ids`` replayed before."""
    if not dlq_ids:
        return set()
    return {r.dlq_id for r in DlqReplay.select(DlqReplay.dlq_id).where(DlqReplay.dlq_id.in_(dlq_ids))}


def record_replay(dlq_id: str, source_topic: str, event_id: str | None, now: dt.datetime) -> None:
    """Entry ``dlq_id`` was sent back to ``source_topic`` at ``now`` (again: the time moves)."""
    (DlqReplay.insert(dlq_id=dlq_id, source_topic=source_topic, event_id=event_id, replayed_at=now)
     .on_conflict(conflict_target=[DlqReplay.dlq_id], update={DlqReplay.replayed_at: now})
     .execute())
