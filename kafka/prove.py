#!/usr/bin/env python3
"""Prove that Apache Kafka 4.x (Maven Central jars, KRaft combined mode) runs here.

Run:  /work/main/.venv/bin/python kafka/prove.py

Steps (all loopback, all bounded in time; exits non-zero on any failure):
  1. kafka/run.sh prepare  -- jars, server.properties, storage format (fresh data dir)
  2. kafka/run.sh start    -- time from the java start to the first successful metadata request
  3. RSS after start, CPU over 30 s of idling (from /proc/<pid>/stat)
  4. topic with 6 partitions, 100 keyed messages (idempotent producer, acks=all),
     consumed back by a consumer group which commits its offsets
  5. produce->consume latency p50/p99 of 100 messages with fetch.wait.max.ms 100 and 500
  6. SIGKILL the broker, restart it on the same log dir, check the topic, the group's
     committed offsets and the 100 messages survived
  7. stop the broker (SIGTERM, then SIGKILL if it hangs); the data dir is removed on success
"""
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import ctypes

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_SH = os.path.join(HERE, "run.sh")
KAFKA_HOME = os.environ.get("KAFKA_HOME", os.path.join(os.path.dirname(HERE), ".local", "kafka"))
DATA = os.path.join(KAFKA_HOME, "prove-data")
TOTAL_BUDGET_S = 420          # the whole proof, including a first jar download
IDLE_WINDOW_S = 30
N = 100
TOPIC, GROUP = "prove", "prove-group"

broker = None                 # the running broker's Popen (its pid is java's: run.sh execs)


class Failed(Exception):
    pass


def say(msg):
    print(msg, flush=True)


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def env():
    e = dict(os.environ, KAFKA_HOME=KAFKA_HOME, KAFKA_DATA=DATA)
    return e


def bootstrap():
    props = open(os.path.join(DATA, "server.properties")).read()
    line = next(l for l in props.splitlines() if l.startswith("listeners="))
    plain = next(x for x in line.split("=", 1)[1].split(",") if x.startswith("PLAINTEXT://"))
    return plain[len("PLAINTEXT://"):]


def _die_with_parent():
    # runs in the child before exec: SIGTERM it if this script dies (kept across run.sh's exec java)
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_broker(client_conf=None):
    """Start run.sh (which execs java) and wait for the first successful metadata request."""
    global broker
    conf = client_conf or {"bootstrap.servers": bootstrap()}
    # Fast reconnects so the poll does not add librdkafka's back-off to the measurement.
    admin = AdminClient({**conf, "reconnect.backoff.ms": 5, "log_level": 2,
                         "reconnect.backoff.max.ms": 20, "socket.connection.setup.timeout.ms": 1000})
    out = open(os.path.join(DATA, "run.out"), "ab")
    t0 = time.monotonic()
    broker = subprocess.Popen([RUN_SH, "start"], env=env(), stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True, preexec_fn=_die_with_parent)
    while True:
        check(broker.poll() is None, f"broker exited with {broker.returncode}")
        check(time.monotonic() - t0 < 90, "broker not answering metadata after 90 s")
        try:
            md = admin.list_topics(timeout=0.2)
            if md.brokers:
                ready = time.monotonic() - t0
                break
        except KafkaException:
            pass
    comm = open(f"/proc/{broker.pid}/comm").read().strip()
    check(comm == "java", f"pid {broker.pid} is {comm!r}, expected java")
    return admin, ready, md.cluster_id


def stop_broker(sig=signal.SIGTERM, wait=45):
    global broker
    if broker is None or broker.poll() is not None:
        broker = None
        return None
    t = time.monotonic()
    os.killpg(broker.pid, sig)
    try:
        broker.wait(wait)
    except subprocess.TimeoutExpired:
        os.killpg(broker.pid, signal.SIGKILL)
        broker.wait(10)
    rc, broker = broker.returncode, None
    return rc, time.monotonic() - t


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid):
    # /proc/<pid>/stat: fields after "(comm)"; utime, stime are fields 14, 15 (1-based)
    rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def consume(bs, topic, group, n, timeout, **extra):
    """Consume n messages from the start of topic with group; commit synchronously."""
    c = Consumer({"bootstrap.servers": bs, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, **extra})
    c.subscribe([topic])
    got, t_end = [], time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < t_end:
            m = c.poll(0.2)
            if m is None:
                continue
            check(m.error() is None, f"consume error: {m.error()}")
            got.append(m)
        if got:
            c.commit(asynchronous=False)
    finally:
        c.close()
    return got


