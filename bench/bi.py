"""Benchmark: the BI mart applies a year of stream events, then builds the report; each beside a
floor measured in the same run.

    python -m bench.bi [--certs 100000] [--days 365]

Starts its own embedded PostgreSQL and Kafka broker (``KAFKA_EMBEDDED``), produces a year of
schema-valid ``GiftCertificates.Stream`` records for ``--certs`` certificates straight to the
stream topic (``bench/_bi_synth.py`` with the channels' full traffic: reservations with their
pool level, sales, CVC notifications, holds and captures, refunds, adjustments, expiries,
cancellations; 6 to 7 records per certificate), then times:

- **apply**: the ``bi`` consumer (``workers.bi.consumer.BiConsumer``, in this process) from
  offset 0 until it has applied every record; beside it the floor: the same records loaded with
  one ``COPY`` into a table of the same columns (no rules, no indexes but the key);
- **report**: ``write_report`` over the whole year (roll-forward, aging, charts, page, CSVs);
  beside it the floor: one plain ``GROUP BY`` query of the same figures from the mart's facts;
- **lag**: then, on that year's mart, live records produced at ``--lag-rate`` records/s (200 by
  default: the events benchmark's sustained 50 paid orders/s, each a reserve, an issue and its
  notification requested and sent) for ``--lag-seconds``, each stamped with the moment it is
  produced, while the consumer applies them: the mart's lag is the time from that stamp to the
  transaction that applied it (``received_at``), p50 / p99 / max.

Printed as seconds, records per second and the ratio to the floor. ``BENCH_QUICK=1``: 5,000
certificates.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUICK = os.environ.get("BENCH_QUICK") == "1"
#: Certificates generated per chunk (bounded memory: a chunk's records are produced, then dropped).
CHUNK = 5000


def _produce(days: int, certs: int, end: dt.date) -> int:
    from confluent_kafka import Producer

    from bench._bi_synth import stream
    from config import get_settings
    from workers.kafka import producer_config

    producer = Producer({**producer_config(), "linger.ms": 20, "batch.size": 1 << 20})
    topic, sent = get_settings().topic_stream, 0
    for seed in range(max(1, certs // CHUNK)):
        share = min(CHUNK, certs) / days
        for e in stream(days, share, end, seed=seed + 1, rich=True):
            while True:
                try:
                    producer.produce(topic, key=e["payload"].get("code", "").encode(), value=json.dumps(e).encode())
                    break
                except BufferError:
                    producer.poll(0.1)
            sent += 1
        producer.flush(120)
    return sent


def _apply(total: int) -> tuple[float, int]:
    from workers.bi.consumer import BiConsumer

    consumer = BiConsumer(group="gcp-bi-bench")
    got, started = 0, time.monotonic()
    idle = 0
    while got < total and idle < 60:
        step = consumer.step(1.0)
        got += step.received
        idle = 0 if step.received else idle + 1
    seconds = time.monotonic() - started
    consumer.close()
    return seconds, got


def _lag(rate: int, seconds: float) -> dict:
    """Live records at ``rate`` per second while the consumer applies them (see the docstring)."""
    import threading

    from confluent_kafka import Producer

    from bench._bi_synth import stream
    from config import get_settings
    from workers.bi.consumer import BiConsumer
    from workers.bi.schema import connect
    from workers.kafka import producer_config

    today = dt.datetime.now(dt.timezone.utc).date()
    records = stream(1, rate * seconds / 6, today, seed=10_001, rich=True)[: int(rate * seconds)]
    consumer, stop, joined = BiConsumer(group="gcp-bi-bench"), threading.Event(), threading.Event()

    def apply_until_stopped() -> None:  # (the consumer is used by this thread only)
        while not stop.is_set():
            consumer.step(0.05)
            if not joined.is_set() and consumer.consumer.assignment():
                joined.set()

    applying = threading.Thread(target=apply_until_stopped)
    applying.start()
    joined.wait(60)  # the group's join is not the mart's lag: measured once it holds its partitions
    time.sleep(1.0)
    producer = Producer({**producer_config(), "linger.ms": 2})
    topic, started = get_settings().topic_stream, time.monotonic()
    for i, e in enumerate(records):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        e["occurredAt"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        producer.produce(topic, key=e["payload"].get("code", "").encode(), value=json.dumps(e).encode())
        producer.poll(0)
    producer.flush(30)
    ids = [e["eventId"] for e in records]
    conn = connect()
    deadline = time.monotonic() + 60
    with conn.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT extract(epoch FROM received_at - occurred_at) FROM bi.fact_event"
                        " WHERE event_id = ANY(%s)", (ids,))
            lags = sorted(float(r[0]) for r in cur.fetchall())
            conn.rollback()
            if len(lags) == len(ids):
                break
            time.sleep(0.5)
    conn.close()
    stop.set()
    applying.join(30)
    consumer.close()
    pick = (lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 1)) if lags else (lambda q: None)
    return {"lag_rate": rate, "lag_records": len(ids), "lag_applied": len(lags),
            "lag_p50_ms": pick(0.5), "lag_p99_ms": pick(0.99), "lag_max_ms": pick(1.0)}


def _copy_floor(conn) -> float:
    """The same records, COPYed once into a table of the fact's shape."""
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE bench_fact (LIKE bi.fact_event INCLUDING DEFAULTS)")
        cur.execute("ALTER TABLE bench_fact ADD PRIMARY KEY (event_id)")
        with tempfile.TemporaryFile("w+b") as buf:  # on disk: two million rows do not fit in memory
            cur.copy_expert("COPY bi.fact_event TO STDOUT", buf)
            conn.commit()
            buf.seek(0)
            started = time.monotonic()
            cur.copy_expert("COPY bench_fact FROM STDIN", buf)
            conn.commit()
            return time.monotonic() - started


