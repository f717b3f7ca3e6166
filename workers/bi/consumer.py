"""The mart's consumer: GiftCertificates.Stream and the three input topics → the ``bi`` schema.

Its own consumer group (``BI_CONSUMER_GROUP``, default ``gcp-bi``). For each polled batch:

1. every message is decoded and validated against its topic's schema; an invalid one becomes
   a ``bi.anomaly`` row, is logged and counted, and the mart goes on;
2. in one transaction (:meth:`workers.bi.mart.Mart.record`) the batch is written into the mart;
3. only then are the offsets committed.

A failed batch is read again from the committed offsets (:func:`workers.kafka.retry_from_committed`).
"""
from __future__ import annotations

import logging
import os
import threading
import time

import psycopg2.extensions
from confluent_kafka import KafkaError, TopicPartition

from config import get_settings
from models.store.liveness import Outages
from workers import contracts
from workers.bi import metrics
from workers.bi.mart import STREAM, Mart, StepResult, utcnow
from workers.bi.schema import connect, ensure_schema
from workers.kafka import consumer as make_consumer
from workers.kafka import consumer_error, poll_batch, retry_from_committed

log = logging.getLogger("gcp.bi")
#: Messages taken from Kafka at most per batch.
BATCH = 500
#: How often the lag gauges are refreshed (seconds).
LAG_EVERY = 1.0


def consumer_group() -> str:
    return os.environ.get("BI_CONSUMER_GROUP") or "gcp-bi"


class BiConsumer:
    """The consume → mart → offsets loop. ``step()`` runs one batch (tests drive it)."""

    def __init__(self, group: str | None = None, conn=None):
        settings = get_settings()
        self.settings = settings
        self.group = group or consumer_group()
        self.topics = [settings.topic_stream, settings.topic_sales_order, settings.topic_payments,
                       settings.topic_clients]
        self.conn = conn or connect()
        ensure_schema(self.conn)
        self.mart = Mart(self.conn)
        self.consumer = make_consumer(self.group, **{"enable.partition.eof": False})
        self.consumer.subscribe(self.topics)
        self._last_ts: dict[str, float] = {}
        self._last_lag = 0.0
        self._started = time.time()
        self.caught_up = False
        self.lag: dict[str, tuple[int, float]] = {}
        self.outages = Outages("bi")

    def step(self, timeout: float = 0.2) -> StepResult:
        messages = poll_batch(self.consumer, BATCH, timeout)
        stream, inputs, invalid, offsets = [], [], [], {}
        received = 0
        for msg in messages:
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    consumer_error(log, msg.error())
                continue
            received += 1
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            contract = contracts.contract_name(msg.topic())
            ts_type, ts = msg.timestamp()
            if ts_type and ts > 0:
                self._last_ts[contract] = ts / 1000.0
            try:
                parsed = contracts.parse(msg.topic(), msg.value())
            except contracts.InvalidMessage as bad:
                invalid.append((contract, msg, bad.reason))
                continue
            if contract == STREAM:
                stream.append((msg, parsed.message))
            else:
                inputs.append((contract, msg, parsed.message))
        result = self.mart.record(stream, inputs, invalid, utcnow()) if received else StepResult()
        result.received = received
        if offsets:  # only after the mart's transaction committed
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=False)
        self._observe(result)
        self.refresh_lag(force=not messages)
        return result

    def _observe(self, result: StepResult) -> None:
        for outcome in ("applied", "duplicates", "not_applied", "invalid"):
            n = getattr(result, outcome)
            if n:
                metrics.MESSAGES.labels(STREAM if outcome != "invalid" else "any", outcome).inc(n)

    def refresh_lag(self, force: bool = False) -> dict[str, tuple[int, float]]:
        """Set the lag gauges (at most every :data:`LAG_EVERY` s, unless ``force``)."""
        now = time.time()
        if not force and now - self._last_lag < LAG_EVERY:
            return self.lag
        self._last_lag = now
        assigned = self.consumer.assignment()
        if not assigned:
            return self.lag
        positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(assigned)}
        unknown = [tp for tp in assigned if positions[(tp.topic, tp.partition)] < 0]
        if unknown:
            for tp in self.consumer.committed(unknown, timeout=5):
                positions[(tp.topic, tp.partition)] = tp.offset
        behind: dict[str, int] = {}
        for tp in assigned:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            pos = positions[(tp.topic, tp.partition)]
            if pos < 0:
                pos = low
            contract = contracts.contract_name(tp.topic)
            behind[contract] = behind.get(contract, 0) + max(0, high - pos)
        lag = {}
        for contract, n in behind.items():
            seconds = 0.0 if n == 0 else max(0.0, now - self._last_ts.get(contract, self._started))
            lag[contract] = (n, seconds)
            metrics.LAG_MESSAGES.labels(contract).set(n)
            metrics.LAG_SECONDS.labels(contract).set(seconds)
        self.lag = lag
        self.caught_up = all(n == 0 for n, _s in lag.values())
        return lag

    def run(self, stop: threading.Event) -> None:
        log.info("bi started", extra={"topics": self.topics, "group": self.group})
        last_close = 0.0
        while not stop.is_set():
            try:
                used_db = self.step().received > 0  # an empty poll did not touch the database
                if time.monotonic() - last_close > 30 or not self.lag:
                    last_close = time.monotonic()
                    self.mart.close_due_days(utcnow(), self.caught_up)
                    used_db = True
                if used_db:
                    self.outages.ok()
            except Exception as exc:  # nothing of the batch was committed: read it again
                retry_from_committed(self.consumer, exc, stop, self.outages, self._reconnect)
        self.close()

    def _reconnect(self) -> None:
        """A live connection to the mart before the batch is read again."""
        if self.conn.closed:
            self.conn = connect()
            self.mart = Mart(self.conn)
        elif self.conn.status != psycopg2.extensions.STATUS_READY:
            self.conn.rollback()

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.conn.close()
