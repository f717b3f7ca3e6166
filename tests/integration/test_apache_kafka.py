"""Apache Kafka itself in the embedded stack (``KAFKA_EMBEDDED=apache``; issue 29's first step):
a single KRaft node from the Maven Central jars (``kafka/``), spoken to with the service's own
client settings (``workers.kafka``), and a broker killed with SIGKILL comes back on its log
directory with its topics and its consumer group's committed offsets. Skipped, saying why, where
Java 17+ or Maven is missing; ``.ci/run`` installs them."""
import time
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from devstack import EmbeddedStack, StackError, embedded_broker, java_missing, suite_broker
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
    deadline = time.monotonic() + 30
    while True:  # a restarted broker is NOT_COORDINATOR until it has loaded the group's offsets
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in range(6)], timeout=10)
            break
        except KafkaException as exc:
            loading = exc.args[0].code() in (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                             KafkaError.COORDINATOR_NOT_AVAILABLE)
            if not (loading or exc.args[0].retriable()) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
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


def test_the_suite_runs_on_apache_kafka_wherever_java_is_present(monkeypatch):
    # given no choice made, the suite's broker follows Java: Apache Kafka where it can run
    monkeypatch.delenv("KAFKA_EMBEDDED", raising=False)
    assert suite_broker() == ("tansu" if java_missing() else "apache")
    # and an explicit choice wins
    monkeypatch.setenv("KAFKA_EMBEDDED", "tansu")
    assert suite_broker() == "tansu"


def test_the_stack_tells_its_processes_which_broker_timings_to_use(tmp_path):
    # the embedded stack's environment names the profile of its broker
    assert EmbeddedStack(tmp_path, kafka="tansu").env()["KAFKA_PROFILE"] == "tansu"
    assert EmbeddedStack(tmp_path, kafka="apache").env()["KAFKA_PROFILE"] == "apache"


@pytest.mark.parametrize("profile, wait", [(None, 500), ("apache", 500), ("Tansu", 20)])
def test_fetch_wait_follows_the_profile(monkeypatch, profile, wait):
    from config import load_settings
    from workers.kafka import consumer_config

    monkeypatch.delenv("KAFKA_FETCH_WAIT_MS", raising=False)
    if profile is None:
        monkeypatch.delenv("KAFKA_PROFILE", raising=False)
    else:
        monkeypatch.setenv("KAFKA_PROFILE", profile)
    settings = load_settings()
    assert settings.kafka_fetch_wait_ms == wait
    monkeypatch.setattr("workers.kafka.get_settings", lambda: settings)
    assert consumer_config("g")["fetch.wait.max.ms"] == wait
    # an explicit KAFKA_FETCH_WAIT_MS still wins
    monkeypatch.setenv("KAFKA_FETCH_WAIT_MS", "50")
    assert load_settings().kafka_fetch_wait_ms == 50


def test_an_unknown_profile_is_refused_by_name(monkeypatch):
    from config import check_settings, load_settings

    monkeypatch.setenv("KAFKA_PROFILE", "redpanda")
    assert any(p.startswith("KAFKA_PROFILE must be one of apache, tansu") for p in check_settings(load_settings()))
