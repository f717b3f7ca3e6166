"""The outbox relay: ``outbox_event`` rows → ``GiftCertificates.Stream``, in order, once.

Every use case writes its stream events into ``outbox_event`` in the same transaction as the
change, and ``NOTIFY gcp_outbox`` at commit. The relay ``LISTEN``s on that channel (a slow poll
is only the fallback), reads the unpublished rows in id order, produces them with the
idempotent producer (``acks=all``; key = certificate code, or orderId for ``issue.blocked``;
headers ``eventType`` and ``channel`` as the contract says, plus ``outboxId``) and marks them
published once Kafka acknowledged them.

Ordering: one certificate's events are written under its row lock, so their ids follow their
``sequence``; one relay (the holder of a PostgreSQL advisory lock: several relay processes may
run, the others wait as hot standbys) publishes in id order, and librdkafka keeps the order of a
partition through retries (idempotence). Kafka down: delivery never times out, the batch waits
and goes out when the broker is back; nothing new is read meanwhile, so nothing is reordered.

Once: a relay that takes over first reads the tail of every stream partition and marks the
``outboxId``s it finds there as published, so rows produced by a relay killed before it could
mark them are not produced a second time. (A takeover while the old leader is alive but cut off
from PostgreSQL can still duplicate; consumers can drop a repeated ``eventId``.)
"""
from __future__ import annotations

import json
import logging
import select
import signal
import threading
import time
import uuid

import psycopg2
import psycopg2.extensions
from confluent_kafka import Consumer, KafkaError, TopicPartition

from config import get_settings
from models.db import connect_params
from models.services import OUTBOX_CHANNEL
from workers.kafka import consumer_config, producer as make_producer

log = logging.getLogger("gcp.relay")
#: Advisory lock key held by the publishing relay.
RELAY_LOCK = 0x6763_7002
#: Rows published per round trip.
BATCH = 500
#: Fallback poll when no NOTIFY arrives (seconds).
IDLE_POLL = 1.0


