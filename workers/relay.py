"""The outbox relay: ``outbox_event`` rows → ``GiftCertificates.Stream``, in order, once.

Every use case writes its stream events into ``outbox_event`` in the same transaction as the
change, and ``NOTIFY gcp_outbox`` at commit. The relay ``LISTEN``s on that channel (a slow poll
is only the fallback), reads the unpublished rows in id order, produces them with the
idempotent producer (``acks=all``; key = certificate code, or orderId for ``issue.blocked``;
headers ``eventType`` and ``channel`` as the contract says, plus ``outboxId``) and marks each
published as soon as Kafka acknowledged it. Production is pipelined: new rows go out while
earlier ones await their acknowledgement, at most ``BATCH`` in flight.

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
import threading
import time
import uuid

from config import get_settings
from models.domain import locks
from models.store import outbox
from models.store.db import listening_connection, wait_for_notify
from models.store.liveness import Outages
from observability import EVENTS_PUBLISHED, PROCESSING_LATENCY, dependency_of
from workers.kafka import EndOfTopic, ensure_topics, read_to_end
from workers.kafka import producer as make_producer
from workers.process import run_process

log = logging.getLogger("gcp.relay")
#: Rows published per round trip.
BATCH = 500
#: Fallback poll when no NOTIFY arrives (seconds).
IDLE_POLL = 1.0



#: A stream event's CloudEvents ``type``: this reverse-DNS prefix and its ``eventType``.
CLOUDEVENTS_TYPE_PREFIX = "com.retailer.giftcertificates."


def cloudevent_headers(source: str, event_id: str, event_type: str, occurred_at: str | None,
                       key: str) -> list[tuple[str, bytes]]:
    """The CloudEvents 1.0 Kafka protocol binding in binary content mode (contract section 4,
    revision 3): the envelope stays the record's value; its ``eventId``, ``eventType``,
    ``occurredAt`` and the record's key become ``ce_id``, ``ce_type`` (reverse-DNS:
    ``com.retailer.giftcertificates.issue``), ``ce_time`` and ``ce_subject``; ``ce_source`` is
    ``CLOUDEVENTS_SOURCE``. (``time`` is optional in CloudEvents: an envelope without
    ``occurredAt``, which the unit of work never writes, is published without it.)"""
    headers = [("ce_specversion", b"1.0"), ("ce_id", event_id.encode()), ("ce_source", source.encode()),
               ("ce_type", (CLOUDEVENTS_TYPE_PREFIX + event_type).encode())]
    if occurred_at is not None:
        headers.append(("ce_time", occurred_at.encode()))
    return headers + [("ce_subject", key.encode()), ("content-type", b"application/json")]

class Relay:
    """One relay process. ``publish_pending()`` publishes everything unpublished (tests drive it)."""

    def __init__(self, producer=None, on_published=None):
        self.settings = get_settings()
        self.conn = listening_connection("gcp-relay", outbox.OUTBOX_CHANNEL)
        self.producer = producer or make_producer(**{"delivery.timeout.ms": 0, "linger.ms": 1})
        self.leader = False
        self.stop = threading.Event()
        self.inflight: dict[int, tuple] = {}   # produced, not acknowledged yet
        self.input_at: dict[int, float] = {}   # row id -> its input's broker time (in flight)
        self.acknowledged: list[int] = []
        self.errors: list = []
        self.on_published = on_published or _hand_over_sms
        self.outages = Outages("relay")

    # -- leadership
    def try_lead(self) -> bool:
        if not self.leader:
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (locks.RELAY,))
                self.leader = bool(cur.fetchone()[0])
            if self.leader:
                log.info("relay is the leader")
                self.recover()
        return self.leader

    def recover(self) -> int:
        """Mark as published the rows a previous leader produced but could not mark: a row
        counts as on the stream when a message there has its ``outboxId`` header *and* its
        ``eventId`` (an id alone could be reused, by a database restored from a backup)."""
        seen = published_in_tail(self.settings.topic_stream, BATCH)
        if not seen:
            return 0
        marked = outbox.mark_found_on_stream(self.conn, seen)
        if marked:
            log.warning("took over: %d rows were already on the stream", marked)
        return marked

    # -- publishing: produce without waiting, mark as the acknowledgements come back
    def produce_pending(self) -> int:
        """Produce the unpublished rows not yet in flight, in id order, while fewer than
        ``BATCH`` are in flight. Returns how many were produced."""
        room = BATCH - len(self.inflight)
        if room <= 0:
            return 0
        rows = [r for r in outbox.unpublished(self.conn, room + len(self.inflight))
                if r[0] not in self.inflight][:room]
        topic = self.settings.topic_stream
        source = self.settings.cloudevents_source
        for row in rows:
            row_id, key, event_type, channel, envelope, event_id, occurred_at, input_at = row
            self.inflight[row_id] = row[:5]  # what the acknowledgement's hooks read
            if input_at is not None:
                self.input_at[row_id] = input_at
            self.producer.produce(topic, key=key.encode(), value=envelope.encode(),
                                  on_delivery=lambda err, _msg, rid=row_id: self._acked(rid, err),
                                  headers=[("eventType", event_type.encode()), ("channel", channel.encode()),
                                           ("outboxId", str(row_id).encode()),
                                           *cloudevent_headers(source, event_id, event_type, occurred_at, key)])
        self.producer.poll(0)
        return len(rows)

    def _acked(self, row_id: int, err) -> None:
        if err is not None:  # not expected with an infinite delivery timeout
            self.errors.append(err)
        else:
            self.acknowledged.append(row_id)

    def settle(self, timeout: float = 0.0) -> int:
        """Serve delivery reports (waiting up to ``timeout``) and mark the acknowledged rows
        published. Returns how many were marked."""
        self.producer.poll(timeout)
        if self.errors:  # never mark what failed; the next leader starts over from the table
            raise RuntimeError(f"stream produce failed: {self.errors[0]}")
        if not self.acknowledged:
            return 0
        ids, self.acknowledged = self.acknowledged, []
        outbox.mark_published(self.conn, ids)
        published = time.time()
        for i in ids:  # input message (broker timestamp) to its event on the stream
            if i in self.input_at:
                PROCESSING_LATENCY.observe(max(0.0, published - self.input_at.pop(i)))
        self._observe([self.inflight.pop(i) for i in ids])
        return len(ids)

    def publish_pending(self) -> int:
        """Publish every unpublished row and wait until Kafka has them all (waits out an outage).
        Returns how many went out."""
        total, last_check = 0, time.monotonic()
        while True:
            produced = self.produce_pending()
            while self.inflight:
                total += self.settle(0.05)
                if time.monotonic() - last_check > 1.0:
                    self._check_connection()
                    last_check = time.monotonic()
                    if self.stop.is_set():
                        raise SystemExit("stopped while Kafka is unreachable; the next leader goes on")
                if len(self.inflight) < BATCH // 2:
                    produced += self.produce_pending()
            if not produced:
                return total

    def _check_connection(self) -> None:
        """While waiting for Kafka, make sure we still hold the lock (connection alive)."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT 1")

    def _observe(self, rows) -> None:
        for _id, _key, event_type, channel, _envelope in rows:
            EVENTS_PUBLISHED.labels(event_type, channel or "NONE").inc()
        try:
            self.on_published(rows)
        except Exception:  # the SMS hand-over must never hold the stream back
            log.exception("after-publish hook failed")

    # -- the loop
    def run(self, stop: threading.Event) -> None:
        self.stop = stop
        log.info("relay started", extra={"topic": self.settings.topic_stream})
        more, last_check = True, time.monotonic()
        while not stop.is_set():
            try:
                if not self.try_lead():
                    self._wait(IDLE_POLL)
                    continue
                if more and len(self.inflight) < BATCH:
                    room = BATCH - len(self.inflight)
                    more = self.produce_pending() == room  # a full read: more may be waiting
                if self.inflight:
                    # acknowledgements come back in milliseconds; new commits are noticed meanwhile
                    self.settle(0.002 if len(self.inflight) < BATCH else 0.1)
                    more = self._wait(0) or more
                    if time.monotonic() - last_check > 1.0:  # still connected, so still the leader
                        self._check_connection()
                        last_check = time.monotonic()
                elif not more:
                    self._wait(IDLE_POLL)  # a NOTIFY, or the fallback poll
                    more = True
                self.outages.ok()
            except Exception as exc:
                dependency = dependency_of(exc)
                if dependency is None:
                    raise  # a bug, or a produce that failed: the log and the supervisor see it
                self.reconnect(dependency, exc)
                more = True
        self.close()

    def reconnect(self, dependency: str, error: BaseException) -> None:
        """The database went away, and the leadership (a session lock) with it, or Kafka did
        not answer the takeover's read of the stream. Let Kafka acknowledge what is in flight,
        forget it (the rows stay unpublished in the table), give the lock up, and connect again
        with backoff; the next :meth:`try_lead` recovers as any takeover does, marking the rows
        it finds on the stream, so nothing is produced twice or skipped."""
        self.leader = False
        while self.producer.flush(1.0) and not self.stop.is_set():
            pass  # Kafka down as well: the rows in flight wait for it
        self.inflight.clear()
        self.input_at.clear()
        self.acknowledged.clear()
        self.conn.close()
        while not self.stop.is_set():
            self.stop.wait(self.outages.failed(dependency, error))
            try:
                self.conn = listening_connection("gcp-relay", outbox.OUTBOX_CHANNEL)
                return
            except Exception as exc:
                dependency = dependency_of(exc)
                if dependency is None:
                    raise
                error = exc

    def _wait(self, timeout: float) -> bool:
        """Wait for a commit's NOTIFY (up to ``timeout``). True when one came."""
        return wait_for_notify(self.conn, timeout)

    def close(self) -> None:
        self.producer.flush(10)
        try:
            if self.leader and not self.conn.closed:
                self.settle(0)  # mark what Kafka acknowledged before we go
        except Exception:  # the next leader finds them on the stream anyway
            log.exception("could not mark the last acknowledged rows")
        finally:
            self.conn.close()


