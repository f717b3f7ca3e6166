"""Kafka clients with the settings that matter here, and topic creation.

librdkafka's defaults are wrong for a low-latency service: a new consumer group waits about
``session.timeout.ms``/2 for its assignment and a fetch sleeps up to ``fetch.wait.max.ms``,
so both are set explicitly; producers are idempotent with ``acks=all``. Every client starts from
:func:`config.kafka.connection_config` (servers, TLS, SASL, how a refused login is reported).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from config import get_settings
from config.kafka import KafkaAccessDenied, access_granted, classify, connection_config, report_error
from observability import dependency_of

log = logging.getLogger("gcp.kafka")


def producer_config(**overrides) -> dict:
    conf = {
        **connection_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "max.in.flight.requests.per.connection": 5,
        "message.send.max.retries": 2147483647,
        "delivery.timeout.ms": 120000,
        "socket.keepalive.enable": True,
    }
    conf.update(overrides)
    return _no_debug_with_sasl(conf)


def _no_debug_with_sasl(conf: dict) -> dict:
    """librdkafka's ``debug`` traces the protocol: never while SASL is on (see config.kafka)."""
    if str(conf.get("security.protocol", "")).upper().startswith("SASL_"):
        conf.pop("debug", None)
    return conf


def consumer_config(group_id: str, **overrides) -> dict:
    conf = {
        **connection_config(),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1500,
        "fetch.wait.max.ms": get_settings().kafka_fetch_wait_ms,
        "fetch.min.bytes": 1,
        "socket.keepalive.enable": True,
        "isolation.level": "read_committed",
    }
    conf.update(overrides)
    return _no_debug_with_sasl(conf)


def producer(**overrides) -> Producer:
    return Producer(producer_config(**overrides))


def consumer(group_id: str, **overrides) -> Consumer:
    return Consumer(consumer_config(group_id, **overrides))


# ---- a consumer's batches: taken, and read again after a failure ----------------------------

