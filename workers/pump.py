"""The pump: Kafka input topics → PostgreSQL inbox → Dramatiq actors.

One consumer group reads All_SalesOrder, All_Payments and All_Clients. For each polled batch:

1. every message is decoded and validated against its schema; an invalid one is produced to
   ``GiftCertificates.DLQ`` (headers ``error``, ``sourceTopic``, ``sourcePartition``,
   ``sourceOffset``) and the pump goes on: a poison message never stalls it;
2. the valid ones are inserted into ``inbox_message`` (unique ``event_id``: a duplicate or a
   redelivery inserts nothing) and the transaction commits;
3. only then are the offsets committed, and the new rows handed to the ``process_inbox`` actor.

So a message is never lost between Kafka and the database: killed before (2) commits, the
offsets were not committed and Kafka redelivers; killed after, the row is there and the
*sweeper* hands over again every row still ``PENDING`` after ``INBOX_SWEEP_AFTER_MS`` (a lost
Redis message, a pump killed before the hand-over). Rows that failed after the actors' retries
(``FAILED``) are dead-lettered by the same loop.

A message replayed from the DLQ (header ``replayOf``) whose row had failed is made ``PENDING``
again and handed over once more.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, TopicPartition

from config import get_settings
from models.store.db import connection, db
from models.store.liveness import Outages
from observability import DLQ_MESSAGES, DLQ_REASONS, MESSAGES_CONSUMED, dependency_of
from workers import contracts
from workers.kafka import consumer as make_consumer
from workers.kafka import consumer_error, ensure_topics, poll_batch, retry_from_committed
from workers.kafka import producer as make_producer
from workers.process import run_process

log = logging.getLogger("gcp.pump")
#: Messages taken from Kafka at most per batch.
BATCH = 500
#: How often the sweeper looks for rows to hand over again or to dead-letter (seconds).
SWEEP_EVERY = 1.0
#: Inbox rows per actor message.
CHUNK = 8
#: Offsets are committed at most this often (seconds); see :meth:`Pump.commit_offsets`.
COMMIT_EVERY = 0.2
#: Kafka header that marks a message sent back from the DLQ.
REPLAY_HEADER = "replayOf"


def _headers(msg) -> dict[str, str]:
    out = {}
    for key, value in msg.headers() or ():
        out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")
    return out


def dlq_headers(error: str, topic: str, partition: int, offset: int, **extra) -> list[tuple[str, bytes]]:
    """The contract's DLQ headers (plus ``failedAt`` and any ``extra``)."""
    items = {"error": error[:1000], "sourceTopic": topic, "sourcePartition": str(partition),
             "sourceOffset": str(offset), "failedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    items.update({k: str(v) for k, v in extra.items() if v is not None})
    return [(k, v.encode()) for k, v in items.items()]


#: How much of a value over ``KAFKA_MAX_MESSAGE_BYTES`` its DLQ copy keeps.
DLQ_KEEP_BYTES = 65_536


def dlq_entry(reason: str, msg) -> tuple[bytes | None, bytes | None, list]:
    """(key, value, headers) of the DLQ copy of a refused message. A value over the limit is cut
    to its first ``DLQ_KEEP_BYTES`` (header ``valueBytes``: its whole size); the whole message
    stays in its source topic, at the offset the headers name."""
    value, extra = msg.value(), {}
    if value is not None and len(value) > get_settings().kafka_max_message_bytes:
        value, extra["valueBytes"] = value[:DLQ_KEEP_BYTES], len(value)
    return msg.key(), value, dlq_headers(reason, msg.topic(), msg.partition(), msg.offset(), **extra)


@dataclass
class BatchResult:
    received: int = 0
    inserted: list[int] = field(default_factory=list)
    duplicates: int = 0
    dead_lettered: int = 0


class Pump:
    """The consume → inbox → hand-over loop. ``step()`` runs one batch (tests drive it)."""

    def __init__(self, dispatch=None):
        s = get_settings()
        self.settings = s
        self.consumer = make_consumer(s.consumer_group, **{"enable.partition.eof": False})
        # room for a DLQ copy of the largest value taken (KAFKA_MAX_MESSAGE_BYTES) and its headers
        self.producer = make_producer(**{"message.max.bytes": max(1_000_000, self.settings.kafka_max_message_bytes + 65_536)})
        self.consumer.subscribe(list(s.topics_in))
        self._dispatch = dispatch
        self._last_sweep = 0.0
        self._uncommitted: dict[tuple[str, int], int] = {}  # recorded in the inbox, offsets not committed
        self._last_commit = 0.0
        self.outages = Outages("pump")

    # -- hand-over
    def dispatch(self, inbox_ids: list[int]) -> None:
        """Hand rows to the actors, ``CHUNK`` per actor message (a busy pump polls bigger
        batches, so the per-message cost of the hand-over shrinks as the load grows); a failure
        leaves them for the sweeper."""
        if not inbox_ids:
            return
        if self._dispatch is None:
            from actors.inbox import process_inbox_batch

            self._dispatch = process_inbox_batch.send
        try:
            for i in range(0, len(inbox_ids), CHUNK):
                self._dispatch(inbox_ids[i:i + CHUNK])
        except Exception as exc:  # Redis down: the rows are safe in PostgreSQL, the sweeper
            self.outages.failed(dependency_of(exc) or "redis", exc)  # hands them over again
            return
        self.outages.ok("redis")

    # -- the DLQ
    def dead_letter(self, items: list[tuple[bytes | None, bytes | None, list]]) -> None:
        """Produce (key, value, headers) to the DLQ and wait until Kafka has them."""
        if not items:
            return
        failures = []

        def done(err, _msg):
            if err is not None:
                failures.append(err)

        for key, value, headers in items:
            self.producer.produce(self.settings.topic_dlq, key=key, value=value, headers=headers,
                                  on_delivery=done)
        remaining = self.producer.flush(60)
        if remaining or failures:
            raise RuntimeError(f"DLQ produce failed: {failures or remaining}")
        for _key, _value, headers in items:
            DLQ_MESSAGES.labels(dlq_reason(dict(headers).get("error", b""))).inc()

    # -- one batch
    def step(self, timeout: float = 0.2) -> BatchResult:
        """Poll one batch and take it through validation, the inbox and the offsets."""
        result = BatchResult()
        messages = poll_batch(self.consumer, BATCH, timeout)
        valid, invalid, offsets = [], [], {}
        for msg in messages:
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    consumer_error(log, msg.error())
                continue
            result.received += 1
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            try:
                parsed = contracts.parse(msg.topic(), msg.value())
            except contracts.InvalidMessage as bad:
                invalid.append(dlq_entry(bad.reason, msg))
                continue
            valid.append((msg, parsed))
        self.dead_letter(invalid)
        result.dead_lettered = len(invalid)
        if valid:
            result.inserted, result.duplicates = self._record(valid)
        self._uncommitted.update(offsets)
        self.commit_offsets()
        self.dispatch(result.inserted)
        self._observe(messages, result)
        return result

    def commit_offsets(self, force: bool = False) -> None:
        """Commit the offsets of what the inbox holds, at most every ``COMMIT_EVERY`` seconds.

        Each commit is a request the broker must write; under load one per poll would be one
        per message or two. Committing later is safe: a message read again after a restart or
        a rebalance is a duplicate ``eventId``, which the inbox drops."""
        now = time.monotonic()
        if not self._uncommitted or (not force and now - self._last_commit < COMMIT_EVERY):
            return
        offsets, self._uncommitted = self._uncommitted, {}
        self._last_commit = now
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                             asynchronous=True)

    def _record(self, valid) -> tuple[list[int], int]:
        """Insert the batch into the inbox in one transaction; returns (ids to hand over, dups)."""
        rows, replays = [], []
        for msg, parsed in valid:
            rows.append((parsed.event_id, msg.topic(), msg.partition(), msg.offset(),
                         msg.key().decode("utf-8", "replace") if msg.key() else None,
                         _json(parsed.message), broker_time(msg)))
            if REPLAY_HEADER in _headers(msg):
                replays.append(parsed.event_id)
        with connection(), db.atomic():
            values = ",".join(["(%s,%s,%s,%s,%s,%s::jsonb,to_timestamp(%s),now(),now())"] * len(rows))
            cursor = db.execute_sql(
                'INSERT INTO inbox_message (event_id, topic, partition, "offset", message_key, payload,'
                f" broker_at, received_at, dispatched_at) VALUES {values} ON CONFLICT (event_id) DO NOTHING"
                " RETURNING id", [v for row in rows for v in row])
            inserted = [r[0] for r in cursor.fetchall()]
            if replays:  # sent back from the DLQ: a failed row gets another chance
                cursor = db.execute_sql(
                    "UPDATE inbox_message SET status = 'PENDING', attempts = 0, dead_lettered_at = NULL,"
                    " broker_at = NULL,"  # a replay's latency is no measure of the service
                    " dispatched_at = now() WHERE event_id = ANY(%s) AND status = 'FAILED' RETURNING id",
                    (replays,))
                inserted += [r[0] for r in cursor.fetchall()]
        return inserted, len(rows) - len(inserted)

    def _observe(self, messages, result: BatchResult) -> None:
        if not result.received:
            return
        for msg in messages:
            if msg.error() is None:
                MESSAGES_CONSUMED.labels(contracts.contract_name(msg.topic()), "received").inc()
        if result.dead_lettered:
            MESSAGES_CONSUMED.labels("all", "dead_lettered").inc(result.dead_lettered)
        if result.duplicates:
            MESSAGES_CONSUMED.labels("all", "duplicate").inc(result.duplicates)
            log.info("duplicates dropped", extra={"duplicates": result.duplicates})

    # -- the sweeper
    def sweep(self) -> tuple[int, int]:
        """Hand over again rows still PENDING, dead-letter rows FAILED. Returns both counts."""
        after_ms = self.settings.inbox_sweep_after_ms
        with connection(), db.atomic():
            cursor = db.execute_sql(
                "UPDATE inbox_message SET dispatched_at = now() WHERE id IN ("
                " SELECT id FROM inbox_message WHERE status = 'PENDING'"
                " AND dispatched_at < now() - make_interval(secs => %s)"
                " ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED) RETURNING id", (after_ms / 1000.0,))
            stale = sorted(r[0] for r in cursor.fetchall())
        self.dispatch(stale)
        dead = 0
        with connection(), db.atomic():
            cursor = db.execute_sql(
                'SELECT id, topic, partition, "offset", message_key, payload::text, last_error, event_id'
                " FROM inbox_message WHERE status = 'FAILED' AND dead_lettered_at IS NULL"
                " ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED")
            rows = cursor.fetchall()
            if rows:
                self.dead_letter([
                    (key.encode() if key else None, payload.encode(),
                     dlq_headers(f"PROCESSING_FAILED: {error or 'unknown'}", topic, part, off, eventId=event_id))
                    for _id, topic, part, off, key, payload, error, event_id in rows])
                db.execute_sql("UPDATE inbox_message SET dead_lettered_at = now() WHERE id = ANY(%s)",
                               ([r[0] for r in rows],))
                dead = len(rows)
        if stale or dead:
            log.info("sweep", extra={"handedOverAgain": len(stale), "deadLettered": dead})
        return len(stale), dead

    def maybe_sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = now
            try:
                self.sweep()
                self.outages.ok("postgres")
            except Exception as exc:
                dependency = dependency_of(exc)
                if dependency is None:
                    log.exception("sweep failed")
                else:  # the next sweep tries again
                    self.outages.failed(dependency, exc)

    def run(self, stop: threading.Event) -> None:
        log.info("pump started", extra={"topics": list(self.settings.topics_in),
                                        "group": self.settings.consumer_group})
        while not stop.is_set():
            try:
                if self.step().received:  # an empty poll did not touch the database
                    self.outages.ok("postgres")
            except Exception as exc:  # nothing of the batch was committed: read it again
                retry_from_committed(self.consumer, exc, stop, self.outages)
            self.maybe_sweep()
        self.close()

    def close(self) -> None:
        try:
            try:
                self.commit_offsets(force=True)
            except Exception:  # the next pump reads them again; the inbox drops the duplicates
                log.exception("could not commit the last offsets")
            self.consumer.close()
        finally:
            self.producer.flush(10)


def dlq_reason(error: bytes) -> str:
    """The code that opens a DLQ ``error`` header (``SCHEMA_VIOLATION: ...``) as a metric label;
    ``OTHER`` for any other, so no message text becomes a series."""
    code = error.decode("utf-8", "replace").split(":", 1)[0]
    return code if code in DLQ_REASONS else "OTHER"


def broker_time(msg) -> float | None:
    """The message's Kafka timestamp (epoch seconds), where the broker gives one: the start of
    ``gcp_input_to_stream_seconds``, which the relay ends (see ``inbox_message.broker_at``)."""
    kind, millis = msg.timestamp()
    return millis / 1000.0 if kind != TIMESTAMP_NOT_AVAILABLE and millis > 0 else None


def _json(message: dict) -> str:
    import json

    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def main() -> None:
    run_process("pump", _serve, pool=4)


def _serve(stop: threading.Event) -> None:
    ensure_topics(stop=stop)  # Kafka away or refusing: backoff
    import actors  # noqa: F401  (configures the broker before the hand-over)

    Pump().run(stop)


if __name__ == "__main__":
    main()
