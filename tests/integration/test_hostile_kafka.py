"""Hostile Kafka input through the real pump (real Kafka and PostgreSQL). Messages are the
contract's valid examples, mutated by hypothesis: wrong types, missing and extra fields, huge
strings and arrays, deep nesting, invalid UTF-8, a non-JSON value, a null key, an 8 MB value,
duplicates and reordering. The oracle is the contract's schema itself: every message it refuses
lands in the DLQ with its headers (found by its source offset), every one it accepts lands in the
inbox exactly once (a duplicate eventId once in all); the pump never crashes nor stalls, and its
memory stays bounded."""
from __future__ import annotations

import copy
import json
import resource
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from config import get_settings
from models.store.db import db
from workers import contracts
from tests.helpers import allow_large_messages
from workers.kafka import producer_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "All_SalesOrder": ["01-order-sells-certificate.json", "03-order-paid-with-certificate.json",
                       "06-purchase-refund-order.json", "10-order-cancelled.json"],
    "All_Payments": ["02-payment-pays-order.json", "04-redemption-payment.json", "07-purchase-refund-paid.json"],
    "All_Clients": ["11-crm-notification-result.json"],
}


def example(name: str) -> dict:
    data = json.loads((ROOT / "contracts" / "examples" / name).read_text())
    return data["value"]


def fresh(message: dict) -> dict:
    """The example as a new message: its own eventId (and orderId, so no real order is touched)."""
    out = copy.deepcopy(message)
    out["eventId"] = str(uuid.uuid4())
    if "orderId" in out:
        out["orderId"] = "hostile-" + uuid.uuid4().hex[:12]
    return out


def deep(depth: int) -> object:
    node: object = 1
    for _ in range(depth):
        node = [node]
    return node


JUNK = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                 st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


@st.composite
def hostile(draw) -> tuple[str, bytes | None, bytes | None]:
    """(source contract, key, value) of one message: valid, or broken in one of many ways."""
    contract = draw(st.sampled_from(sorted(EXAMPLES)))
    message = fresh(example(draw(st.sampled_from(EXAMPLES[contract]))))
    key = (message.get("orderId") or message.get("clientId") or "k").encode()
    kind = draw(st.sampled_from(["valid", "drop", "retype", "extra", "huge_string", "huge_array", "deep",
                                 "bad_utf8", "not_json", "null_key", "large_value", "scalar"]))
    fields = sorted(message)
    if kind == "drop":
        message.pop(draw(st.sampled_from(fields)))
    elif kind == "retype":
        message[draw(st.sampled_from(fields))] = draw(JUNK)
    elif kind == "extra":
        message[draw(st.text(min_size=1, max_size=10))] = draw(JUNK)
    elif kind == "huge_string":
        message[draw(st.sampled_from(fields))] = "x" * draw(st.integers(10_000, 60_000))
    elif kind == "huge_array":
        message[draw(st.sampled_from(fields))] = list(range(draw(st.integers(1_000, 10_000))))
    elif kind == "deep":
        message[draw(st.sampled_from(fields))] = deep(draw(st.integers(500, 20_000)))
    elif kind == "scalar":
        return contract, key, json.dumps(draw(JUNK)).encode()
    elif kind == "bad_utf8":
        return contract, key, json.dumps(message).encode()[:-2] + b"\xff\xfe\"}"
    elif kind == "not_json":
        return contract, key, draw(st.binary(min_size=1, max_size=200)).replace(b"{", b"(")
    elif kind == "null_key":
        key = None
    elif kind == "large_value":
        # a large value the contract would take, and one over KAFKA_MAX_MESSAGE_BYTES (8 MB)
        message["filler"] = "y" * draw(st.sampled_from([100_000, 8 * 1024 * 1024]))
    try:
        value = json.dumps(message).encode()
    except (RecursionError, ValueError):  # too deep for json.dumps itself: a raw nesting
        value = b"[" * 20_000 + b"]" * 20_000
    return contract, key, value


