"""The pump against real Kafka (Tansu) and PostgreSQL: validation, DLQ, inbox, offsets, sweeper."""
import dataclasses
import json
import time

import pytest

from models.store.db import db
from models.store.tables import InboxMessage
from tests.e2e import flow
from tests.helpers import uid


@pytest.fixture(scope="module")
def pump(stack):
    from workers.kafka import ensure_topics
    from workers.pump import Pump

    ensure_topics()
    handed = []
    p = Pump(dispatch=handed.extend)
    p.handed = handed
    yield p
    p.close()


def pump_until(pump, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pump.step(0.2)
        with db.connection_context():
            if predicate():
                return
    raise AssertionError("pump did not get there in time")


def inbox(event_id):
    return InboxMessage.get_or_none(InboxMessage.event_id == event_id)


def test_valid_messages_land_in_the_inbox_once_and_are_handed_over(pump):
    pub = flow.Publisher()
    order_id = uid("order-")
    msg = flow.order(order_id, [flow.product_line("10.00", "1")], "10.00")
    # when a message is published twice (a producer retry)
    pub.send("order", msg)
    pub.send("order", msg)
    pump_until(pump, lambda: inbox(msg["eventId"]) is not None)
    pump.step(0.5)
    # then it is in the inbox once, with where it came from, and handed over once
    with db.connection_context():
        row = inbox(msg["eventId"])
        assert row.status == "PENDING" and row.message_key == order_id and row.payload == msg
        assert row.topic == flow.topic_of("order") and row.dispatched_at is not None
        assert InboxMessage.select().where(InboxMessage.event_id == msg["eventId"]).count() == 1
    assert pump.handed.count(row.id) == 1


def test_malformed_and_schema_violating_messages_go_to_the_dlq_and_the_pump_goes_on(pump):
    pub, dlq = flow.Publisher(), flow.TopicReader("dlq")
    order_id = uid("order-")
    bad_schema = flow.payment(order_id, "12.5")  # money must be "12.50"
    good = flow.payment(order_id, "12.50")
    # when garbage, a schema violation and a good message arrive on the same partition
    pub.send("payment", b"{not json", key=order_id)
    pub.send("payment", bad_schema)
    pub.send("payment", good)
    pump_until(pump, lambda: inbox(good["eventId"]) is not None)
    # then both bad ones are in the DLQ with the contract's headers, the good one in the inbox
    records = dlq.wait_for(lambda r: [x for x in r.records if x.key == order_id][:2]
                           if len([x for x in r.records if x.key == order_id]) >= 2 else None,
                           what="two DLQ records")
    first, second = records
    assert first.value == b"{not json" and first.headers["error"].startswith("INVALID_JSON")
    assert second.value == bad_schema
    assert second.headers["error"].startswith("SCHEMA_VIOLATION: /amount:")
    for rec in records:
        assert rec.headers["sourceTopic"] == flow.topic_of("payment")
        assert rec.headers["sourcePartition"].isdigit() and rec.headers["sourceOffset"].isdigit()
    assert int(second.headers["sourceOffset"]) == int(first.headers["sourceOffset"]) + 1
    with db.connection_context():
        assert inbox(bad_schema["eventId"]) is None


def test_offsets_are_committed_after_the_inbox_so_a_new_pump_does_not_see_them_again(pump):
    from workers.pump import Pump

    pub = flow.Publisher()
    msg = flow.notification_result("CODE" + uid().upper())
    pub.send("client", msg)
    pump_until(pump, lambda: inbox(msg["eventId"]) is not None)
    pump.step(0.5)  # the async offset commit goes out
    # when this pump leaves and another joins the group, then nothing is read twice
    pump.consumer.close()
    fresh = Pump(dispatch=pump.handed.extend)
    try:
        seen = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            seen.append(fresh.step(0.3).received)
        assert sum(seen) == 0
    finally:
        pump.consumer = fresh.consumer  # the module's pump goes on with the new consumer


def test_sweeper_hands_over_stale_rows_again_and_dead_letters_failed_ones(pump):
    pub, dlq = flow.Publisher(), flow.TopicReader("dlq")
    stale, failing = flow.payment(uid("order-"), "1.00"), flow.payment(uid("order-"), "2.00")
    pub.send("payment", stale)
    pub.send("payment", failing)
    pump_until(pump, lambda: inbox(stale["eventId"]) and inbox(failing["eventId"]))
    with db.connection_context():
        stale_id, failing_id = inbox(stale["eventId"]).id, inbox(failing["eventId"]).id
        # given one row still pending (its Redis message lost) and one that failed every retry
        db.execute_sql("UPDATE inbox_message SET dispatched_at = now() - interval '1 hour' WHERE id = %s",
                       (stale_id,))
        db.execute_sql("UPDATE inbox_message SET status = 'FAILED', last_error = 'boom' WHERE id = %s",
                       (failing_id,))
    pump.handed.clear()
    # when the sweeper runs
    again, dead = pump.sweep()
    # then the stale row is handed over again, the failed one dead-lettered with its origin
    assert stale_id in pump.handed and again >= 1 and dead >= 1
    rec = dlq.wait_for(lambda r: [x for x in r.records if x.key == failing["orderId"]], what="dead letter")[0]
    assert rec.value == failing
    assert rec.headers["error"] == "PROCESSING_FAILED: boom" and rec.headers["eventId"] == failing["eventId"]
    with db.connection_context():
        assert inbox(failing["eventId"]).dead_lettered_at is not None
        row = inbox(failing["eventId"])
        assert (row.topic, str(row.partition), str(row.offset)) == (
            rec.headers["sourceTopic"], rec.headers["sourcePartition"], rec.headers["sourceOffset"])
    # and a second sweep does not dead-letter it again
    assert pump.sweep()[1] == 0


def test_a_replayed_message_gives_a_failed_row_another_run(pump):
    pub = flow.Publisher()
    msg = flow.payment(uid("order-"), "3.00")
    pub.send("payment", msg)
    pump_until(pump, lambda: inbox(msg["eventId"]) is not None)
    with db.connection_context():
        db.execute_sql("UPDATE inbox_message SET status = 'FAILED', dead_lettered_at = now() "
                       "WHERE event_id = %s", (msg["eventId"],))
    # when the same message comes back without the replay header, then nothing changes
    pub.send("payment", msg)
    # and with it, then the row is pending again and handed over
    pub.send("payment", msg, headers=[("replayOf", b"0:1")])
    pump_until(pump, lambda: inbox(msg["eventId"]).status == "PENDING")
    with db.connection_context():
        row = inbox(msg["eventId"])
        assert row.dead_lettered_at is None and row.attempts == 0
    assert row.id in pump.handed


def test_hand_over_failure_leaves_the_row_for_the_sweeper(pump):
    pub = flow.Publisher()
    msg = flow.payment(uid("order-"), "4.00")
    handed, pump._dispatch = pump._dispatch, None

    def redis_down(_ids):
        raise ConnectionError("redis is down")

    pump._dispatch = redis_down
    try:
        # when the hand-over fails after the inbox commit, then the pump goes on
        pub.send("payment", msg)
        pump_until(pump, lambda: inbox(msg["eventId"]) is not None)
    finally:
        pump._dispatch = handed
    # and the row waits, pending, for the sweeper
    with db.connection_context():
        assert inbox(msg["eventId"]).status == "PENDING"
