"""The outbox as the relay reads it, and the channels that wake the processes at commit.

The use cases write ``outbox_event`` rows in their own transaction and ``NOTIFY``
:data:`OUTBOX_CHANNEL` at commit (:mod:`models.service.unit_of_work`). The relay publishes the
rows in id order on a psycopg2 connection of its own (it holds the relay's leadership lock and
LISTENs), so each function here takes that connection.
"""
from __future__ import annotations

#: PostgreSQL channel the outbox relay listens on.
OUTBOX_CHANNEL = "gcp_outbox"

#: PostgreSQL channel notified when a batch adds certificates (blocked paid orders wait on it).
POOL_CHANNEL = "gcp_pool_refilled"


def unpublished(conn, limit: int) -> list[tuple[int, str, str, str, str, str, str, float | None]]:
    """The first ``limit`` rows not yet published, in id order: (id, message key, event type,
    channel, envelope as JSON text, eventId, occurredAt, input time). The input time is the
    Kafka broker timestamp (epoch seconds) of the input message that caused the event (its
    ``causationId`` is that message's ``eventId``), None for an event an HTTP call or the
    scheduler caused: where ``gcp_input_to_stream_seconds`` starts."""
    with conn.cursor() as cur:
        cur.execute("SELECT o.id, o.message_key, o.event_type, o.channel, o.envelope::text,"
                    " o.event_id::text, o.envelope->>'occurredAt',"
                    " (SELECT extract(epoch FROM i.broker_at)::float8 FROM inbox_message i"
                    "   WHERE i.event_id = o.envelope->>'causationId')"
                    " FROM outbox_event o WHERE o.published_at IS NULL ORDER BY o.id LIMIT %s", (limit,))
        return cur.fetchall()


def mark_published(conn, ids: list[int]) -> None:
    """Kafka acknowledged these rows."""
    with conn.cursor() as cur:
        cur.execute("UPDATE outbox_event SET published_at = now() WHERE id = ANY(%s)", (ids,))


def mark_found_on_stream(conn, found: set[tuple[int, str]]) -> int:
    """Mark published the rows found on the stream, each by its id *and* its ``eventId`` (an id
    alone could be reused, by a database restored from a backup). Returns how many were not
    marked yet."""
    with conn.cursor() as cur:
        cur.execute("UPDATE outbox_event o SET published_at = now()"
                    " FROM unnest(%s::bigint[], %s::uuid[]) AS t(id, event_id)"
                    " WHERE o.id = t.id AND o.event_id = t.event_id AND o.published_at IS NULL"
                    " RETURNING o.id", ([i for i, _e in found], [e for _i, e in found]))
        return cur.rowcount