def latency_run(admin, bs, fetch_wait_ms):
    """p50/p99 of produce()->poll() latency, one message every 20 ms, consumer already waiting."""
    topic = f"lat-{fetch_wait_ms}"
    # (keep the AdminClient referenced until the futures resolve: a temporary one is
    #  destroyed at once and its futures fail with _DESTROY)
    for f in admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)]).values():
        f.result(15)
    c = Consumer({"bootstrap.servers": bs, "group.id": f"lat-{fetch_wait_ms}",
                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": fetch_wait_ms,
                  "fetch.min.bytes": 1})
    c.subscribe([topic])
    lat, errors, stop = [], [], threading.Event()

    def loop():
        while not stop.is_set() and len(lat) < N:
            m = c.poll(0.05)
            now = time.perf_counter_ns()
            if m is None:
                continue
            if m.error():
                errors.append(str(m.error()))
                continue
            if m.value() != b"warm-up":
                lat.append((now - int(m.value())) / 1e6)

    # wait for the assignment, then let the fetcher settle into waiting fetches
    t_end = time.monotonic() + 30
    while len(c.assignment()) < 6:
        check(time.monotonic() < t_end, "latency consumer got no assignment in 30 s")
        c.poll(0.1)
    # warm the producer up (metadata, idempotent producer id) so the figure is the broker hop
    p = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "acks": "all", "linger.ms": 0})
    p.produce(topic, value=b"warm-up")
    check(p.flush(15) == 0, "warm-up message not delivered")
    th = threading.Thread(target=loop, daemon=True)
    th.start()
    time.sleep(1.5)   # the consumer is now parked in a waiting fetch
    for i in range(N):
        p.produce(topic, key=str(i).encode(), value=str(time.perf_counter_ns()).encode())
        p.poll(0)
        time.sleep(0.02)
    check(p.flush(15) == 0, "latency producer did not flush")
    th.join(20)
    stop.set()
    th.join(5)
    c.close()
    check(not errors, f"latency consumer errors: {errors[:3]}")
    check(len(lat) == N, f"latency run got {len(lat)}/{N} messages")
    return sorted(lat)


def group_offsets(bs):
    """The group's committed offsets, read with a Consumer handle (not subscribed).

    Not AdminClient.list_consumer_group_offsets: in librdkafka 2.16 an OffsetFetch error
    such as NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS (right after a broker restart)
    makes an admin handle call rd_kafka_cgrp_op() on a NULL group and SIGSEGV the whole
    process (librdkafka#5040, confluent-kafka-python#1982). A consumer handle retries.
    """
    c = Consumer({"bootstrap.servers": bs, "group.id": GROUP, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(TOPIC, i) for i in range(6)], timeout=15)
    finally:
        c.close()
    return {(tp.topic, tp.partition): tp.offset for tp in tps}


