"""Input → stream latency at 100 messages/s, against a floor measured in the same run.

Starts its own embedded PostgreSQL, Redis and Kafka (a temp dir), the Procfile's worker, pump
and relay as subprocesses, and then, on each broker (Apache Kafka where Java 17+ is present, and
Tansu; ``BENCH_BROKERS=apache`` for one), each beside its own floor:

1. **floor**: a minimal echo in this process: consume from a topic, one PostgreSQL transaction
   (insert + commit), produce to another topic. Latency from producing the input to reading the
   output: two Kafka hops and one transaction, nothing of ours.
2. **service**: a burst of sales at 100 messages/s, each an ORDER_CREATED for a reserved
   certificate followed by its full payment. Latency from producing the payment to reading its
   ``issue`` event on GiftCertificates.Stream: pump → inbox commit → Dramatiq (Redis) → worker →
   correlation and issue transaction (+ NOTIFY) → relay → Kafka.

   Run twice: a mixed stream (``BENCH_CERT_SHARE``, default 25 %, of the sales are certificate
   sales; the others are ordinary orders and card payments the service records and correlates
   but that change no certificate), then the worst case where every message is a certificate
   sale (each costs an issue transaction with two stream events).

Prints p50/p90/p99/max for each, its ratio to the floor, the CPU each process spent per
certificate sale, and where the time goes (inbox wait, outbox wait). Contract: < 200 ms; goal
p99 < 50 ms.
Run: ``make bench`` or ``python -m bench.latency [messages]``.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

from bench._pipeline import PROCS, brokers, cpu_seconds, on_each_broker, own_pipeline  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
RATE = int(os.environ.get("BENCH_RATE", "100"))  # messages per second
IDLE_SECONDS = 10.0  # the idle measurement after the bursts


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def p(q):
        return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] * 1000

    return {"n": len(s), "p50": p(0.50), "p90": p(0.90), "p99": p(0.99), "max": s[-1] * 1000}


def paced(items, rate: int):
    """Yield items at ``rate`` per second (absolute schedule: no drift)."""
    start = time.perf_counter()
    for i, item in enumerate(items):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield item


def measure_floor(n: int) -> list[float]:
    """Two Kafka hops and one PostgreSQL transaction, in the simplest possible echo."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import NewTopic

    from models.store.db import db
    from workers.kafka import admin as kafka_admin
    from workers.kafka import consumer_config, producer_config

    admin = kafka_admin()
    tin, tout = "bench.floor.in", "bench.floor.out"
    for fut in admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=1) for t in (tin, tout)]).values():
        fut.result(15)
    with db.connection_context():
        db.execute_sql("CREATE TABLE IF NOT EXISTS bench_floor (id text PRIMARY KEY, at timestamptz)")
    stop = threading.Event()

    def echo():
        consumer = Consumer(consumer_config("bench-floor-echo"))
        consumer.subscribe([tin])
        producer = Producer(producer_config())
        with db.connection_context():
            while not stop.is_set():
                msg = consumer.poll(0.1)
                if msg is None or msg.error():
                    continue
                with db.atomic():
                    db.execute_sql("INSERT INTO bench_floor VALUES (%s, now())", (msg.value().decode(),))
                consumer.commit(msg, asynchronous=True)
                producer.produce(tout, key=msg.key(), value=msg.value())
                producer.poll(0)
        consumer.close()
        producer.flush(5)

    reader = Consumer(consumer_config("bench-floor-reader-" + uuid.uuid4().hex[:6]))
    reader.subscribe([tout])
    worker = threading.Thread(target=echo, daemon=True)
    worker.start()
    producer = Producer(producer_config())
    sent, got = {}, {}

    def read_until(ids, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline and not ids <= got.keys():
            msg = reader.poll(0.05)
            if msg is not None and not msg.error():
                got.setdefault(msg.value().decode(), time.time())

    # warm up (group joins, connections)
    warm = {f"warm-{i}" for i in range(5)}
    for w in warm:
        producer.produce(tin, key=w, value=w)
    producer.flush(10)
    read_until(warm, 30)
    ids = [uuid.uuid4().hex for _ in range(n)]
    reading = threading.Thread(target=read_until, args=(set(ids), 30 + n / RATE))
    reading.start()
    for i in paced(ids, RATE):
        sent[i] = time.time()
        producer.produce(tin, key=i, value=i)
        producer.poll(0)
    producer.flush(10)
    reading.join()
    stop.set()
    worker.join(10)
    reader.close()
    return [got[i] - sent[i] for i in ids if i in got]


def measure_service(n: int, cert_share: float = 1.0, probe=None) -> tuple[list[float], int]:
    """A realistic burst: each sale is an ORDER_CREATED and, 10 ms later, its full payment
    (100 messages/s = 50 sales/s). Latency from producing the payment (the message that
    completes the order) to reading its ``issue`` event on the stream.

    ``probe`` (if given) is called right before the paced burst and right after its last
    ``issue`` was read, so CPU is counted for the burst only (not the set-up's reservations)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from config import get_settings
    from models.domain import commands
    from models.service import messagebus
    from models.store.db import db
    from workers.kafka import consumer_config, producer_config, watermarks

    s = get_settings()
    sales = int(n * cert_share) // 2 + 5
    codes = [("B" + uuid.uuid4().hex[:14]).upper() for _ in range(sales)]
    with db.connection_context():
        messagebus.handle(commands.LoadBatch("bench-" + uuid.uuid4().hex[:6], "ELECTRONIC", "RUB",
                                 tuple({"code": c, "nominal": Decimal("1000.00")} for c in codes)),
                   commands.Context(actor="bench"))
        orders = []
        for code in codes:
            order_id = "bench-" + uuid.uuid4().hex[:10]
            messagebus.handle(commands.Reserve("ONLINE_STORE", order_id, "1", Decimal("1000.00"), "RUB", code=code))
            orders.append((order_id, code))
    producer = Producer(producer_config())
    now = "2026-11-22T10:00:00Z"

    def order(order_id, code):
        return {"eventId": str(uuid.uuid4()), "eventType": "ORDER_CREATED", "occurredAt": now, "orderId": order_id,
                "channel": "ONLINE_STORE", "currency": "RUB", "total": "1000.00",
                "lines": [{"lineId": "1", "type": "GIFT_CERTIFICATE", "certificateCode": code, "amount": "1000.00"}]}

    def payment(order_id):
        return {"eventId": str(uuid.uuid4()), "eventType": "PAYMENT_CAPTURED", "occurredAt": now,
                "paymentId": "p-" + order_id, "orderId": order_id, "channel": "ONLINE_STORE",
                "amount": "1000.00", "currency": "RUB", "method": "CARD"}

    reader = Consumer(consumer_config("bench-reader-" + uuid.uuid4().hex[:6]))
    meta = reader.list_topics(s.topic_stream, timeout=10).topics[s.topic_stream]
    ends = []
    for p in meta.partitions:
        _low, high = watermarks(reader, TopicPartition(s.topic_stream, p), 10)
        ends.append(TopicPartition(s.topic_stream, p, high))
    reader.assign(ends)
    sent, got = {}, {}
    wanted = {code for _o, code in orders}

    def read(timeout):
        deadline = time.time() + timeout
        while time.time() < deadline and len(got) < len(wanted):
            msg = reader.poll(0.05)
            if msg is None or msg.error():
                continue
            if dict(msg.headers() or ()).get("eventType") == b"issue":
                got.setdefault(msg.key().decode(), time.time())

    reading = threading.Thread(target=read, args=(60 + n / RATE,))
    reading.start()
    warm, timed = orders[:5], orders[5:]
    for order_id, code in warm:  # warm-up: connections, the consumer group, the first queries
        producer.produce(s.topic_sales_order, key=order_id, value=json.dumps(order(order_id, code)))
        producer.produce(s.topic_payments, key=order_id, value=json.dumps(payment(order_id)))
    producer.flush(10)
    deadline = time.time() + 60
    while time.time() < deadline and not all(c in got for _o, c in warm):
        time.sleep(0.05)
    # every certificate sale comes with (1 - share) / share ordinary sales (a mug, by card)
    others = round((1 - cert_share) / cert_share) if cert_share < 1 else 0
    steps = []
    for o, c in timed:
        steps += [("order", o, c), ("payment", o, c)]
        for _ in range(others):
            plain = "plain-" + uuid.uuid4().hex[:10]
            steps += [("plain-order", plain, None), ("plain-payment", plain, None)]
    steps = steps[:max(n, 2)]
    if probe is not None:
        probe()
    for kind, order_id, code in paced(steps, RATE):
        if kind == "order":
            producer.produce(s.topic_sales_order, key=order_id, value=json.dumps(order(order_id, code)))
        elif kind == "payment":
            sent[code] = time.time()
            producer.produce(s.topic_payments, key=order_id, value=json.dumps(payment(order_id)))
        elif kind == "plain-order":
            msg = order(order_id, None)
            msg["lines"] = [{"lineId": "1", "type": "PRODUCT", "sku": "mug-01", "amount": "1000.00"}]
            producer.produce(s.topic_sales_order, key=order_id, value=json.dumps(msg))
        else:
            producer.produce(s.topic_payments, key=order_id, value=json.dumps(payment(order_id)))
        producer.poll(0)
    wanted.intersection_update(set(sent) | {c for _o, c in warm})
    producer.flush(10)
    reading.join()
    if probe is not None:
        probe()
    reader.close()
    lost = sum(1 for c in sent if c not in got)
    with db.connection_context():  # where the time goes, from the rows' own timestamps
        inbox = db.execute_sql(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at))"
            " FROM inbox_message WHERE topic = %s AND processed_at IS NOT NULL", (s.topic_payments,)).fetchone()[0]
        outbox = db.execute_sql(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM published_at - created_at))"
            " FROM outbox_event WHERE event_type = 'issue' AND published_at IS NOT NULL").fetchone()[0]
    STAGES.update({"inbox -> handled (p50, p99)": inbox, "outbox -> published (p50, p99)": outbox})
    return [got[c] - sent[c] for c in sent if c in got], lost


#: Stage timings of the last service run (seconds), printed by main().
STAGES: dict = {}


def main(n: int | None = None) -> dict:
    n = n or int(os.environ.get("BENCH_MESSAGES", "300" if os.environ.get("BENCH_QUICK") == "1" else "1000"))
    return on_each_broker(lambda broker: run(n, broker))


def run(n: int, broker: str) -> dict:
    with own_pipeline("gcp-bench-", broker) as (stack, procs):
        floor = percentiles(measure_floor(n))
        servers = dict(stack.pids(), bench=os.getpid())  # the load generator and reader too
        pg_pid = (stack.pgdata / "postmaster.pid")
        if pg_pid.exists():
            servers["postgres"] = int(pg_pid.read_text().split()[0])
        share = float(os.environ.get("BENCH_CERT_SHARE", "0.25"))
        mixed_samples, mixed_lost = measure_service(n, share)
        mixed = percentiles(mixed_samples)
        time.sleep(2)
        marks = []  # (when, CPU so far) at the burst's start and end
        service_samples, lost = measure_service(n, probe=lambda: marks.append((time.monotonic(),
                                                                                cpu_seconds(procs, servers))))
        (started, cpu_before), (ended, cpu_after) = marks
        service = percentiles(service_samples)
        burst_s = ended - started
        # the same processes with no traffic: what each spends just waiting (the consumers'
        # fetches, the idle polls), part of the CPU per sale at this rate
        time.sleep(2)
        idle_at, idle_before = time.monotonic(), cpu_seconds(procs, servers)
        time.sleep(IDLE_SECONDS)
        idle_after, idle_s = cpu_seconds(procs, servers), time.monotonic() - idle_at
        idle = {name: (idle_after[name] - idle_before[name]) * 1000 / idle_s for name in idle_after}
        lost += mixed_lost
        print(f"input -> stream latency at {RATE} messages/s, {n} messages (times in ms)")
        print(f"  {'':36} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
        rows = (("floor: 2 Kafka hops + 1 transaction", floor),
                (f"mixed: {share:.0%} certificate sales", mixed),
                ("all certificate sales", service))
        for name, r in rows:
            print(f"  {name:36} {r['p50']:7.1f} {r['p90']:7.1f} {r['p99']:7.1f} {r['max']:7.1f}"
                  f"   p99 x{r['p99'] / floor['p99']:.1f} floor")
        for name, r in rows[1:]:
            print(f"  {name}: contract p99 < 200 ms {'met' if r['p99'] < 200 else 'NOT met'},"
                  f" goal p99 < 50 ms {'met' if r['p99'] < 50 else 'not met'}")
        print(f"  lost: {lost}")
        sales = len(service_samples) or 1
        print("  CPU per sale (order + payment), ms: " + ", ".join(
            f"{name} {(cpu_after[name] - cpu_before[name]) * 1000 / sales:.1f}" for name in cpu_after)
            + f"; machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for stage, (p50, p99) in STAGES.items():
            print(f"  stage {stage:32} {p50 * 1000:7.1f} {p99 * 1000:7.1f}")
        cpu = {name: (cpu_after[name] - cpu_before[name]) * 1000 / sales for name in cpu_after}
        sales_per_s = sales / burst_s
        idle_per_sale = {name: ms_per_s / sales_per_s for name, ms_per_s in idle.items()}
        print(f"  idle CPU ({IDLE_SECONDS:.0f} s, no traffic), ms per second: "
              + ", ".join(f"{name} {v:.1f}" for name, v in idle.items())
              + f"; at {sales_per_s:.0f} sales/s that is, per sale: "
              + ", ".join(f"{name} {v:.2f}" for name, v in idle_per_sale.items()))
        return {"broker": broker, "floor": floor, "mixed": mixed, "service": service, "lost": lost, "rate": RATE,
                "messages": n,
                "cert_share": share, "cpu_ms_per_sale": cpu, "sales_per_s": sales_per_s,
                "idle_seconds": IDLE_SECONDS, "idle_cpu_ms_per_s": idle, "idle_cpu_ms_per_sale": idle_per_sale,
                "stages_ms": {k: [v[0] * 1000, v[1] * 1000] for k, v in STAGES.items()}}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
