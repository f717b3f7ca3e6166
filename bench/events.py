"""The highest sustained rate of paid orders with the input → stream p99 under 200 ms.

Starts its own embedded PostgreSQL, Redis and Kafka and the Procfile's worker, pump and relay
(as ``bench/latency.py``, whose measurements it reuses; on Apache Kafka where Java 17+ is present,
and on Tansu, each beside its own floor), measures the floor (two Kafka hops and
one transaction) at 100 messages/s, then steps the rate of paid orders up: each order is reserved
first (untimed), then its ORDER_CREATED and its full PAYMENT_CAPTURED are played (two messages
per order), and the latency runs from the payment to its ``issue`` event on the stream. Each step
lasts ``BENCH_STEP_SECONDS`` (8; 3 with ``BENCH_QUICK=1``); the steps stop after the first one
whose p99 is over 200 ms or that lost an order. The CPU each process tree spent per order is
reported per step.
Run: ``make bench`` or ``python -m bench.events``.
"""
from __future__ import annotations

import os
import time

from bench import latency
from bench._proc import tree_cpu

QUICK = os.environ.get("BENCH_QUICK") == "1"
STEP_SECONDS = float(os.environ.get("BENCH_STEP_SECONDS", "3" if QUICK else "8"))
STEPS = tuple(int(x) for x in os.environ.get("BENCH_ORDER_RATES", "10,25,50,75,100,150,200,300").split(","))
GOAL_P99_MS = 200.0


def main() -> dict:
    return latency.on_each_broker(run)


def run(broker: str) -> dict:
    try:
        with latency.own_pipeline("gcp-bench-events-", broker) as (stack, procs):
            return dict(_steps(stack, procs), broker=broker)
    finally:
        latency.RATE = int(os.environ.get("BENCH_RATE", "100"))


def _steps(stack, procs) -> dict:
    """Step the paid-order rate up until p99 passes the goal."""
    latency.RATE = 100
    floor = latency.percentiles(latency.measure_floor(300 if QUICK else 600))
    roots = {name: p.pid for name, p in procs.items()}
    roots.update(stack.pids())
    roots["postgres"] = int((stack.pgdata / "postmaster.pid").read_text().split()[0])
    roots["bench"] = os.getpid()
    print(f"  floor at 100 msg/s: p50 {floor['p50']:.1f} p99 {floor['p99']:.1f} ms")
    steps = []
    for orders in STEPS:
        latency.RATE = 2 * orders  # an order and its payment
        n = int(2 * orders * STEP_SECONDS)
        marks = []
        samples, lost = latency.measure_service(n, 1.0, probe=lambda: marks.append(tree_cpu(roots)))
        r = latency.percentiles(samples) if samples else {"n": 0, "p50": 0, "p90": 0, "p99": float("inf"), "max": 0}
        done = len(samples) or 1
        cpu = {k: (marks[1][k] - marks[0][k]) * 1000 / done for k in marks[1]} if len(marks) == 2 else {}
        r.update(orders_per_s=orders, messages_per_s=2 * orders, lost=lost, cpu_ms_per_order=cpu,
                 ok=r["p99"] < GOAL_P99_MS and lost == 0)
        steps.append(r)
        print(f"  {orders:4d} orders/s: p50 {r['p50']:7.1f} p99 {r['p99']:7.1f} ms, lost {lost}, "
              f"CPU/order {sum(v for k, v in cpu.items() if k != 'bench'):.1f} ms"
              f" {'ok' if r['ok'] else 'OVER'}")
        if not r["ok"]:
            break
        time.sleep(1)
    best = max((s["orders_per_s"] for s in steps if s["ok"]), default=0)
    print(f"  highest sustained rate with p99 < {GOAL_P99_MS:.0f} ms: {best} paid orders/s")
    return {"floor": floor, "steps": steps, "best_orders_per_s": best, "step_seconds": STEP_SECONDS}


if __name__ == "__main__":
    main()
