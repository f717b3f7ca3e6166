"""``verify`` as operators run it and with ``--stream``, against real PostgreSQL and Kafka: the
command's exit status and report, and each event on the stream once, in sequence (a duplicate,
a missing or unknown event and one out of order are reported)."""
from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
from click.testing import CliRunner

from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import OutboxEvent
from tests.e2e import flow
from tests.integration.verifykit import corrupted, rules, sell
from workers.verify import Scope, verify

D = Decimal


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


# ---- the command ----------------------------------------------------------------------------

def test_the_command_exits_0_when_clean_and_1_with_the_violation(clean_db):
    from app import cli

    code, _order = sell("1000.00")
    result = CliRunner().invoke(cli, ["verify"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "no violations"
    db.execute_sql("UPDATE gift_certificate SET remaining_balance = 999.99 WHERE code = %s", (code,))
    try:
        result = CliRunner().invoke(cli, ["verify"], catch_exceptions=False)
    finally:
        db.execute_sql("UPDATE gift_certificate SET remaining_balance = 1000.00 WHERE code = %s", (code,))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert (f"balance.ledger {code}: remainingBalance 999.99, sum of 1 ledger row(s) 1000.00, "
            "difference -0.01") in lines
    assert lines[-1] == "3 violation(s): balance.formula 1, balance.ledger 1, stream.last_state 1"


# ---- the stream ---------------------------------------------------------------------------

def published(codes: list[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while OutboxEvent.select().where(OutboxEvent.message_key.in_(codes)
                                     & OutboxEvent.published_at.is_null()).exists():
        assert time.monotonic() < deadline, "the relay did not publish"
        time.sleep(0.1)


def test_stream_each_event_once_in_sequence_and_a_duplicate_is_reported(relay):
    from workers.kafka import producer

    code, order_id = sell("500.00")
    messagebus.handle(commands.Redeem(code, D("100.00")), commands.Context(causation_id=flow.eid()))
    published([code])
    scope = Scope.of(codes=[code], orders=[order_id])
    assert [str(v) for v in verify(db.connection(), scope, stream=True)] == []
    row = OutboxEvent.select().where((OutboxEvent.message_key == code)
                                     & (OutboxEvent.event_type == "redeem.partial")).get()
    # when an outbox row's event is not on the stream (and the one there is no outbox row's)
    with corrupted() as sql:
        sql("UPDATE outbox_event SET event_id = %s WHERE id = %s", (flow.eid(), row.id))
        lines = [str(v) for v in verify(db.connection(), scope, stream=True)]
    assert rules(lines) == {"stream.missing", "stream.unknown"}, lines
    assert any(l.startswith(f"stream.missing {code}: outbox row {row.id} event ")
               and l.endswith(" sequence 4 is not on the stream") for l in lines)
    assert (f"stream.unknown {code}: event {row.event_id} at ") in "\n".join(lines)
    # when the redemption goes onto the stream a second time (a relay cut off while another leads)
    p = producer()
    p.produce(relay.settings.topic_stream, key=code.encode(), value=json.dumps(row.envelope).encode(),
              headers=[("eventType", b"redeem.partial"), ("channel", row.channel.encode()),
                       ("outboxId", str(row.id).encode())])
    assert p.flush(10) == 0
    lines = [str(v) for v in verify(db.connection(), scope, stream=True)]
    assert len(lines) == 1 and lines[0].startswith(
        f"stream.duplicate {code}: event {row.event_id} 2 times, at "), lines


def test_stream_out_of_order_is_reported(relay):
    from workers.kafka import producer

    code, _order = sell("500.00")
    published([code])
    # when the certificate's first event is produced again after the later ones under a new
    # eventId (a replay: no duplicate by eventId), its sequence 1 comes where 4 was due
    row = OutboxEvent.select().where((OutboxEvent.message_key == code) & (OutboxEvent.sequence == 1)).get()
    p = producer()
    p.produce(relay.settings.topic_stream, key=code.encode(),
              value=json.dumps(dict(row.envelope, eventId=flow.eid())).encode(),
              headers=[("eventType", row.event_type.encode()), ("channel", row.channel.encode()),
                       ("outboxId", str(row.id).encode())])
    assert p.flush(10) == 0
    lines = [str(v) for v in verify(db.connection(), Scope.of(codes=[code]), stream=True)]
    assert rules(lines) == {"stream.order", "stream.unknown"}, lines
    assert any(l.startswith(f"stream.order {code}: sequence 1 at ")
               and " where 4 was due (stream order 1, 2, 3, 1)" in l for l in lines), lines
