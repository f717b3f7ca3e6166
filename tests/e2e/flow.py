"""Helpers for tests that talk Kafka: the channels' messages and a reader of the stream.

Messages are built like the contract's examples (``contracts/examples``), with unique ids.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from config import get_settings
from workers.kafka import consumer_config, producer_config, watermarks

T0 = "2026-11-22T10:00:00Z"


def eid() -> str:
    return str(uuid.uuid4())


def at(minutes: int = 0) -> str:
    """A fixed base time plus ``minutes`` (RFC 3339)."""
    base = time.mktime((2026, 11, 22, 10, 0, 0, 0, 0, 0)) + minutes * 60
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.localtime(base))


# ---- the channels' messages -------------------------------------------------------------

def order(order_id: str, lines: list[dict], total: str, *, event_type: str = "ORDER_CREATED",
          channel: str = "ONLINE_STORE", currency: str = "RUB", tenders: list[dict] | None = None,
          refund_lines: list[dict] | None = None, minute: int = 0, phone: str | None = "+79990001122",
          **extra) -> dict:
    msg = {"eventId": eid(), "eventType": event_type, "occurredAt": at(minute), "orderId": order_id,
           "channel": channel, "currency": currency, "total": total, "lines": lines}
    if phone:
        msg["customer"] = {"clientId": "client-" + order_id, "phone": phone}
    if tenders is not None:
        msg["tenders"] = tenders
    if refund_lines is not None:
        msg["refundLines"] = refund_lines
    msg.update(extra)
    return msg


def gc_line(code: str, amount: str, line_id: str = "1") -> dict:
    return {"lineId": line_id, "type": "GIFT_CERTIFICATE", "certificateCode": code, "amount": amount}


def product_line(amount: str, line_id: str = "2", sku: str = "mug-01") -> dict:
    return {"lineId": line_id, "type": "PRODUCT", "sku": sku, "quantity": 1, "amount": amount}


def gc_tender(code: str, amount: str, authorization_id: str | None = None) -> dict:
    t = {"type": "GIFT_CERTIFICATE", "certificateCode": code, "amount": amount}
    if authorization_id:
        t["authorizationId"] = authorization_id
    return t


def payment(order_id: str, amount: str, *, event_type: str = "PAYMENT_CAPTURED", method: str = "CARD",
            channel: str = "ONLINE_STORE", currency: str = "RUB", gc: dict | None = None,
            payment_id: str | None = None, minute: int = 0, **extra) -> dict:
    msg = {"eventId": eid(), "eventType": event_type, "occurredAt": at(minute),
           "paymentId": payment_id or "pay-" + uuid.uuid4().hex[:8], "orderId": order_id,
           "channel": channel, "amount": amount, "currency": currency, "method": method}
    if gc is not None:
        msg["giftCertificate"] = gc
    msg.update(extra)
    return msg


def notification_result(code: str, status: str = "DELIVERED", client_id: str = "client-7") -> dict:
    return {"eventId": eid(), "eventType": "NOTIFICATION_RESULT", "occurredAt": at(),
            "clientId": client_id, "phone": "+79990001122",
            "notification": {"certificateCode": code, "notificationId": "ntf-" + uuid.uuid4().hex[:6],
                             "channel": "SMS", "status": status}}


# ---- Kafka ------------------------------------------------------------------------------

def topic_of(kind: str) -> str:
    s = get_settings()
    return {"order": s.topic_sales_order, "payment": s.topic_payments, "client": s.topic_clients,
            "stream": s.topic_stream, "dlq": s.topic_dlq}[kind]


def key_of(kind: str, msg: dict) -> str:
    return msg.get("clientId") if kind == "client" else msg["orderId"]


class Publisher:
    def __init__(self):
        self.producer = Producer(producer_config())

    def send(self, kind: str, msg: dict | bytes | str, key: str | None = None, flush: bool = True,
             headers: list | None = None) -> None:
        if isinstance(msg, dict):
            key = key or key_of(kind, msg)
            value = json.dumps(msg).encode()
        else:
            value = msg.encode() if isinstance(msg, str) else msg
        self.producer.produce(topic_of(kind), key=key.encode() if key else None, value=value,
                              headers=headers)
        if flush:
            self.producer.flush(30)

    def flush(self) -> None:
        self.producer.flush(30)


@dataclass
class Record:
    key: str | None
    value: dict | bytes
    headers: dict[str, str]
    partition: int
    offset: int
    timestamp_ms: int


class TopicReader:
    """Reads a topic from its current end (or the beginning), collecting every record."""

    def __init__(self, kind: str = "stream", from_beginning: bool = False):
        self.kind = kind
        self.topic = topic_of(kind)
        self.consumer = Consumer(consumer_config("test-reader-" + uuid.uuid4().hex[:8]))
        meta = self.consumer.list_topics(self.topic, timeout=15).topics[self.topic]
        assert meta.partitions, f"topic {self.topic} has no partitions (never created?): nothing could be read"
        parts = []
        for p in meta.partitions:
            low, high = watermarks(self.consumer, TopicPartition(self.topic, p), 15)
            parts.append(TopicPartition(self.topic, p, low if from_beginning else high))
        self.consumer.assign(parts)
        self.records: list[Record] = []

    def poll(self, seconds: float = 0.2) -> None:
        deadline = time.monotonic() + seconds
        while True:
            msg = self.consumer.poll(max(0.0, min(0.1, deadline - time.monotonic())))
            if msg is not None and msg.error() is None:
                raw = msg.value()
                try:
                    value = json.loads(raw)
                except ValueError:
                    value = raw
                headers = dict(msg.headers() or ())
                if self.kind == "stream" and "eventType" in headers:  # every stream event is a
                    assert_cloudevent(msg.key(), raw, headers)        # CloudEvent (binary mode)
                self.records.append(Record(
                    msg.key().decode() if msg.key() else None, value,
                    {k: (v or b"").decode() for k, v in msg.headers() or ()}, msg.partition(),
                    msg.offset(), msg.timestamp()[1]))
            elif msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                raise AssertionError(f"consumer error {msg.error()}")
            if time.monotonic() >= deadline:
                return

    def for_key(self, key: str) -> list[dict]:
        return [r.value for r in self.records if r.key == key]

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "records"):
        """Poll until ``predicate(self)`` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(0.1)
            got = predicate(self)
            if got:
                return got
        raise AssertionError(f"timed out waiting for {what}; have: "
                             f"{[(r.key, r.value.get('eventType') if isinstance(r.value, dict) else r.value) for r in self.records][-30:]}")

    def wait_types(self, key: str, types: list[str], timeout: float = 20.0) -> list[dict]:
        """Wait until ``key`` has at least ``len(types)`` events; asserts their eventTypes."""
        events = self.wait_for(lambda r: len(r.for_key(key)) >= len(types) and r.for_key(key),
                               timeout, f"{types} for {key}")
        self.poll(0.3)  # anything extra would show up now
        events = self.for_key(key)
        assert [e["eventType"] for e in events] == types, [e["eventType"] for e in events]
        return events

    def close(self) -> None:
        self.consumer.close()


