"""``make chaos``: each scenario drives a burst of the channels' traffic at the Procfile's
processes while it breaks something, then checks that nothing was lost or doubled.

Every scenario gets servers of its own (PostgreSQL with durable commits, Redis, and Apache Kafka
wherever Java 17+ is present, else Tansu; ``KAFKA_EMBEDDED`` chooses) and the Procfile's
processes on them. Its faults are drawn from ``random.Random(f"{seed}-{name}")``: the
seed is printed, and ``--seed N --scenario NAME`` plays the same faults again (their moments
against the traffic depend on the machine's timing, so a failure is re-run, not replayed).

Scenarios:
- ``kill``: SIGKILL of web, worker, pump, relay or scheduler at random moments, each restarted.
- ``pairs``: two pumps, two workers and two relays at once; one of each killed mid-burst.
- ``postgres``: PostgreSQL stopped as by a crash (``-m immediate``) mid-burst, then started.
- ``redis``: Redis restarted mid-burst.
- ``kafka``: the broker frozen (SIGSTOP) for longer than the consumer session timeout; on Apache
  Kafka also killed (SIGKILL) and restarted on the same log directory, which Tansu's memory
  store could not survive.

The outbox's disk filling up is out of scope: PostgreSQL then refuses every write, which is the
``postgres`` scenario as the service sees it, and the disk is the platform's to watch.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = ("web", "worker", "pump", "relay", "scheduler")
SCENARIOS = ("kill", "pairs", "postgres", "redis", "kafka")
#: Session timeout of the consumers (workers/kafka.py): the broker is frozen for longer.
SESSION_TIMEOUT_S = 6.0


class Scenario:
    """One scenario's servers, processes, channel and fault counts."""

    def __init__(self, name: str, seed: int, short: bool, root: Path):
        self.name, self.seed, self.short, self.root = name, seed, short, root
        self.rng = random.Random(f"{seed}-{name}")
        self.window = 12.0 if short else 40.0  # seconds over which the stories start
        self.burst_started = time.monotonic()
        self.restarts = 0
        self.killed: list[str] = []
        self.log: list[str] = []
        self.started = time.monotonic()

    def say(self, what: str) -> None:
        line = f"  [{self.name} +{time.monotonic() - self.started:5.1f}s] {what}"
        self.log.append(line)
        print(line, flush=True)

    # ---- set-up
    def start(self) -> None:
        from config import reset_settings
        from devstack import EmbeddedStack, free_port, suite_broker
        from models.store.db import init_db
        from tests.e2e.conftest import E2E_ENV, Api, Procs

        os.environ.pop("GCP_PG_FAST", None)  # durable commits: a crash must not lose what was acknowledged
        self.stack = EmbeddedStack(self.root / "servers", database="gcp", kafka=suite_broker())
        urls = self.stack.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
        env.update(urls)
        env.update(E2E_ENV, PORT=str(free_port()), LOG_LEVEL="INFO", HEARTBEAT_INTERVAL_MS="1000",
                   JWT_SECRET="chaos-secret-for-the-gcp-suite-0123456789", JWT_AUDIENCE="gcp-chaos",
                   CVC_ENCRYPTION_KEY="chaos-cvc-key-for-the-gcp-suite-0123456789",
                   IDEMPOTENCY_KEY="chaos-idempotency-key-for-the-gcp-suite-0123456789",
                   CVC_CLIENT_BUDGET="100000/minute", RATE_LIMIT="100000/second", METRICS_PUBLIC="true",
                   PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
        os.environ.clear()
        os.environ.update(env)
        reset_settings()
        init_db(urls["DATABASE_URL"])
        subprocess.run([sys.executable, "app.py", "migrate"], cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=120)
        from workers.kafka import ensure_topics

        ensure_topics()
        logdir = self.root / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        self.procs = Procs(env, logdir)
        for name in PROCESSES + (("pump2", "worker2", "relay2") if self.name == "pairs" else ()):
            self.procs.start(name)
        self.procs.wait_web()
        self.api = Api(self.procs.url)

    def stop(self) -> None:
        procs = getattr(self, "procs", None)
        if procs is not None:
            procs.stop_all()
        stack = getattr(self, "stack", None)
        if stack is not None:
            stack.stop()

    # ---- the faults: each at a moment drawn within the burst's window
    def faults(self) -> None:
        getattr(self, "fault_" + self.name)()

    def at_moments(self, count: int):
        """Yield ``count`` times, at seeded moments spread over the burst's window."""
        for moment in sorted(self.rng.uniform(0.5, self.window) for _ in range(count)):
            delay = self.burst_started + moment - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield

    def fault_kill(self) -> None:
        for _ in self.at_moments(5 if self.short else 14):
            victim = self.rng.choice(PROCESSES)
            down = self.rng.uniform(0.0, 1.0)
            self.say(f"SIGKILL {victim}, restarted after {down:.1f} s")
            self.procs.kill(victim)
            time.sleep(down)
            self.procs.start(victim)
            self.restarts += 1

    def fault_pairs(self) -> None:
        for name in self.at_moments(3):
            victim = self.rng.choice(("pump", "worker", "relay"))
            while victim in {k.rstrip("2") for k in self.killed}:
                victim = self.rng.choice(("pump", "worker", "relay"))
            victim += self.rng.choice(("", "2"))
            self.say(f"SIGKILL {victim} (its twin goes on alone)")
            self.procs.kill(victim)
            self.killed.append(victim)
            self.restarts += 1

    def fault_postgres(self) -> None:
        for _ in self.at_moments(1 if self.short else 2):
            down = self.rng.uniform(1.0, 3.0)
            self.say(f"PostgreSQL stopped as by a crash, down {down:.1f} s")
            self.stack.restart_postgres(down_for=down)
            self.restarts += 1

    def fault_redis(self) -> None:
        for _ in self.at_moments(1 if self.short else 2):
            down = self.rng.uniform(1.0, 3.0)
            self.say(f"Redis restarted, down {down:.1f} s")
            self.stack.restart_redis(down_for=down)
            self.restarts += 1

    def fault_kafka(self) -> None:
        for _ in self.at_moments(1 if self.short else 2):
            frozen = SESSION_TIMEOUT_S + self.rng.uniform(1.0, 3.0)
            self.say(f"broker frozen (SIGSTOP) for {frozen:.1f} s")
            self.stack.pause_kafka(frozen)
            self.restarts += 1
            if self.stack.kafka != "apache":
                self.say("broker not killed: Tansu keeps its topics in memory only")
                continue
            down = self.rng.uniform(0.5, 2.0)
            self.say(f"broker killed (SIGKILL), restarted on its log directory after {down:.1f} s")
            self.stack.restart_kafka(down_for=down)
            self.restarts += 1

    # ---- counts from the processes' logs
    def pump_log_sum(self, msg: str, field: str) -> int:
        """Sum of ``field`` over the pumps' JSON log lines whose msg is ``msg``."""
        total = 0
        for path in (self.root / "logs").glob("pump*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if f'"msg": "{msg}"' in line:
                    try:
                        total += int(json.loads(line).get(field) or 0)
                    except ValueError:
                        pass
        return total


def play(name: str, seed: int, short: bool, keep: bool) -> tuple[dict, list[str]]:
    """Run one scenario; returns its counts and its problems (empty: passed)."""
    from chaos import checks, traffic
    from config import get_settings

    root = Path(tempfile.mkdtemp(prefix=f"gcp-chaos-{name}-"))
    sc = Scenario(name, seed, short, root)
    problems: list[str] = []
    counts: dict = {"scenario": name}
    ch = None
    try:
        sc.start()
        n = 21 if short else 42
        stories = traffic.stories(sc.rng, n, f"CH{name[:2].upper()}")
        sc.api.load([s.code for s in stories], traffic.NOMINAL, traffic.CURRENCY)
        ch = traffic.Channel(sc.api, os.environ["DATABASE_URL"], random.Random(f"{seed}-{name}-traffic"), 0.1)
        sc.say(f"{n} stories, seed {seed}")
        sc.burst_started = time.monotonic()
        faults = threading.Thread(target=sc.faults, daemon=True)
        faults.start()
        traffic.run(stories, ch, threads=4 if short else 6, spread=sc.window)
        faults.join(180)
        sc.say("traffic and faults done; settling")
        checks.settle(os.environ["DATABASE_URL"])
        found, checked = checks.check(stories, ch, get_settings().topic_stream)
        problems += found
        problems += [f"verify: {v}" for v in checks.verify_all()]
        dead = sc.procs.dead()
        problems += [f"{p} died on its own (exit {rc}):\n{sc.procs.log_tail(p, 1500)}" for p, rc in dead.items()]
        dropped = sc.pump_log_sum("duplicates dropped", "duplicates")
        swept = sc.pump_log_sum("sweep", "handedOverAgain")
        sent_twice = ch.counts["kafka duplicates sent"]
        reread = max(0, dropped - sent_twice)
        counts.update(
            stories=len(stories), inputs=ch.counts["inputs"], effects=checked["effects"], restarts=sc.restarts,
            redelivered=reread + swept + ch.counts["http retries"],
            duplicates_dropped=dropped + ch.counts["http replays"],
            detail=f"Kafka: {dropped} dropped by the inbox ({sent_twice} sent twice on purpose, "
                   f"{reread} read again after a fault), {swept} handed to the workers again by the sweeper; "
                   f"HTTP: {ch.counts['http retries']} retries, {ch.counts['http replays']} answered again",
            notes=sorted({s.note for s in stories if s.note}))
    except Exception as exc:  # noqa: BLE001 (a scenario that cannot run is a failure)
        import traceback

        problems.append("the scenario broke: " + "".join(traceback.format_exception(exc))[-3000:])
    finally:
        if ch is not None:
            ch.close()
        sc.stop()
        if problems or keep:
            print(f"  logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    counts["seconds"] = round(time.monotonic() - sc.started)
    return counts, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the CI version: fewer stories and faults")
    parser.add_argument("--seed", type=int, default=None, help="the faults' seed (default: from the clock)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="only these (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep every scenario's logs")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    from devstack import suite_broker

    print(f"chaos: seed {seed}{' (short)' if args.short else ''} on {suite_broker()} kafka"
          f"  -- re-run with --seed {seed}", flush=True)
    results, failed = [], Counter()
    for name in args.scenario or SCENARIOS:
        counts, problems = play(name, seed, args.short, args.keep)
        results.append(counts)
        if problems:
            failed[name] = len(problems)
            print(f"FAIL {name}:\n    " + "\n    ".join(problems[:40]), flush=True)
        else:
            print(f"ok   {name}: {counts}", flush=True)
    print()
    print("| scenario | stories | inputs | effects | restarts | redelivered | duplicates dropped | s |")
    print("|---|---|---|---|---|---|---|---|")
    for c in results:
        print(f"| {c['scenario']} | {c.get('stories', '-')} | {c.get('inputs', '-')} | {c.get('effects', '-')} | "
              f"{c.get('restarts', '-')} | {c.get('redelivered', '-')} | {c.get('duplicates_dropped', '-')} | "
              f"{c['seconds']} |")
    for c in results:
        if "detail" in c:
            print(f"- {c['scenario']}: {c['detail']}" + (f"; {'; '.join(c['notes'])}" if c["notes"] else ""))
    print(f"\nchaos seed {seed}: " + ("FAILED " + ", ".join(failed) if failed else "every scenario passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
