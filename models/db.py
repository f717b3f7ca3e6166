"""The PostgreSQL connection: one pooled Peewee database per process, bound at start-up."""
from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlparse, unquote

from peewee import DatabaseProxy
from playhouse.migrations import Runner
from playhouse.pool import PooledPostgresqlDatabase

#: The database every table binds to; :func:`init_db` points it at a real server.
db = DatabaseProxy()
#: Numbered migration files, each ``up(migrator, db)``, applied in order in one transaction each.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Advisory lock key that serializes concurrent `migrate` runs.
MIGRATION_LOCK = 0x6763_7001


def connect_params(url: str) -> dict:
    """psycopg2 keyword arguments for a ``postgresql://`` URL."""
    parts = urlparse(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be postgresql://..., not {parts.scheme}://")
    params = {
        "database": unquote(parts.path.lstrip("/")) or "postgres",
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
    }
    for item in filter(None, parts.query.split("&")):
        key, _, value = item.partition("=")
        params[key] = unquote(value)
    return {k: v for k, v in params.items() if v is not None}


def init_db(url: str, max_connections: int = 32) -> PooledPostgresqlDatabase:
    """Bind :data:`db` to ``url`` with a connection pool (thread-safe, one connection a thread)."""
    params = connect_params(url)
    database = params.pop("database")
    params.setdefault("connect_timeout", 5)
    params.setdefault("application_name", "gcp")
    real = PooledPostgresqlDatabase(database, max_connections=max_connections, stale_timeout=300,
                                    timeout=10, **params)
    db.initialize(real)
    return real


def close_db() -> None:
    """Return this thread's connection to the pool."""
    if db.obj is not None and not db.is_closed():
        db.close()


def migrate() -> list[str]:
    """Apply pending migrations; safe to run twice and from two processes at once."""
    with db.connection_context():
        db.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            return Runner(db.obj, str(MIGRATIONS_DIR)).up()
        finally:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def migration_status() -> list[tuple[str, object]]:
    with db.connection_context():
        return [(m.name, m.applied) for m in Runner(db.obj, str(MIGRATIONS_DIR)).status()]


def listening_connection(application_name: str, *channels: str):
    """A dedicated autocommit psycopg2 connection that LISTENs on ``channels``.

    For long-running processes woken by ``NOTIFY`` at commit (the relay, the scheduler); the
    pool is no place for it, because notifications arrive on the connection that listens.
    """
    import psycopg2
    import psycopg2.extensions

    from config import get_settings

    conn = psycopg2.connect(**connect_params(get_settings().database_url),
                            application_name=application_name)
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    with conn.cursor() as cur:
        for channel in channels:
            cur.execute(f"LISTEN {channel}")
    return conn


def wait_for_notify(conn, timeout: float) -> bool:
    """Block up to ``timeout`` seconds for a NOTIFY on ``conn``; True when one (or more) came."""
    import select

    if select.select([conn], [], [], timeout) == ([], [], []):
        return False
    conn.poll()
    got = bool(conn.notifies)
    conn.notifies.clear()
    return got


@contextlib.contextmanager
def connection():
    """A connection for the duration of the block, returned to the pool afterwards."""
    with db.connection_context():
        yield db