def assert_sequence(events: list[dict]) -> None:
    """Sequenced events of one certificate count from their first with no gap or repeat."""
    seqs = [e["sequence"] for e in events if "sequence" in e]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def assert_cloudevent(key: bytes | None, value: bytes, headers: dict[str, bytes]) -> None:
    """A stream record read back with the CloudEvents SDK's Kafka binding (``from_binary``):
    its id, type, source, time and subject are the envelope's, its data the envelope itself."""
    from cloudevents.v1.kafka import KafkaMessage, from_binary

    from workers.relay import CLOUDEVENTS_TYPE_PREFIX

    event = from_binary(KafkaMessage(headers, key, value))
    envelope = json.loads(value)
    assert event["specversion"] == "1.0" and event["id"] == envelope["eventId"], event
    assert event["type"] == CLOUDEVENTS_TYPE_PREFIX + envelope["eventType"], event
    assert event["source"] == get_settings().cloudevents_source, event
    assert event.get("time") == envelope.get("occurredAt") and event["subject"] == key.decode(), event
    assert event["datacontenttype"] == "application/json" and event.data == envelope, event
    assert headers["eventType"].decode() == envelope["eventType"], headers


def assert_valid_stream(events: list[dict]) -> None:
    from workers.contracts import errors

    for e in events:
        problems = errors("GiftCertificates.Stream", e)
        assert not problems, (e, problems)


# ---- the pipeline in this process (integration tests) ----------------------------------------

class InProcessPipeline:
    """Pump, Dramatiq worker, relay (and optionally the scheduler) in threads of the test process.

    The same code as the Procfile processes, against the real servers; e2e tests start the real
    processes instead (tests/e2e/conftest.py).
    """

    def __init__(self, scheduler: bool = False, worker_threads: int = 4):
        import threading

        self.stop_event = threading.Event()
        self.threads = []
        self.worker = None
        self.with_scheduler = scheduler
        self.worker_threads = worker_threads

    def start(self) -> "InProcessPipeline":
        import threading

        import dramatiq

        import actors  # noqa: F401  (broker first)
        from actors.broker import broker
        from workers.kafka import ensure_topics
        from workers.pump import Pump
        from workers.relay import Relay

        ensure_topics()
        self.worker = dramatiq.Worker(broker, worker_threads=self.worker_threads, worker_timeout=10)
        self.worker.start()
        self.pump, self.relay = Pump(), Relay()
        runners = [self.pump.run, self.relay.run]
        if self.with_scheduler:
            from workers.scheduler import Scheduler

            self.scheduler = Scheduler()
            runners.append(self.scheduler.run)
        for run in runners:
            t = threading.Thread(target=run, args=(self.stop_event,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)
        if self.worker is not None:
            self.worker.stop()


def shape(events):
    """What the contract promises per event: type, status, payload balance and sequence."""
    return [(e["eventType"], e["status"], e["payload"].get("remainingBalance"), e.get("sequence"))
            for e in events]
