"""The outbox relay against real PostgreSQL and Kafka: order, headers, wake-up on NOTIFY,
leadership, takeover without duplicates, and a Kafka outage without loss or reordering."""
import os
import signal
import statistics
import threading
import time
from decimal import Decimal

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import OutboxEvent
from tests.e2e import flow
from tests.helpers import issued

D = Decimal


def test_events_go_out_in_order_with_key_headers_and_right_after_commit(relay):
    reader = flow.TopicReader()
    # when a certificate is issued (the relay warms up on it) and then redeemed four times
    code = issued("1000.00")
    reader.wait_for(lambda r: len(r.for_key(code)) >= 3, what="issue events")
    lags = []
    for n, amount in enumerate(("100.00", "200.00", "300.00", "400.00"), start=4):
        with db.connection_context():
            committed = time.time()
            messagebus.handle(commands.Redeem(code, D(amount)), commands.Context(causation_id=flow.eid()))
        reader.wait_for(lambda r: len(r.for_key(code)) >= n, what="redeem event")
        lags.append([r for r in reader.records if r.key == code][-1].timestamp_ms / 1000 - committed)
    # then the stream carries them keyed by code, in sequence, with the contract's headers
    records = [r for r in reader.records if r.key == code]
    assert [r.value["eventType"] for r in records] == ["reserve", "issue", "notification.requested",
                                                      "redeem.partial", "redeem.partial", "redeem.partial",
                                                      "redeem.full"]
    assert [r.value["sequence"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert len({r.partition for r in records}) == 1
    for r in records:
        assert r.headers["eventType"] == r.value["eventType"] and r.headers["channel"] == r.value["channel"]
        assert r.headers["outboxId"].isdigit()
    flow.assert_valid_stream([r.value for r in records])
    # and the relay was woken by the commit's NOTIFY, not by its one-second poll
    assert statistics.median(lags) < 0.3, lags
    with db.connection_context():
        assert not OutboxEvent.select().where((OutboxEvent.message_key == code)
                                              & OutboxEvent.published_at.is_null()).exists()


def test_one_relay_leads_and_a_standby_takes_over_when_it_dies(stack):
    from workers.relay import Relay

    first, second = Relay(), Relay()
    try:
        assert first.try_lead() is True
        assert second.try_lead() is False
        # when the leader's process dies (its connection closes), then the standby leads
        first.conn.close()
        deadline = time.monotonic() + 5
        while not second.try_lead() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.leader
    finally:
        second.close()


def test_takeover_does_not_publish_again_what_a_killed_leader_already_produced(stack):
    from workers.relay import Relay

    reader = flow.TopicReader()
    dead = Relay()
    assert dead.try_lead()
    dead.publish_pending()  # earlier tests' backlog: the crash concerns the last batch only
    code = issued("300.00")
    dead.publish_pending()
    with db.connection_context():
        # given the leader produced the rows but died before marking them
        OutboxEvent.update(published_at=None).where(OutboxEvent.message_key == code).execute()
    dead.conn.close()
    heir = Relay()
    try:
        # when the standby takes over, then it finds them on the stream and does not resend them
        assert heir.try_lead()
        heir.publish_pending()
        reader.wait_for(lambda r: len(r.for_key(code)) >= 3, what="the dead leader's events")
        reader.poll(1.0)  # a second copy would show up now
        assert [e["sequence"] for e in reader.for_key(code)] == [1, 2, 3]
        with db.connection_context():
            assert not OutboxEvent.select().where((OutboxEvent.message_key == code)
                                                  & OutboxEvent.published_at.is_null()).exists()
    finally:
        heir.close()


def test_takeover_does_not_take_a_reused_outbox_id_for_a_published_row(stack):
    """A database restored from a backup hands out outbox ids the stream has seen: a message
    with the row's id but another eventId is not the row's, so the row still goes out."""
    import json
    import uuid

    from workers.kafka import producer
    from workers.relay import Relay

    drain = Relay()
    assert drain.try_lead()
    drain.publish_pending()  # earlier tests' backlog
    code = issued("200.00")
    with db.connection_context():
        rows = list(OutboxEvent.select().where(OutboxEvent.message_key == code).order_by(OutboxEvent.id))
    drain.conn.close()
    # given the stream's tail holds other events under these rows' ids
    p = producer()
    for row in rows:
        p.produce(os.environ["TOPIC_STREAM"], key=b"restored-" + code.encode(),
                  value=json.dumps(dict(row.envelope, eventId=str(uuid.uuid4()))).encode(),
                  headers=[("outboxId", str(row.id).encode())])
    assert p.flush(10) == 0
    reader = flow.TopicReader()
    heir = Relay()
    try:
        # when a relay takes over, then it marks none of them and publishes them all
        assert heir.try_lead()
        heir.publish_pending()
        reader.wait_for(lambda r: len(r.for_key(code)) >= len(rows), what="the rows' events")
        assert [e["sequence"] for e in reader.for_key(code)] == [r.sequence for r in rows]
    finally:
        heir.close()
        reader.close()


@pytest.fixture
def own_kafka(tmp_path, stack):
    """A separate Tansu (memory storage) for an outage: SIGSTOP freezes it without data loss."""
    from devstack import EmbeddedStack

    other = EmbeddedStack(tmp_path)
    other.start_kafka()
    admin = AdminClient({"bootstrap.servers": other.kafka_bootstrap})
    topic = os.environ["TOPIC_STREAM"]
    for fut in admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)]).values():
        fut.result(15)
    yield other
    os.kill(other.pids()["kafka"], signal.SIGCONT)
    other.stop()


def test_kafka_outage_events_wait_and_go_out_in_order_none_lost(own_kafka, monkeypatch):
    from workers.kafka import producer_config
    from workers.relay import Relay

    bootstrap = own_kafka.kafka_bootstrap
    relay = Relay(producer=Producer(producer_config(**{"bootstrap.servers": bootstrap,
                                                        "delivery.timeout.ms": 0, "linger.ms": 1})))
    relay.on_published = lambda rows: None
    try:
        relay.publish_pending()  # whatever earlier tests left unpublished
        # given Kafka stops answering
        os.kill(own_kafka.pids()["kafka"], signal.SIGSTOP)
        code = issued("500.00")
        with db.connection_context():
            for amount in ("100.00", "150.00", "250.00"):
                messagebus.handle(commands.Redeem(code, D(amount)), commands.Context(causation_id=flow.eid()))
        done = threading.Event()
        worker = threading.Thread(target=lambda: (relay.publish_pending(), done.set()), daemon=True)
        worker.start()
        # when the relay tries, then it waits and marks nothing
        time.sleep(1.5)
        assert not done.is_set()
        with db.connection_context():
            assert OutboxEvent.select().where((OutboxEvent.message_key == code)
                                              & OutboxEvent.published_at.is_null()).count() == 6
        # when Kafka is back, then every event goes out once, in order
        os.kill(own_kafka.pids()["kafka"], signal.SIGCONT)
        assert done.wait(60)
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        from config import reset_settings
        reset_settings()
        reader = flow.TopicReader(from_beginning=True)
        reader.poll(2.0)
        events = reader.for_key(code)
        assert [e["eventType"] for e in events] == ["reserve", "issue", "notification.requested",
                                                   "redeem.partial", "redeem.partial", "redeem.full"]
        flow.assert_sequence(events)
        reader.close()
    finally:
        monkeypatch.undo()
        from config import reset_settings
        reset_settings()
        relay.close()
