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
  beside it the floor: one plain ``GROUP BY`` query of the same figures from the mart's facts.

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
        return {"certificates": args.certs, "days": args.days, "records": records, "applied": applied,
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


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print_summary(result)
    print(json.dumps(result))