def expected_valid(topic: str, value: bytes | None) -> str | None:
    """The eventId if the contract accepts the value, else None (the oracle: our schema)."""
    try:
        return contracts.parse(topic, value).event_id
    except contracts.InvalidMessage:
        return None


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def pump(stack):
    from workers.kafka import ensure_topics
    from workers.pump import Pump

    ensure_topics()
    allow_large_messages(*(topic_of(c) for c in ("All_SalesOrder", "All_Payments", "All_Clients")))
    p = Pump(dispatch=lambda ids: None)  # routing only: the actors have tests of their own
    yield p
    p.close()


def topic_of(contract: str) -> str:
    s = get_settings()
    return {"All_SalesOrder": s.topic_sales_order, "All_Payments": s.topic_payments, "All_Clients": s.topic_clients}[contract]


@settings(max_examples=3, deadline=None, derandomize=True, phases=[Phase.generate],  # (each run: real Kafka)
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(batch=st.lists(hostile(), min_size=20, max_size=40), repeat=st.integers(0, 5))
def test_hostile_input_goes_to_the_dlq_good_input_once_and_the_pump_never_stalls(pump, batch, repeat):
    # duplicates and reordering: some messages again, the whole batch shuffled by hypothesis' order
    batch = batch + batch[:repeat]
    producer = Producer(producer_config(**{"message.max.bytes": 10_000_000}))
    produced: list[tuple[str, int, int, str | None]] = []  # topic, partition, offset, valid eventId

    for contract, key, value in batch:
        def done(err, msg, value=value):
            assert err is None, err
            produced.append((msg.topic(), msg.partition(), msg.offset(), expected_valid(msg.topic(), value)))

        producer.produce(topic_of(contract), key=key, value=value, on_delivery=done)
    assert producer.flush(60) == 0 and len(produced) == len(batch)
    bad = {(t, p, o) for t, p, o, eid in produced if eid is None}
    good = {eid for *_, eid in produced if eid is not None}
    # when the pump takes it all in
    before = rss_mb()
    deadline = time.monotonic() + 90
    dead = received = 0
    while time.monotonic() < deadline:
        r = pump.step(0.2)
        dead, received = dead + r.dead_lettered, received + r.received
        with db.connection_context():
            have = {r[0] for r in db.execute_sql("SELECT event_id FROM inbox_message WHERE event_id = ANY(%s)",
                                                   (list(good),)).fetchall()}
        positions = {(tp.topic, tp.partition): tp.offset for tp in pump.consumer.position(pump.consumer.assignment())}
        if have == good and all(positions.get((t, p), -1) > o for t, p, o, _ in produced):
            break
    else:
        raise AssertionError("the pump stalled")
    pump.commit_offsets(force=True)
    # then each good message is in the inbox once
    with db.connection_context():
        counts = dict(db.execute_sql("SELECT event_id, count(*) FROM inbox_message WHERE event_id = ANY(%s)"
                                     " GROUP BY event_id", (list(good),)).fetchall())
    assert set(counts) == good and set(counts.values()) <= {1}
    # and each bad one is in the DLQ once, with the contract's headers
    dlq = dlq_by_source(bad)
    assert set(dlq) == bad, (len(dlq), len(bad), dead, received, sorted(bad - set(dlq))[:5])
    assert all(n == 1 for n in dlq.values())
    # and the pump's memory stayed bounded (a 1 MB value and 50k-element arrays go through it)
    assert rss_mb() - before < 300


def dlq_by_source(wanted: set[tuple[str, int, int]]) -> dict:
    """How often each wanted source message is in the DLQ (read with the operator's DLQ tool)."""
    from workers.dlq import read_entries

    found: dict = {}
    for entry in read_entries(timeout=30):
        h = entry.headers
        assert {"error", "sourceTopic", "sourcePartition", "sourceOffset"} <= set(h), h
        source = (h["sourceTopic"], int(h["sourcePartition"]), int(h["sourceOffset"]))
        if h["error"].startswith("TOO_LARGE"):  # its copy is cut, the whole size said
            assert int(h["valueBytes"]) > 1_048_576 and len(entry.value) == 65_536, h
        if source in wanted:
            found[source] = found.get(source, 0) + 1
    return found
