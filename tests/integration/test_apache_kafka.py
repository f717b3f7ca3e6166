"""Apache Kafka itself in the embedded stack (``KAFKA_EMBEDDED=apache``; issue 29's first step):
a single KRaft node from the Maven Central jars (``kafka/``), spoken to with the service's own
client settings (``workers.kafka``), and a broker killed with SIGKILL comes back on its log
directory with its topics and its consumer group's committed offsets. Skipped, saying why, where
Java 17+ or Maven is missing; ``.ci/run`` installs them."""
import time
import uuid

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from devstack import EmbeddedStack, StackError, embedded_broker, java_missing
from workers.kafka import consumer_config, producer_config

pytestmark = [pytest.mark.skipif(java_missing() is not None, reason=str(java_missing())),
              pytest.mark.xdist_group("apache-kafka")]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    stack = EmbeddedStack(tmp_path_factory.mktemp("apache-kafka"), kafka="apache")
    started = time.monotonic()
    stack.start_apache_kafka()
    stack.ready_after = time.monotonic() - started
    yield stack
    stack.stop()


def consume(bootstrap: str, topic: str, group: str, want: int, timeout: float = 30) -> list:
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(group, **{"bootstrap.servers": bootstrap}))
    consumer.subscribe([topic])
    got, deadline = [], time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg)
            consumer.store_offsets(msg)
    if got:
        consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, p) for p in range(6)], timeout=10)
    consumer.close()
    return got, {tp.partition: tp.offset for tp in committed}


def test_the_service_speaks_to_apache_kafka_and_a_killed_broker_keeps_its_log(broker):
    from confluent_kafka import Producer

    bootstrap = broker.kafka_bootstrap
    topic, group = f"gcp-apache-{uuid.uuid4().hex[:8]}", f"gcp-apache-{uuid.uuid4().hex[:6]}"
    # given a topic of 6 partitions, and 60 keyed messages from the service's idempotent producer
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])[topic].result(30)
    producer = Producer(producer_config(**{"bootstrap.servers": bootstrap}))
    for i in range(60):
        producer.produce(topic, key=f"order-{i % 7}", value=f"{i}".encode())
    assert producer.flush(30) == 0
    del producer  # it would only log the restart below as refused connections
    # when the service's consumer settings read them as a group, committing what they read
    got, committed = consume(bootstrap, topic, group, 60)
    assert sorted(int(m.value()) for m in got) == list(range(60))
    assert sum(committed.values()) == 60
    # then a broker killed with SIGKILL restarts on its log: the topic and the offsets are there
    broker.restart_kafka()
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics[topic]
    assert len(meta.partitions) == 6
    again, committed_after = consume(bootstrap, topic, group, 0, timeout=3)
    assert again == [] and committed_after == committed


def test_the_broker_is_chosen_by_kafka_embedded(monkeypatch):
    monkeypatch.delenv("KAFKA_EMBEDDED", raising=False)
    assert embedded_broker() == "tansu"
    monkeypatch.setenv("KAFKA_EMBEDDED", "Apache")
    assert embedded_broker() == "apache"
    monkeypatch.setenv("KAFKA_EMBEDDED", "redpanda")
    with pytest.raises(StackError, match="KAFKA_EMBEDDED must be one of tansu, apache"):
        embedded_broker()
