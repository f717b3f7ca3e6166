"""Poison messages, the DLQ and its tools, with the pump, the actors and the relay running
in this process against the real servers."""
import json
from decimal import Decimal

import pytest
from click.testing import CliRunner

from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import GiftCertificate, InboxMessage
from tests.e2e import flow
from tests.helpers import allow_large_messages, load, uid

D = Decimal


@pytest.fixture(scope="module")
def pipeline(stack):
    p = flow.InProcessPipeline().start()
    yield p
    p.stop()


def cli(*args):
    from app import cli as app_cli

    result = CliRunner().invoke(app_cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def status(code):
    with db.connection_context():
        return GiftCertificate.get(GiftCertificate.code == code).status


def test_a_message_failing_every_retry_is_dead_lettered_then_replayed_once_fixed(pipeline, caplog):
    pub, dlq, stream = flow.Publisher(), flow.TopicReader("dlq"), flow.TopicReader()
    code = load(1, "1000.00")[0]
    order_id = uid("order-")
    with db.connection_context():
        messagebus.handle(commands.Reserve("ONLINE_STORE", order_id, "1", D("1000.00"), "RUB", code=code))
        # given a fault that refuses this order's row (a bug, a bad migration...)
        # (its DETAIL quotes the row, the buyer's phone with it, as a CHECK violation's does)
        db.execute_sql("""CREATE OR REPLACE FUNCTION gcp_dlq_fault() RETURNS trigger AS $$
            BEGIN IF NEW.order_id = '%s' THEN RAISE EXCEPTION 'order table refuses %s'
                USING DETAIL = 'Failing row contains ' || NEW.customer::text; END IF;
            RETURN NEW; END $$ LANGUAGE plpgsql""" % (order_id, order_id))
        db.execute_sql("CREATE TRIGGER gcp_dlq_fault BEFORE INSERT OR UPDATE ON sales_order "
                       "FOR EACH ROW EXECUTE FUNCTION gcp_dlq_fault()")
    created = flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00")
    try:
        pub.send("order", created)
        pub.send("payment", flow.payment(order_id, "1000.00"))
        # and other traffic at the same time
        other = load(1, "500.00")[0]
        other_order = uid("order-")
        with db.connection_context():
            messagebus.handle(commands.Reserve("POS", other_order, "1", D("500.00"), "RUB", code=other))
        pub.send("order", flow.order(other_order, [flow.gc_line(other, "500.00")], "500.00", channel="POS"))
        pub.send("payment", flow.payment(other_order, "500.00", channel="POS"))
        # then the order lands in the DLQ after the actors' retries, and the rest goes on
        dead = dlq.wait_for(lambda r: [x for x in r.records if x.key == order_id], timeout=60,
                            what="dead letter")[0]
        assert dead.value == created
        # saying why by the error's class, SQLSTATE and line, never by its text (the phone)
        assert dead.headers["error"].startswith("PROCESSING_FAILED: RaiseException SQLSTATE P0001 at ")
        assert "9990001122" not in dead.headers["error"] and "refuses" not in dead.headers["error"]
        assert dead.headers["sourceTopic"] == flow.topic_of("order")
        stream.wait_for(lambda r: any(e["eventType"] == "issue" for e in r.for_key(other)), what="other issue")
        assert status(code) == "RESERVED"
        with db.connection_context():
            row = InboxMessage.get(InboxMessage.event_id == created["eventId"])
            assert row.status == "FAILED" and row.attempts >= 2 and "9990001122" not in row.last_error
        # and `dlq list` shows it and why
        listing = cli("dlq", "list")
        entry = f"{dead.partition}:{dead.offset}"
        assert entry in listing and created["eventId"] in listing and "RaiseException" in listing
        assert "9990001122" not in listing
        # and the workers' logs of the failed attempts (ours and Dramatiq's) name no phone either
        assert "inbox row" in caplog.text and "9990001122" not in caplog.text
    finally:
        with db.connection_context():
            db.execute_sql("DROP TRIGGER IF EXISTS gcp_dlq_fault ON sales_order")
    # when the cause is fixed and the entry replayed
    out = cli("dlq", "replay", "--id", entry)
    assert f"replayed {entry}" in out
    # then it goes through the pump again and the order is issued, once
    events = stream.wait_for(lambda r: [e for e in r.for_key(code) if e["eventType"] == "issue"], timeout=30,
                             what="issue after replay")
    assert len(events) == 1 and status(code) == "ISSUED"
    assert "REPLAYED" in cli("dlq", "list")
    # and replaying everything not replayed yet does not send it again
    assert entry not in cli("dlq", "replay")


def test_garbage_is_listed_with_its_reason_and_replay_refuses_unknown_ids(pipeline):
    pub, dlq = flow.Publisher(), flow.TopicReader("dlq")
    key = uid("junk-")
    pub.send("client", "\xff not even json", key=key)
    rec = dlq.wait_for(lambda r: [x for x in r.records if x.key == key], what="junk in the DLQ")[0]
    assert rec.headers["error"].startswith("INVALID_JSON")
    listing = cli("dlq", "list", "--limit", "1000")
    assert f"{rec.partition}:{rec.offset}" in listing and "INVALID_JSON" in listing
    from app import cli as app_cli
    result = CliRunner().invoke(app_cli, ["dlq", "replay", "--id", "99:99999"])
    assert result.exit_code != 0 and "no DLQ entry 99:99999" in result.output


def test_a_value_over_the_size_limit_is_dead_lettered_cut_and_not_replayed(pipeline):
    from confluent_kafka import Producer

    from workers.kafka import producer_config

    dlq = flow.TopicReader("dlq")
    key = uid("huge-")
    order = flow.order(uid("huge-order-"), [flow.product_line("10.00", "1")], "10.00")
    huge = json.dumps(dict(order, filler="y" * (8 * 1024 * 1024))).encode()
    allow_large_messages(flow.topic_of("order"))
    producer = Producer(producer_config(**{"message.max.bytes": 10_000_000}))
    delivered = []
    producer.produce(flow.topic_of("order"), key=key.encode(), value=huge,
                     on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(30) == 0 and delivered == [None], delivered
    rec = dlq.wait_for(lambda r: [x for x in r.records if x.key == key], what="the 8 MB value in the DLQ")[0]
    # its copy is cut to 64 KiB and says how big it was; the source is named
    assert rec.headers["error"] == (f"TOO_LARGE: {len(huge)} bytes, the limit is 1048576 "
                                    "(KAFKA_MAX_MESSAGE_BYTES)")
    assert rec.headers["valueBytes"] == str(len(huge)) and len(rec.value) == 65_536
    assert rec.headers["sourceTopic"] == flow.topic_of("order")
    # and replaying it by id is refused (it would send the cut copy), with where to find it
    from app import cli as app_cli

    result = CliRunner().invoke(app_cli, ["dlq", "replay", "--id", f"{rec.partition}:{rec.offset}"])
    assert result.exit_code != 0 and "the whole message is in its source topic" in result.output
    dlq.close()