class Relay:
    """One relay process. ``publish_pending()`` publishes everything unpublished (tests drive it)."""

    def __init__(self, producer=None, on_published=None):
        self.settings = get_settings()
        self.conn = psycopg2.connect(**connect_params(self.settings.database_url),
                                     application_name="gcp-relay")
        self.conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        self.producer = producer or make_producer(**{"delivery.timeout.ms": 0, "linger.ms": 1})
        self.leader = False
        self.stop = threading.Event()
        self.on_published = on_published or _hand_over_sms

    # -- leadership
    def try_lead(self) -> bool:
        if not self.leader:
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,))
                self.leader = bool(cur.fetchone()[0])
            if self.leader:
                log.info("relay is the leader")
                self.recover()
        return self.leader

    def recover(self) -> int:
        """Mark as published the rows a previous leader produced but could not mark."""
        ids = published_ids_in_tail(self.settings.topic_stream, BATCH)
        if not ids:
            return 0
        with self.conn.cursor() as cur:
            cur.execute("UPDATE outbox_event SET published_at = now() WHERE id = ANY(%s)"
                        " AND published_at IS NULL RETURNING id", (sorted(ids),))
            marked = cur.rowcount
        if marked:
            log.warning("took over: %d rows were already on the stream", marked)
        return marked

    # -- publishing
    def publish_pending(self) -> int:
        """Publish every unpublished row, in id order. Returns how many went out."""
        total = 0
        while True:
            n = self.publish_batch()
            total += n
            if n < BATCH:
                return total

    def publish_batch(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT id, message_key, event_type, channel, envelope::text FROM outbox_event"
                        " WHERE published_at IS NULL ORDER BY id LIMIT %s", (BATCH,))
            rows = cur.fetchall()
        if not rows:
            return 0
        errors = []

        def delivered(err, _msg):
            if err is not None:
                errors.append(err)

        topic = self.settings.topic_stream
        for row_id, key, event_type, channel, envelope in rows:
            self.producer.produce(topic, key=key.encode(), value=envelope.encode(), on_delivery=delivered,
                                  headers=[("eventType", event_type.encode()), ("channel", channel.encode()),
                                           ("outboxId", str(row_id).encode())])
            self.producer.poll(0)
        while len(self.producer) > 0:  # no delivery timeout: waits out a Kafka outage
            self.producer.flush(1.0)
            self._check_connection()
            if self.stop.is_set() and len(self.producer) > 0:
                raise SystemExit("stopped while Kafka is unreachable; the next leader goes on")
        if errors:  # not expected with an infinite delivery timeout; never mark what failed
            raise RuntimeError(f"stream produce failed: {errors[0]}")
        with self.conn.cursor() as cur:
            cur.execute("UPDATE outbox_event SET published_at = now() WHERE id = ANY(%s)",
                        ([r[0] for r in rows],))
        self._observe(rows)
        return len(rows)

    def _check_connection(self) -> None:
        """While waiting for Kafka, make sure we still hold the lock (connection alive)."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT 1")

    def _observe(self, rows) -> None:
        from observability import EVENTS_PUBLISHED

        for _id, _key, event_type, _channel, _envelope in rows:
            EVENTS_PUBLISHED.labels(event_type).inc()
        try:
            self.on_published(rows)
        except Exception:  # the SMS hand-over must never hold the stream back
            log.exception("after-publish hook failed")

    # -- the loop
    def run(self, stop: threading.Event) -> None:
        self.stop = stop
        with self.conn.cursor() as cur:
            cur.execute(f"LISTEN {OUTBOX_CHANNEL}")
        log.info("relay started", extra={"topic": self.settings.topic_stream})
        while not stop.is_set():
            try:
                if self.try_lead():
                    self.publish_pending()
                self._wait(IDLE_POLL)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                log.exception("lost the database connection: stopping (the supervisor restarts us)")
                raise SystemExit(1)
        self.close()

    def _wait(self, timeout: float) -> None:
        if select.select([self.conn], [], [], timeout) == ([], [], []):
            return
        self.conn.poll()
        self.conn.notifies.clear()

    def close(self) -> None:
        self.producer.flush(10)
        self.conn.close()


def published_ids_in_tail(topic: str, depth: int, timeout: float = 30.0) -> set[int]:
    """The ``outboxId`` headers of the last ``depth`` messages of each partition of ``topic``."""
    consumer = Consumer(consumer_config("gcp-relay-recover-" + uuid.uuid4().hex[:8],
                                        **{"enable.partition.eof": True}))
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or not meta.partitions:
            return set()
        assignment, ends = [], {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                assignment.append(TopicPartition(topic, p, max(low, high - depth)))
                ends[p] = high
        if not assignment:
            return set()
        consumer.assign(assignment)
        found: set[int] = set()
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    ends.pop(msg.partition(), None)
                continue
            for key, value in msg.headers() or ():
                if key == "outboxId" and value:
                    found.add(int(value))
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                ends.pop(msg.partition(), None)
        return found
    finally:
        consumer.close()


def _hand_over_sms(rows) -> None:
    """With an SMS gateway configured, each published ``notification.requested`` is sent."""
    if not get_settings().sms_gateway_url:
        return
    wanted = [(json.loads(env), ) for _id, _key, t, _c, env in rows if t == "notification.requested"]
    if not wanted:
        return
    from actors.sms import send_sms

    for (envelope,) in wanted:
        send_sms.send(envelope["payload"]["code"], envelope["eventId"])


def main() -> None:
    from observability import setup_logging
    from workers.kafka import ensure_topics

    setup_logging()
    ensure_topics()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if get_settings().sms_gateway_url:
        import actors  # noqa: F401  (the broker, for the SMS hand-over)
    relay = Relay()
    relay.run(stop)


if __name__ == "__main__":
    main()