def main():
    def deadline_hit(*_):
        raise Failed(f"over the {TOTAL_BUDGET_S} s budget")
    signal.signal(signal.SIGALRM, deadline_hit)
    signal.alarm(TOTAL_BUDGET_S)
    fig = {}

    # 1. prepare a fresh data dir (jars are resolved once and kept in $KAFKA_HOME/lib)
    shutil.rmtree(DATA, ignore_errors=True)
    t = time.monotonic()
    subprocess.run([RUN_SH, "prepare"], env=env(), check=True, timeout=300)
    fig["prepare (jars if missing + config + format) s"] = time.monotonic() - t
    bs = bootstrap()
    say(f"data dir {DATA}, bootstrap {bs}")

    # 2. start
    admin, ready, cluster_id = start_broker()
    pid = broker.pid
    fig["java start -> first metadata OK, s"] = ready
    say(f"broker pid {pid} ready in {ready:.2f} s, cluster {cluster_id}")

    # 3. RSS and idle CPU (no client connected during the window)
    fig["RSS at ready, MiB"] = rss_mib(pid)
    del admin
    time.sleep(0.5)
    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(IDLE_WINDOW_S)
    c1, t1 = cpu_s(pid), time.monotonic()
    fig[f"idle CPU over {IDLE_WINDOW_S} s, % of one core"] = 100 * (c1 - c0) / (t1 - t0)
    fig["RSS after idle, MiB"] = rss_mib(pid)
    say("idle window done")

    # 4. topic, produce 100 keyed messages idempotently, consume them with a group
    admin = AdminClient({"bootstrap.servers": bs})
    for f in admin.create_topics([NewTopic(TOPIC, num_partitions=6, replication_factor=1)]).values():
        f.result(15)
    md = admin.list_topics(TOPIC, timeout=10).topics[TOPIC]
    check(md.error is None and len(md.partitions) == 6, f"topic metadata: {md.error} {md.partitions}")

    delivered, derr = [], []
    p = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "acks": "all"})
    dr = lambda err, msg: derr.append(err) if err else delivered.append((msg.key(), msg.partition()))
    for i in range(N):
        p.produce(TOPIC, key=f"k{i % 17}".encode(), value=f"v{i}".encode(), on_delivery=dr)
    check(p.flush(20) == 0, "producer did not flush")
    check(not derr and len(delivered) == N, f"delivery: {len(delivered)} ok, errors {derr[:3]}")
    used = {part for _, part in delivered}
    say(f"produced {N} (idempotent, acks=all) over partitions {sorted(used)}")

    got = consume(bs, TOPIC, GROUP, N, 30)
    check(len(got) == N, f"consumed {len(got)}/{N}")
    check(sorted(m.value() for m in got) == sorted(f"v{i}".encode() for i in range(N)), "values differ")
    placed = set(delivered)
    for m in got:   # each message read back from the partition its key was produced to
        check((m.key(), m.partition()) in placed, f"key {m.key()} on unexpected partition")
    before = group_offsets(bs)
    check(sum(before.values()) == N, f"committed offsets {before}")
    say(f"consumed {N} with group {GROUP}; committed {dict(sorted(before.items()))}")

    # 5. latency
    for fw in (100, 500):
        lat = latency_run(admin, bs, fw)
        p50, p99, mx = statistics.median(lat), lat[int(0.99 * N) - 1], lat[-1]
        fig[f"e2e latency fetch.wait.max.ms={fw}: p50/p99/max ms"] = f"{p50:.2f} / {p99:.2f} / {mx:.2f}"
        say(f"fetch.wait.max.ms={fw}: slowest 5 {[round(x, 1) for x in lat[-5:]]} ms")
        check(p99 < fw / 2, f"p99 {p99:.1f} ms not well under fetch.wait.max.ms={fw}: fetch not answered early")
    fig["RSS after workload, MiB"] = rss_mib(pid)

    # 6. SIGKILL, restart on the same log dir, check what survived
    del admin, p    # no client of ours keeps reconnecting meanwhile
    os.kill(pid, signal.SIGKILL)
    broker.wait(10)
    say(f"SIGKILLed broker pid {pid} (rc {broker.returncode})")
    admin, ready2, cluster2 = start_broker()
    fig["restart after SIGKILL -> first metadata OK, s"] = ready2
    check(cluster2 == cluster_id, f"cluster id changed {cluster_id} -> {cluster2}")
    md = admin.list_topics(TOPIC, timeout=10).topics[TOPIC]
    check(md.error is None and len(md.partitions) == 6, f"topic after restart: {md.error}")
    # the group coordinator loads __consumer_offsets asynchronously after a restart
    t_end, after = time.monotonic() + 30, None
    while time.monotonic() < t_end:
        try:
            after = group_offsets(bs)
            if after == before:
                break
        except KafkaException as e:
            after = e
        time.sleep(0.5)
    check(after == before, f"committed offsets before {before} after {after}")
    again = consume(bs, TOPIC, "prove-reread", N, 30)
    check(len(again) == N, f"re-read {len(again)}/{N} after restart")
    say(f"after restart: topic has 6 partitions, group offsets identical, {N} messages re-read")

    # 7. stop
    del admin
    rc, took = stop_broker()
    fig["clean stop (SIGTERM) s"] = took
    check(rc in (0, 143, -15), f"broker exit code on SIGTERM {rc}")
    say("\nFIGURES")
    for k, v in fig.items():
        say(f"  {k:52s} {v:.2f}" if isinstance(v, float) else f"  {k:52s} {v}")
    shutil.rmtree(DATA, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    except (Failed, KafkaException, subprocess.SubprocessError, OSError) as e:
        say(f"FAILED: {e!r}\n(data dir kept: {DATA}; broker log: {DATA}/logs/server.log)")
        log = os.path.join(DATA, "logs", "server.log")
        if os.path.exists(log):
            say("".join(open(log).readlines()[-20:]))
        rc = 1
    finally:
        signal.alarm(0)
        stop_broker()
    say("OK" if rc == 0 else "NOT OK")
    sys.exit(rc)
