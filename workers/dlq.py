"""DLQ tools: ``python app.py dlq list`` and ``python app.py dlq replay [--id ...]``.

An entry's id is ``<partition>:<offset>`` in ``GiftCertificates.DLQ``. ``list`` shows each
entry's source, eventId, the reason (header ``error``) and whether it was replayed. ``replay``
sends entries (default: all not replayed yet) back to their source topic with the header
``replayOf``; the pump then takes them as new, and a message whose inbox row had failed gets
another run through the actors. Each replay is recorded in ``dlq_replay`` so an entry is sent
back once, unless named again with ``--id``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import click

from config import get_settings
from models.domain.timeutil import utcnow
from models.store import dlq as replays
from models.store.db import connection, db, init_db
from workers.kafka import producer as make_producer
from workers.kafka import read_to_end


@dataclass
class Entry:
    id: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    replayed: bool = False

    @property
    def event_id(self) -> str | None:
        if self.headers.get("eventId"):
            return self.headers["eventId"]
        try:
            return json.loads(self.value or b"").get("eventId")
        except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, too deep
            return None


def read_entries(timeout: float = 15.0) -> list[Entry]:
    """Every message of the DLQ topic, oldest first per partition."""
    entries = [Entry(f"{msg.partition()}:{msg.offset()}", msg.key(), msg.value(),
                     {k: (v or b"").decode("utf-8", "replace") for k, v in msg.headers() or ()})
               for msg in read_to_end(get_settings().topic_dlq, timeout=timeout)]
    _mark_replayed(entries)
    return sorted(entries, key=lambda e: tuple(int(x) for x in e.id.split(":")))


def _mark_replayed(entries: list[Entry]) -> None:
    _ensure_db()
    with connection():
        done = replays.replayed([e.id for e in entries])
    for e in entries:
        e.replayed = e.id in done


def _ensure_db() -> None:
    if db.obj is None:
        init_db(get_settings().database_url, max_connections=2)


def replay(ids: list[str] | None = None) -> list[Entry]:
    """Send entries back to their source topic. Returns the entries replayed."""
    entries = read_entries()
    if ids:
        wanted = set(ids)
        unknown = wanted - {e.id for e in entries}
        if unknown:
            raise click.ClickException(f"no DLQ entry {', '.join(sorted(unknown))}")
        chosen = [e for e in entries if e.id in wanted]
        cut = [e.id for e in chosen if e.headers.get("valueBytes")]
        if cut:
            raise click.ClickException(
                f"entr{'y' if len(cut) == 1 else 'ies'} {', '.join(cut)} hold only the first bytes of a value over "
                "KAFKA_MAX_MESSAGE_BYTES: the whole message is in its source topic at sourcePartition/sourceOffset")
    else:
        chosen = [e for e in entries if not e.replayed and not e.headers.get("valueBytes")]
    if not chosen:
        return []
    producer = make_producer()
    failures = []
    for e in chosen:
        source = e.headers.get("sourceTopic")
        if not source:
            raise click.ClickException(f"entry {e.id} has no sourceTopic header")
        producer.produce(source, key=e.key, value=e.value,
                         headers=[("replayOf", e.id.encode())],
                         on_delivery=lambda err, _m: err is not None and failures.append(err))
    if producer.flush(30) or failures:
        raise click.ClickException(f"could not produce the replay: {failures or 'timeout'}")
    with connection():
        now = utcnow()
        for e in chosen:
            replays.record_replay(e.id, e.headers["sourceTopic"], e.event_id, now)
    return chosen


def list_command(limit: int) -> None:
    """Print the DLQ's entries (the ``limit`` most recent) and why each is there."""
    entries = read_entries()
    if not entries:
        click.echo("the DLQ is empty")
        return
    shown = entries[-limit:] if limit else entries
    click.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {get_settings().topic_dlq}"
               + (f" (showing the last {len(shown)})" if len(shown) < len(entries) else ""))
    for e in shown:
        h = e.headers
        click.echo(f"{e.id:>8}  {h.get('failedAt', '-'):20}  {h.get('sourceTopic', '?')}"
                   f"[{h.get('sourcePartition', '?')}]@{h.get('sourceOffset', '?')}  "
                   f"eventId={e.event_id or '-'}  {'REPLAYED' if e.replayed else 'waiting'}")
        click.echo(f"          error: {h.get('error', '?')}")


def replay_command(ids: list[str]) -> None:
    """Replay the given entries (or every one not replayed yet) through the pump."""
    done = replay(ids or None)
    if not done:
        click.echo("nothing to replay")
        return
    for e in done:
        click.echo(f"replayed {e.id} -> {e.headers.get('sourceTopic')} (eventId={e.event_id or '-'})")
    click.echo(f"{len(done)} message(s) sent back through the pump")
