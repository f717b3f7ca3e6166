"""Test harness: real PostgreSQL, Redis and Kafka for every test run.

Kafka is Apache Kafka itself wherever Java 17+ and Maven are present (else Tansu, or whichever
``KAFKA_EMBEDDED`` names); the run's header and summary say which broker it used.

With none of DATABASE_URL / REDIS_URL / KAFKA_BOOTSTRAP_SERVERS set, the controller process
starts the embedded servers once (free ports, a temp dir) and the xdist workers inherit their
URLs. With the URLs set (system PostgreSQL, apt redis-server, a real Kafka) those are used.
Either way each worker gets a fresh database, its own Redis database number and its own topic
names, so tests in parallel never see each other's data; the database is dropped at the end.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

ROOT = Path(__file__).resolve().parents[1]
_STACK = None
_TMP = None
RUN_ID = os.environ.setdefault("GCP_TEST_RUN", uuid.uuid4().hex[:8])


def pytest_configure(config):
    global _STACK, _TMP
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller already set the URLs
    if any(os.environ.get(v) for v in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")):
        missing = [v for v in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS") if not os.environ.get(v)]
        if missing:
            raise pytest.UsageError(f"set all of the server URLs or none; missing: {', '.join(missing)}")
        # the suite vouches for the test servers it is given (a secured cluster sets its protocol)
        os.environ.setdefault("KAFKA_ALLOW_PLAINTEXT", "true")
        return
    from devstack import EmbeddedStack, suite_broker

    # every stack a test starts of its own (ride-through, chaos) runs on the same broker
    os.environ["KAFKA_EMBEDDED"] = suite_broker()
    _TMP = Path(tempfile.mkdtemp(prefix="gcp-test-"))
    os.environ["GCP_PG_FAST"] = "1"  # fsync off: a throwaway cluster
    _STACK = EmbeddedStack(_TMP, database="postgres")
    os.environ.update(_STACK.start())


def _broker_line() -> str:
    if _STACK is None and os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and not os.environ.get("KAFKA_EMBEDDED"):
        return f"kafka: the broker at KAFKA_BOOTSTRAP_SERVERS={os.environ['KAFKA_BOOTSTRAP_SERVERS']}"
    from devstack import java_missing

    broker = os.environ.get("KAFKA_EMBEDDED", "tansu")
    why = f" ({java_missing()})" if broker == "tansu" and java_missing() else ""
    return f"kafka: embedded {'Apache Kafka' if broker == 'apache' else 'Tansu'}{why}"


def pytest_report_header(config):
    return _broker_line()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"this run's {_broker_line()}")


def pytest_unconfigure(config):
    if _STACK is not None:
        _STACK.stop()
        shutil.rmtree(_TMP, ignore_errors=True)


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name[2:].isdigit() else 0


def _admin_dsn(url: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path="/postgres"))


@pytest.fixture(scope="session", autouse=True)
def stack():
    """A fresh database, Redis db and topic set for this worker; yields the environment."""
    import psycopg2
    import redis

    worker = _worker_index()
    base_url = os.environ["DATABASE_URL"]
    dbname = f"gcp_test_{RUN_ID}_{worker}"
    admin = psycopg2.connect(_admin_dsn(base_url))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{dbname}"')
        cur.execute(f'CREATE DATABASE "{dbname}"')
    db_url = urlunparse(urlparse(base_url)._replace(path=f"/{dbname}"))

    redis_parts = urlparse(os.environ["REDIS_URL"])
    redis_url = urlunparse(redis_parts._replace(path=f"/{1 + worker % 15}"))
    redis.Redis.from_url(redis_url).flushdb()

    suffix = f".t{RUN_ID}{worker}"
    env = {
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "TOPIC_SALES_ORDER": "All_SalesOrder" + suffix,
        "TOPIC_PAYMENTS": "All_Payments" + suffix,
        "TOPIC_CLIENTS": "All_Clients" + suffix,
        "TOPIC_STREAM": "GiftCertificates.Stream" + suffix,
        "TOPIC_DLQ": "GiftCertificates.DLQ" + suffix,
        "TOPIC_PARTITIONS": "3",
        "KAFKA_CONSUMER_GROUP": "gcp-pump" + suffix,
        "JWT_SECRET": "test-secret-for-the-gcp-suite-0123456789",
        "JWT_AUDIENCE": "gcp-test-suite",  # HS256 outside development needs one (config.check_settings)
        "CVC_ENCRYPTION_KEY": "test-cvc-key-for-the-gcp-suite-0123456789",
        "IDEMPOTENCY_KEY": "test-idempotency-key-for-the-gcp-suite-0123456789",
        "CVC_CLIENT_BUDGET": "100000/minute",
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT": "100000/second",
        "METRICS_PUBLIC": "true",  # the suite scrapes /metrics without a token (loopback only)
    }
    os.environ.update(env)
    from config import reset_settings
    from models.store import cache
    from models.store.db import close_db, init_db, migrate
    from workers.kafka import ensure_topics

    reset_settings()
    cache.reset()
    init_db(db_url)
    migrate()
    ensure_topics()  # a reader made before anything is produced reads this worker's topics too
    yield dict(os.environ)
    close_db()
    from models.store.db import db

    if db.obj is not None:
        db.obj.close_all()
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
        cur.execute(f'DROP DATABASE IF EXISTS "{dbname}"')
    admin.close()


@pytest.fixture
def clean_db(stack):
    """Empty every table (for tests that count rows or need an empty pool)."""
    from models.store.db import db
    from models.store.tables import ALL_TABLES

    names = ", ".join(t._meta.table_name for t in ALL_TABLES)
    with db.connection_context():
        db.execute_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    from models.store import cache

    cache.client().flushdb()
    yield


def unique_code(prefix: str = "T") -> str:
    return (prefix + uuid.uuid4().hex[:14]).upper()