_PLAIN = """
SELECT booked_date, currency, coalesce(cert_channel, channel), flow, sum(liability_delta)
FROM bi.fact_event WHERE flow IS NOT NULL AND applied GROUP BY 1, 2, 3, 4;
SELECT currency, channel, status, count(*), sum(balance) FROM bi.certificate GROUP BY 1, 2, 3;
SELECT day, channel, currency, sum(sold_amount), sum(redeemed_amount) FROM bi.daily_snapshot GROUP BY 1, 2, 3;
"""


def _query_floor(conn) -> float:
    started = time.monotonic()
    with conn.cursor() as cur:
        for sql in filter(str.strip, _PLAIN.split(";")):
            cur.execute(sql)
            cur.fetchall()
    conn.rollback()
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="bench.bi")
    parser.add_argument("--certs", type=int, default=5000 if QUICK else 100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--lag-rate", type=int, default=200)
    parser.add_argument("--lag-seconds", type=float, default=5 if QUICK else 20)
    args = parser.parse_args(argv if argv is not None else [])
    from devstack import EmbeddedStack

    tmp = Path(tempfile.mkdtemp(prefix="gcp-bench-bi-"))
    saved = dict(os.environ)
    stack = None
    try:
        for var in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "BI_DATABASE_URL"):
            os.environ.pop(var, None)
        stack = EmbeddedStack(tmp / "stack", database="gcp")
        stack.start_postgres()
        stack.start_kafka()
        os.environ.update(DATABASE_URL=stack.database_url, KAFKA_BOOTSTRAP_SERVERS=stack.kafka_bootstrap,
                          KAFKA_PROFILE=stack.kafka, LOG_LEVEL="WARNING", GCP_ENV="development")
        from config import reset_settings
        from workers.kafka import ensure_topics

        reset_settings()
        ensure_topics()
        end = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
        started = time.monotonic()
        records = _produce(args.days, args.certs, end)
        produce_s = time.monotonic() - started
        apply_s, applied = _apply(records)
        from workers.bi.report import write_report
        from workers.bi.schema import connect

        conn = connect()
        copy_s = _copy_floor(conn)
        started = time.monotonic()
        write_report(end - dt.timedelta(days=args.days - 1), end, tmp / "report", conn=conn)
        report_s = time.monotonic() - started
        query_s = _query_floor(conn)
        conn.close()
        lag = _lag(args.lag_rate, args.lag_seconds)
        return {**lag, "certificates": args.certs, "days": args.days, "records": records, "applied": applied,
                "produce_s": round(produce_s, 2), "apply_s": round(apply_s, 2),
                "apply_per_s": round(applied / apply_s) if apply_s else None,
                "copy_floor_s": round(copy_s, 2), "apply_vs_copy": round(apply_s / copy_s, 1) if copy_s else None,
                "report_s": round(report_s, 2), "query_floor_s": round(query_s, 3),
                "report_vs_query": round(report_s / query_s, 1) if query_s else None}
    finally:
        if stack is not None:
            try:
                stack.stop()
            except Exception as exc:  # the figures are what matters here
                print(f"stopping the stack: {exc}", file=sys.stderr)
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)


def print_summary(r: dict) -> None:
    print(f"BI mart: {r['records']:,} stream records for {r['certificates']:,} certificates over {r['days']} days")
    print(f"  apply:  {r['apply_s']} s ({r['apply_per_s']:,} records/s); floor COPY of the same rows "
          f"{r['copy_floor_s']} s; ratio {r['apply_vs_copy']}x")
    print(f"  report: {r['report_s']} s; floor plain query of the same figures {r['query_floor_s']} s; "
          f"ratio {r['report_vs_query']}x")
    print(f"  lag:    {r['lag_applied']:,} of {r['lag_records']:,} live records at {r['lag_rate']}/s applied; "
          f"lag p50 {r['lag_p50_ms']} ms, p99 {r['lag_p99_ms']} ms, max {r['lag_max_ms']} ms "
          "(BI's freshness objective: 30 minutes)")


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print_summary(result)
    print(json.dumps(result))
