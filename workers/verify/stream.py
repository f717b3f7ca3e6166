"""The checks of ``GiftCertificates.Stream`` against the outbox (``verify --stream``)."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass

from workers.kafka import EndOfTopic, read_to_end
from workers.verify.common import Violation, _rows, _where

# ---- the stream ---------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamRecord:
    partition: int
    offset: int
    key: str | None
    event_id: str | None
    sequence: int | None
    outbox_id: int | None


def read_stream(topic: str, timeout: float = 60.0) -> tuple[list[StreamRecord], list[Violation]]:
    """Every message of ``topic`` from its first offset to its end (a fresh consumer, assigned,
    nothing committed; see :func:`workers.kafka.read_to_end` for where the end is)."""
    progress = EndOfTopic()
    records = [_record(msg) for msg in read_to_end(topic, timeout=timeout, progress=progress)]
    if progress.missing_topic:
        return [], [Violation("stream.incomplete", topic, "the topic cannot be read")]
    if not progress.complete:
        return records, [Violation("stream.incomplete", topic, ", ".join(
            f"partition {p} read to {progress.position[p]} (high watermark {h} at the start)"
            for p, h in sorted(progress.high.items()) if p not in progress.ended)
            + f", not at its end within {timeout:.0f} s")]
    return records, []


def _record(msg) -> StreamRecord:
    headers = {k: v for k, v in (msg.headers() or ())}
    event_id = sequence = None
    try:
        value = json.loads(msg.value() or b"null")
        if isinstance(value, dict):
            event_id = value.get("eventId")
            sequence = value.get("sequence")
    except ValueError:
        pass
    outbox = headers.get("outboxId")
    return StreamRecord(msg.partition(), msg.offset(), msg.key().decode() if msg.key() else None,
                        event_id, sequence if isinstance(sequence, int) else None,
                        int(outbox) if outbox and outbox.isdigit() else None)


def check_stream(cur, records: list[StreamRecord], read_since, scope=None) -> list[Violation]:
    """The stream against the outbox: every event published before ``read_since`` (a database
    time taken before the watermarks were read) on it once, each certificate's in sequence."""
    out = []
    where, params = _where(scope, codes=("e.message_key",))
    outbox = {event_id: (row_id, key, published, sequence) for event_id, row_id, key, published, sequence
              in _rows(cur, f"""SELECT e.event_id::text, e.id, e.message_key,
                                       e.published_at IS NOT NULL AND e.published_at < %s, e.sequence
                                FROM outbox_event e WHERE {where}""", [read_since] + params)}
    if scope is not None:
        keys = scope.codes or frozenset()
        records = [r for r in records if r.key in keys]
    seen = Counter(r.event_id for r in records)
    where_seen: dict[str, list[StreamRecord]] = defaultdict(list)
    for r in records:
        where_seen[r.event_id].append(r)
    for event_id, n in sorted(seen.items(), key=lambda kv: str(kv[0])):
        if n > 1:
            at = where_seen[event_id]
            out.append(Violation("stream.duplicate", at[0].key or "-", f"event {event_id} {n} times, at "
                                 + ", ".join(f"{r.partition}@{r.offset}" for r in at)))
    for r in records:
        row = outbox.get(r.event_id)
        if row is None or row[0] != r.outbox_id:
            out.append(Violation("stream.unknown", r.key or "-", (
                f"event {r.event_id} at {r.partition}@{r.offset} with outboxId {r.outbox_id}: "
                + ("not in the outbox" if row is None else f"its outbox row is {row[0]}"))))
    for event_id, (row_id, key, published, sequence) in sorted(outbox.items(), key=lambda kv: kv[1][0]):
        if published and event_id not in seen:
            out.append(Violation("stream.missing", key or "-", f"outbox row {row_id} event {event_id}"
                                 + (f" sequence {sequence}" if sequence else "") + " is not on the stream"))
    by_key: dict[str, list[StreamRecord]] = defaultdict(list)
    first = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if r.sequence is None or r.event_id in first:
            continue  # unsequenced, or a duplicate (reported above)
        first.add(r.event_id)
        by_key[r.key].append(r)
    for key, rs in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        for expected, r in enumerate(rs, start=1):
            if r.sequence != expected:
                out.append(Violation("stream.order", key or "-", (
                    f"sequence {r.sequence} at {r.partition}@{r.offset} where {expected} was due "
                    f"(stream order {', '.join(str(x.sequence) for x in rs[:20])}"
                    f"{' ...' if len(rs) > 20 else ''})")))
                break
    return out
