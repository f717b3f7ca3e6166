"""The benchmarks' own pipeline: embedded servers on a broker of choice, migrated, with the
Procfile's worker, pump and relay as subprocesses; their CPU; the brokers to run on."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROCS = ("worker", "pump", "relay")


def start_procs(env: dict, logdir: Path) -> dict[str, subprocess.Popen]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() in PROCS:
            commands[name.strip()] = command.strip()
    procs = {}
    for name, command in commands.items():
        log = open(logdir / f"{name}.log", "ab")
        procs[name] = subprocess.Popen(["bash", "-c", "exec " + command], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
    return procs


def cpu_seconds(procs: dict[str, subprocess.Popen], servers: dict[str, int] | None = None) -> dict[str, float]:
    """CPU time (user + system) used so far by each process and its children (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    pids_of = {name: proc.pid for name, proc in procs.items()}
    pids_of.update(servers or {})
    for name, pid0 in pids_of.items():
        pids, total = [pid0], 0.0
        children = Path(f"/proc/{pid0}/task/{pid0}/children")
        if name != "bench" and children.exists():  # the bench's children are the others
            pids += [int(x) for x in children.read_text().split()]
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        out[name] = total
    return out


def stop_procs(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def brokers() -> list[str]:
    """The brokers a benchmark runs on: ``BENCH_BROKERS`` (comma-separated), else Apache Kafka
    (where Java 17+ is present) and Tansu."""
    from devstack import java_missing

    wanted = os.environ.get("BENCH_BROKERS")
    if wanted:
        return [b.strip() for b in wanted.split(",") if b.strip()]
    if java_missing():
        print(f"  Apache Kafka skipped: {java_missing()}")
        return ["tansu"]
    return ["apache", "tansu"]


def on_each_broker(run) -> dict:
    """``run(broker)`` on every broker of :func:`brokers`; the first one's result, with every
    broker's under ``brokers``."""
    results = {}
    for broker in brokers():
        print(f"-- on {'Apache Kafka' if broker == 'apache' else 'Tansu'}")
        results[broker] = run(broker)
    first = dict(next(iter(results.values())))
    first["brokers"] = results
    return first


@contextlib.contextmanager
def own_pipeline(prefix: str, broker: str | None = None, **settings: str):
    """Embedded servers of the benchmark's own (a temp dir), migrated, with the Procfile's worker,
    pump and relay on them (``settings``: more environment for every process), on ``broker``
    (default: ``KAFKA_EMBEDDED``). Yields ``(stack, procs)``; everything is stopped and the
    environment restored afterwards."""
    from devstack import EmbeddedStack, embedded_broker

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    saved = dict(os.environ)
    stack, procs = None, {}
    try:
        for var in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
            os.environ.pop(var, None)
        stack = EmbeddedStack(tmp, database="gcp", kafka=broker or embedded_broker())
        os.environ.update(stack.start())
        os.environ.update(LOG_LEVEL="WARNING", POOL_LOW_WATER_MARK="0", GCP_ENV="development", **settings)
        from config import get_settings, reset_settings

        reset_settings()
        __import__("models.store.cache").store.cache.reset()  # a client of an earlier benchmark's Redis
        from models.store.db import init_db, migrate
        from workers.kafka import ensure_topics

        init_db(get_settings().database_url)
        migrate()
        ensure_topics()
        env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
                   PYTHONUNBUFFERED="1")
        procs.update(start_procs(env, tmp))
        time.sleep(2)
        yield stack, procs
    finally:
        stop_procs(procs)
        if stack is not None:
            try:
                stack.stop()
            except Exception:
                pass
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)
