#!/usr/bin/env python3
"""Measure the consumer settings that Tansu shaped, on Tansu and on Apache Kafka (issue 29).

Run:  .venv/bin/python kafka/measure_settings.py [--brokers tansu,apache] [--idle 10]

For each broker and each ``fetch.wait.max.ms`` (20, 100, 500):
  - idle cost: 4 consumers parked on an empty 6-partition topic for ``--idle`` seconds; the
    broker's CPU and this process's CPU (the consumers' librdkafka threads), in % of one core;
  - latency: produce -> poll of 100 messages sent every 20 ms to a consumer already waiting,
    p50 / p99 in ms.
Then, for each ``session.timeout.ms`` (6000, 10000, 45000): the time a group takes to give a
SIGKILLed member's partitions to the member that is left (the failover a crashed pump costs).

Prints one table per broker; exits non-zero only if a broker cannot start.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from devstack import EmbeddedStack, java_missing  # noqa: E402

FETCH_WAITS = (20, 100, 500)
SESSIONS = ((6000, 1500), (10000, 3000), (45000, 3000))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def topic(admin: AdminClient, name: str) -> str:
    for f in admin.create_topics([NewTopic(name, num_partitions=6, replication_factor=1)]).values():
        f.result(15)
    return name


def consumer(bs: str, group: str, **extra) -> Consumer:
    return Consumer({"bootstrap.servers": bs, "group.id": group, "auto.offset.reset": "latest",
                     "fetch.min.bytes": 1, "enable.auto.commit": False, **extra})


def assigned(consumers: list[Consumer], partitions: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(c.assignment()) for c in consumers) < partitions:
        if time.monotonic() > deadline:
            raise RuntimeError("no assignment within %ss" % timeout)
        for c in consumers:
            c.poll(0.05)


def idle_cost(bs: str, admin: AdminClient, broker_pid: int, fetch_wait: int, idle: float) -> tuple[float, float]:
    name = topic(admin, f"idle-{fetch_wait}-{uuid.uuid4().hex[:6]}")
    group = f"idle-{uuid.uuid4().hex[:6]}"
    members = [consumer(bs, group, **{"fetch.wait.max.ms": fetch_wait}) for _ in range(4)]
    for c in members:
        c.subscribe([name])
    assigned(members, 6)
    stop = threading.Event()

    def park(c: Consumer) -> None:
        while not stop.is_set():
            c.poll(0.2)

    threads = [threading.Thread(target=park, args=(c,), daemon=True) for c in members]
    for t in threads:
        t.start()
    time.sleep(2)
    b0, s0, t0 = cpu_seconds(broker_pid), time.process_time(), time.monotonic()
    time.sleep(idle)
    b1, s1, t1 = cpu_seconds(broker_pid), time.process_time(), time.monotonic()
    stop.set()
    for t in threads:
        t.join(5)
    for c in members:
        c.close()
    return 100 * (b1 - b0) / (t1 - t0), 100 * (s1 - s0) / (t1 - t0)


def latency(bs: str, admin: AdminClient, fetch_wait: int) -> tuple[float, float]:
    name = topic(admin, f"lat-{fetch_wait}-{uuid.uuid4().hex[:6]}")
    c = consumer(bs, f"lat-{uuid.uuid4().hex[:6]}", **{"fetch.wait.max.ms": fetch_wait,
                                                          "auto.offset.reset": "earliest"})
    c.subscribe([name])
    assigned([c], 6)
    p = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "acks": "all", "linger.ms": 0})
    p.produce(name, value=b"warm-up")
    p.flush(15)
    got: list[float] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set() and len(got) < 100:
            m = c.poll(0.05)
            if m is not None and m.error() is None and m.value() != b"warm-up":
                got.append((time.perf_counter_ns() - int(m.value())) / 1e6)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    time.sleep(1.5)
    for i in range(100):
        p.produce(name, key=str(i).encode(), value=str(time.perf_counter_ns()).encode())
        p.poll(0)
        time.sleep(0.02)
    p.flush(15)
    t.join(30)
    stop.set()
    c.close()
    got.sort()
    return statistics.median(got), got[int(len(got) * 0.99) - 1]


MEMBER = """
import sys, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2], "session.timeout.ms": int(sys.argv[4]),
              "heartbeat.interval.ms": int(sys.argv[5]), "auto.offset.reset": "latest"})
c.subscribe([sys.argv[3]])
while True:
    c.poll(0.1)
    if c.assignment():
        print("assigned", flush=True)
"""


def failover(bs: str, admin: AdminClient, session: int, heartbeat: int) -> float:
    """Seconds from a member's SIGKILL until the survivor holds all 6 partitions."""
    name = topic(admin, f"fo-{session}-{uuid.uuid4().hex[:6]}")
    group = f"fo-{uuid.uuid4().hex[:6]}"
    other = subprocess.Popen([sys.executable, "-c", MEMBER, bs, group, name, str(session), str(heartbeat)],
                             stdout=subprocess.PIPE, text=True)
    try:
        other.stdout.readline()  # the child holds partitions
        survivor = consumer(bs, group, **{"session.timeout.ms": session, "heartbeat.interval.ms": heartbeat})
        survivor.subscribe([name])
        deadline = time.monotonic() + 60
        while not survivor.assignment() and time.monotonic() < deadline:
            survivor.poll(0.1)
        other.send_signal(signal.SIGKILL)
        other.wait(5)
        killed = time.monotonic()
        while len(survivor.assignment()) < 6 and time.monotonic() < killed + session / 1000 + 30:
            survivor.poll(0.05)
        took = time.monotonic() - killed
        survivor.close()
        return took
    finally:
        if other.poll() is None:
            other.kill()


def measure(broker: str, idle: float) -> list[str]:
    with tempfile.TemporaryDirectory(prefix=f"gcp-measure-{broker}-") as tmp:
        stack = EmbeddedStack(Path(tmp), kafka=broker)
        bs = stack.start_kafka()
        try:
            pid = stack.pids()["kafka"]
            if broker == "apache":  # run.sh execs java, but be sure: the JVM is the child
                kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
                pid = int(kids[0]) if kids else pid
            admin = AdminClient({"bootstrap.servers": bs})
            rows = [f"## {broker}", "",
                    "| fetch.wait.max.ms | broker CPU idle, 4 consumers (% core) | consumers' CPU idle (% core) "
                    "| latency p50 / p99 (ms) |", "|---|---|---|---|"]
            for fw in FETCH_WAITS:
                b, s = idle_cost(bs, admin, pid, fw, idle)
                p50, p99 = latency(bs, admin, fw)
                rows.append(f"| {fw} | {b:.1f} | {s:.1f} | {p50:.1f} / {p99:.1f} |")
                print(rows[-1], flush=True)
            rows += ["", "| session.timeout.ms / heartbeat.interval.ms | failover after a member's SIGKILL (s) |",
                     "|---|---|"]
            for session, heartbeat in SESSIONS:
                rows.append(f"| {session} / {heartbeat} | {failover(bs, admin, session, heartbeat):.1f} |")
                print(rows[-1], flush=True)
            return rows
        finally:
            stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="tansu,apache")
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    out = []
    for broker in args.brokers.split(","):
        if broker == "apache" and java_missing():
            out += [f"## apache: skipped ({java_missing()})"]
            continue
        out += measure(broker, args.idle) + [""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
