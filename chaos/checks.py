"""What must hold after a chaos scenario, read from the stream, the API and the database.

- Nothing lost: every story's inputs had their effects (its stream events, in order, and the
  status and balance they leave).
- Nothing doubled: no event twice (by eventId), no event a story did not cause, no balance off.
- No sequence gap and no reordering of one certificate's events (sequence = 1..n in offset order).
- ``verify --stream`` (workers/verify/) finds nothing.
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import psycopg2

from chaos.traffic import Channel, Story


def settle(database_url: str, timeout: float = 120.0) -> None:
    """Wait until the relay published every outbox row and no inbox row is pending."""
    deadline = time.monotonic() + timeout
    left = None
    while time.monotonic() < deadline:
        try:
            with psycopg2.connect(database_url, connect_timeout=3) as conn, conn.cursor() as cur:
                cur.execute("SELECT (SELECT count(*) FROM outbox_event WHERE published_at IS NULL),"
                            " (SELECT count(*) FROM inbox_message WHERE status = 'PENDING')")
                left = cur.fetchone()
            conn.close()
            if left == (0, 0):
                return
        except psycopg2.OperationalError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not settled after {timeout:.0f} s: (unpublished outbox, pending inbox) = {left}")


def read_stream(topic: str) -> dict[str, list[dict]]:
    from workers.kafka import EndOfTopic, read_to_end

    progress = EndOfTopic()
    by_key: dict[str, list[dict]] = defaultdict(list)
    for m in read_to_end(topic, timeout=60, progress=progress):
        by_key[m.key().decode() if m.key() else ""].append(json.loads(m.value()))
    if not progress.complete:
        raise AssertionError(f"could not read {topic} to its end")
    return by_key


def check(stories: list[Story], ch: Channel, topic: str) -> tuple[list[str], Counter]:
    """Every problem found (empty: the scenario passed), and the counts of what was checked."""
    problems, counts = [], Counter()
    by_key = read_stream(topic)
    ids = Counter(e["eventId"] for events in by_key.values() for e in events)
    problems += [f"event {i} on the stream {n} times" for i, n in ids.items() if n > 1]
    for story in stories:
        if story.error:
            problems.append(f"{story.kind} {story.code}: {story.error}")
            continue
        events = by_key.get(story.code, [])
        types = [e["eventType"] for e in events]
        if types != story.expected:
            problems.append(f"{story.kind} {story.code}: events {types}, expected {story.expected}")
        seqs = [e.get("sequence") for e in events]
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"{story.kind} {story.code}: sequence {seqs}")
        counts["effects"] += len(events)
        got = ch.status(story.code)
        if got["status"] != story.status or (story.balance and got["remainingBalance"] != story.balance):
            problems.append(f"{story.kind} {story.code}: {got['status']} {got['remainingBalance']}, expected "
                            f"{story.status} {story.balance}")
    problems += [f"a 5xx answer: {e}" for e in ch.server_errors]
    return problems, counts


def verify_all() -> list[str]:
    """``verify --stream`` over the scenario's own database and stream (nothing else is in them)."""
    from workers.verify import verify

    return [str(v) for v in verify(stream=True, stream_timeout=60)]