def poll_batch(consumer: Consumer, limit: int, timeout: float) -> list[Message]:
    """Up to ``limit`` messages (errors included): the first waited for up to ``timeout``, the
    rest only if already fetched."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first] + consumer.consume(limit - 1, 0)


def consumer_error(logger: logging.Logger, error: KafkaError) -> None:
    """An error a consumer's poll returned: a refusal (a missing group ACL...) is reported once
    (:func:`config.kafka.report_error`), anything else logged as it comes."""
    if classify(error) is not None:
        report_error(error)
    else:
        logger.warning("consumer error: %s", error)


def retry_from_committed(consumer: Consumer, error: BaseException, stop: threading.Event, outages,
                         reconnect: Callable[[], None] | None = None) -> None:
    """After a failed batch, nothing of which was committed: log it (unless a dependency is
    away, which ``outages``, a :class:`models.store.liveness.Outages`, logs once), back off, and
    :func:`rewind` so that the batch is read again."""
    dependency = dependency_of(error)
    if dependency is None:
        outages.log.error("batch failed; retrying from the last committed offsets", exc_info=error)
    delay = outages.failed(dependency, error) if dependency else 1.0
    rewind(consumer, stop, outages, reconnect)
    stop.wait(delay)


def rewind(consumer: Consumer, stop: threading.Event, outages,
           reconnect: Callable[[], None] | None = None) -> None:
    """Back to the committed offsets (a partition with none: its beginning) so that nothing is
    skipped; until that is done nothing else is read. ``reconnect()`` first mends what else the
    batch needs (the mart's database connection). Kafka, or what ``reconnect`` needs, away:
    retried with backoff until ``stop`` is set; any other failure of Kafka's is retried the same
    way, and anything else (a bug) raises."""
    while not stop.is_set():
        try:
            if reconnect is not None:
                reconnect()
            assigned = consumer.assignment()
            if assigned:
                for tp in consumer.committed(assigned, timeout=10):
                    consumer.seek(tp if tp.offset >= 0 else TopicPartition(tp.topic, tp.partition, 0))
            outages.ok("kafka")
            return
        except Exception as exc:
            dependency = dependency_of(exc)
            if dependency is None and not isinstance(exc, KafkaException):
                raise
            stop.wait(outages.failed(dependency or "kafka", exc))


@dataclass
class EndOfTopic:
    """Where :func:`read_to_end` got to: ``complete`` once every partition reached its end."""

    position: dict[int, int] = field(default_factory=dict)
    high: dict[int, int] = field(default_factory=dict)  # the high watermarks asked at the start
    ended: set[int] = field(default_factory=set)  # the partitions read to their end
    missing_topic: bool = False

    @property
    def complete(self) -> bool:
        return not self.missing_topic and self.ended == set(self.high)


def read_to_end(topic: str, start: str | int = "beginning", timeout: float = 30.0,
                progress: EndOfTopic | None = None) -> Iterator[Message]:
    """Every message of ``topic``, from its beginning (or the last ``start`` messages of each
    partition), until each partition's end; ``progress`` tells whether the end was reached.

    A partition's end is where a fetch reports end of partition (``_PARTITION_EOF``) at or past
    the high watermark asked at the start. The high watermark alone is not enough: Tansu answers
    ListOffsets with a figure one batch behind what it acknowledged (measured: 13 where 14 were
    written), while its fetch reports the true end."""
    progress = progress if progress is not None else EndOfTopic()
    reader = Consumer(consumer_config("gcp-reader-" + uuid.uuid4().hex[:8], **{"enable.partition.eof": True}))
    try:
        meta = reader.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            progress.missing_topic = True
            return
        begin = {}
        for p in sorted(meta.partitions):
            low, high = watermarks(reader, TopicPartition(topic, p), timeout)
            begin[p] = low if start == "beginning" else max(low, high - int(start))
            progress.position[p], progress.high[p] = begin[p], high
        if not begin:
            return
        reader.assign([TopicPartition(topic, p, o) for p, o in begin.items()])
        at_end = progress.ended
        deadline = time.monotonic() + timeout
        while len(at_end) < len(begin) and time.monotonic() < deadline:
            for msg in reader.consume(500, 0.2):
                p, error = msg.partition(), msg.error()
                if error is None:
                    progress.position[p] = msg.offset() + 1
                    at_end.discard(p)
                    yield msg
                elif error.code() == KafkaError._PARTITION_EOF:
                    progress.position[p] = max(progress.position[p], msg.offset())
                    if progress.position[p] >= progress.high[p]:
                        at_end.add(p)
                else:
                    log.warning("reading %s: %s", topic, error)
    finally:
        reader.close()


#: What a partition answers until its leader is in place (librdkafka does not flag them retriable).
_SETTLING = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART)


def watermarks(reader: Consumer, tp: TopicPartition, timeout: float) -> tuple[int, int]:
    """A partition's low and high watermarks. Right after a topic is created Apache Kafka answers
    NOT_LEADER_FOR_PARTITION until the partition's leader is in place: retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return reader.get_watermark_offsets(tp, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            settling = error is not None and (error.retriable() or error.code() in _SETTLING)
            if not settling or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def admin(**overrides) -> AdminClient:
    return AdminClient(connection_config(**overrides))


def contract_topics() -> list[str]:
    s = get_settings()
    return [s.topic_sales_order, s.topic_payments, s.topic_clients, s.topic_stream, s.topic_dlq]


def ensure_topics(timeout: float = 15.0, stop: threading.Event | None = None) -> dict[str, tuple[int, bool]]:
    """Create the contract's missing topics with ``TOPIC_PARTITIONS`` partitions.

    Topics that exist (made by the platform team) keep their partition counts. Returns
    ``{topic: (partitions, created)}`` and asserts every topic exists afterwards. With ``stop``
    (a process starting), Kafka away or refusing the login is waited out with backoff (logged
    once), and so are the broker's ACLs denying a topic, until ``stop`` is set (then ``{}``);
    without it, the first failure raises.
    """
    delay, logged = 1.0, False
    while True:
        client = admin()
        try:
            result = _ensure_topics(client, timeout)
            access_granted()
            return result
        except KafkaException as exc:
            client.poll(0)  # its error callback reports a refused login or certificate, once
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            denied = error is not None and classify(error) is KafkaAccessDenied
            if denied:  # a missing ACL: an operator's fix, not a restart's (logged once)
                report_error(error)
            if stop is None or (dependency_of(exc) != "kafka" and not denied):
                raise
            if not logged and not denied:
                log.warning("Kafka not answering at start: retrying with backoff", extra={"error": str(exc)[:300]})
                logged = True
        if stop.wait(delay):
            return {}
        delay = min(delay * 2, 30.0)


def _ensure_topics(client: AdminClient, timeout: float) -> dict[str, tuple[int, bool]]:
    wanted = contract_topics()
    existing = client.list_topics(timeout=timeout).topics
    missing = [t for t in wanted if t not in existing]
    created = set()
    if missing:
        partitions = get_settings().topic_partitions
        futures = client.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing],
            operation_timeout=timeout, request_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result()
                created.add(name)
            except Exception as exc:  # created concurrently by another process is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                    raise
    topics = _settled(client, wanted, timeout)
    result = {}
    for name in wanted:
        meta = topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            raise RuntimeError(f"topic {name} is missing after creation: {meta and meta.error}")
        result[name] = (len(meta.partitions), name in created)
        if name in created and len(meta.partitions) != get_settings().topic_partitions:
            raise RuntimeError(f"topic {name} has {len(meta.partitions)} partitions, "
                               f"expected {get_settings().topic_partitions}")
    return result


def _settled(client: AdminClient, wanted: list[str], timeout: float) -> dict:
    """The topics' metadata once each of ``wanted`` has its partitions, every one with a leader.
    Apache Kafka acknowledges a creation when its controller has it; the broker's metadata, which
    ``list_topics`` reads, follows a moment later (measured: up to a few hundred ms)."""
    deadline = time.monotonic() + timeout
    while True:
        topics = client.list_topics(timeout=timeout).topics
        ready = all(name in topics and topics[name].error is None and topics[name].partitions
                    and all(p.leader >= 0 for p in topics[name].partitions.values()) for name in wanted)
        if ready or time.monotonic() >= deadline:
            return topics
        time.sleep(0.1)
