"""Riding through a lost connection, process by process, against the run's real servers: the
backend of a process is cut with ``pg_terminate_backend`` (what a restart or a failover does to
it) and the process goes on. What counts as transient, one log line per outage, the outage
counted in a metric, and the one database fault that stops a process at start: a missing
migration. (The whole service through real restarts: tests/e2e/test_ride_through.py.)"""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from decimal import Decimal

import peewee
import psycopg2
import psycopg2.errors
import pytest
import redis
from confluent_kafka import KafkaError, KafkaException

from config import get_settings
from models.domain import commands
from models.service import messagebus
from models.store.db import connect_params, db
from models.store.liveness import OUTAGES_KEY, Outages
from observability import DEPENDENCY_OUTAGES, dependency_of
from tests.e2e import flow
from tests.helpers import issued, uid

D = Decimal
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def terminate(application_name: str) -> int:
    """Cut every backend of ``application_name`` (as a restart would); returns how many."""
    conn = psycopg2.connect(**connect_params(get_settings().database_url))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE application_name = %s AND datname = current_database()", (application_name,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_a_lost_or_refused_connection_is_transient_and_a_refused_statement_is_not():
    lost = psycopg2.OperationalError("server closed the connection unexpectedly")
    assert dependency_of(lost) == "postgres"
    assert dependency_of(peewee.OperationalError(lost)) == "postgres"  # as Peewee wraps it
    assert dependency_of(psycopg2.InterfaceError("connection already closed")) == "postgres"
    assert dependency_of(psycopg2.errors.AdminShutdown()) == "postgres"
    assert dependency_of(redis.ConnectionError("refused")) == "redis"
    assert dependency_of(KafkaException(KafkaError(KafkaError._TRANSPORT))) == "kafka"
    # a lock not granted or a statement cancelled is an answer of a live server, not an outage
    assert dependency_of(psycopg2.errors.LockNotAvailable()) is None
    assert dependency_of(psycopg2.errors.QueryCanceled()) is None
    assert dependency_of(ValueError("a bug")) is None


def test_an_outage_is_logged_once_counted_and_its_end_logged_with_its_length(caplog, stack):
    from models.store import cache

    process = "test-" + uid()
    outages = Outages(process)
    before = DEPENDENCY_OUTAGES.labels(process, "postgres")._value.get()
    with caplog.at_level(logging.WARNING, logger="gcp." + process):
        delays = [outages.failed("postgres", psycopg2.OperationalError("refused")) for _ in range(8)]
        assert outages.is_down("postgres")
        outages.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in lines) == 1 and sum("reachable again" in m for m in lines) == 1
    assert DEPENDENCY_OUTAGES.labels(process, "postgres")._value.get() == before + 1
    # bounded exponential backoff with jitter
    assert delays[0] <= 0.1 and max(delays) <= 2.0 and delays[-1] >= 1.0
    assert int(cache.client().hget(OUTAGES_KEY, f"{process}|postgres")) == 1
    assert not outages.is_down("postgres")


def test_the_web_metrics_show_every_process_outages(stack):
    from app import create_app
    from models.store import cache

    client = create_app(get_settings()).test_client()
    cache.client().hset(OUTAGES_KEY, "relay|postgres", 3)
    body = client.get("/metrics").get_data(as_text=True)
    assert 'gcp_process_outages_total{dependency="postgres",process="relay"} 3.0' in body


def test_the_relay_reconnects_after_losing_its_connection_and_publishes_once(stack):
    from workers.kafka import ensure_topics
    from workers.relay import Relay

    ensure_topics()
    reader = flow.TopicReader()
    relay = Relay()
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    try:
        code = issued("1000.00")
        reader.wait_for(lambda r: len(r.for_key(code)) >= 3, what="the issue")
        # when its connection is cut (the leadership, a session lock, goes with it)
        assert terminate("gcp-relay") >= 1
        with db.connection_context():
            messagebus.handle(commands.Redeem(code, D("100.00")), commands.Context(causation_id=flow.eid()))
        # then it connects again, leads again, and the new event goes out, once, in sequence
        reader.wait_for(lambda r: len(r.for_key(code)) >= 4, 30, "the redemption after the cut")
        reader.poll(1.0)
        events = reader.for_key(code)
        assert [e["eventType"] for e in events][-1] == "redeem.partial" and len(events) == 4
        flow.assert_sequence(events)
        assert thread.is_alive() and relay.leader
    finally:
        stop.set()
        thread.join(15)
        reader.close()


def test_the_scheduler_reconnects_after_losing_its_connection(stack):
    from workers.scheduler import Scheduler

    scheduler = Scheduler()
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not scheduler.leader and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scheduler.leader
        assert terminate("gcp-scheduler") >= 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # it noticed, and leads again on a new connection
            if scheduler.leader and not scheduler.outages.down and terminate_count("gcp-scheduler") == 1:
                break
            time.sleep(0.1)
        assert thread.is_alive() and scheduler.leader and terminate_count("gcp-scheduler") == 1
    finally:
        stop.set()
        thread.join(15)


def terminate_count(application_name: str) -> int:
    conn = psycopg2.connect(**connect_params(get_settings().database_url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                        " AND datname = current_database()", (application_name,))
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("module", ["workers.relay", "workers.pump", "workers.scheduler"])
def test_a_missing_migration_stops_a_process_at_start_saying_why_in_one_line(stack, module):
    base = get_settings().database_url
    empty = f"gcp_empty_{uid()}"
    admin = psycopg2.connect(**connect_params(base))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{empty}"')
    try:
        url = base.rsplit("/", 1)[0] + "/" + empty
        import os

        env = {**os.environ, "DATABASE_URL": url}
        done = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = [line for line in done.stderr.splitlines() if line.startswith("gcp ")]
        assert len(lines) == 1 and "lacks migration(s) 0001_initial" in lines[0] and "app.py migrate" in lines[0], \
            done.stderr[-2000:]
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{empty}" WITH (FORCE)')
        admin.close()