def published_in_tail(topic: str, depth: int, timeout: float = 30.0) -> set[tuple[int, str]]:
    """``(outboxId header, eventId)`` of the last ``depth`` messages of each partition of
    ``topic``, read to each partition's end (see :func:`workers.kafka.read_to_end`)."""
    progress = EndOfTopic()
    found = set()
    for msg in read_to_end(topic, start=depth, timeout=timeout, progress=progress):
        outbox_id = dict(msg.headers() or ()).get("outboxId")
        try:
            event_id = str(uuid.UUID(json.loads(msg.value())["eventId"]))
        except (ValueError, TypeError, KeyError, RecursionError):
            continue  # not one of ours: nothing to mark
        if outbox_id and outbox_id.isdigit():
            found.add((int(outbox_id), event_id))
    if not progress.complete and not progress.missing_topic:
        log.warning("recovery read %s only to %s within %.0f s", topic, progress.position, timeout)
    return found


def _hand_over_sms(rows) -> None:
    """With ``NOTIFY_VIA=sms``, each published ``notification.requested`` is sent (a hand-off
    lost here, with Redis or this process, is made good by the scheduler's SMS sweeper)."""
    if get_settings().notify_via != "sms":
        return
    wanted = [json.loads(env) for _id, _key, t, _c, env in rows if t == "notification.requested"]
    if not wanted:
        return
    from actors.sms import send_sms

    for envelope in wanted:
        send_sms.send(envelope["payload"]["code"], envelope["eventId"])


def main() -> None:
    run_process("relay", _serve)


def _serve(stop: threading.Event) -> None:
    ensure_topics(stop=stop)  # Kafka away or refusing: backoff
    if get_settings().notify_via == "sms":
        import actors  # noqa: F401  (the broker, for the SMS hand-over)
    Relay().run(stop)


if __name__ == "__main__":
    main()
