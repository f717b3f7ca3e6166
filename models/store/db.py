"""The PostgreSQL connection: one pooled Peewee database per process, bound at start-up."""
from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import peewee
from peewee import DatabaseProxy
from playhouse.migrations import Runner
from playhouse.pool import PooledPostgresqlDatabase

from models.domain import locks

#: The database every table binds to; :func:`init_db` points it at a real server.
db = DatabaseProxy()
#: Numbered migration files, each ``up(migrator, db)``, applied in order in one transaction each.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


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


def session_options() -> str:
    """libpq ``options`` of every service connection: a stuck lock or a runaway statement ends
    in an error the caller can answer (409/503), never in a hung request."""
    from config import get_settings

    s = get_settings()
    return (f"-c lock_timeout={max(s.db_lock_timeout_ms, 0)}"
            f" -c statement_timeout={max(s.db_statement_timeout_ms, 0)}")


def init_db(url: str, max_connections: int = 32) -> PooledPostgresqlDatabase:
    """Bind :data:`db` to ``url`` with a connection pool (thread-safe, one connection a thread)."""
    params = connect_params(url)
    database = params.pop("database")
    params.setdefault("connect_timeout", 5)
    params.setdefault("application_name", "gcp")
    params.setdefault("options", session_options())
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
        db.execute_sql("SET lock_timeout = 0; SET statement_timeout = 0")  # a migration may be long
        db.execute_sql("SELECT pg_advisory_lock(%s)", (locks.MIGRATION,))
        try:
            return Runner(db.obj, str(MIGRATIONS_DIR)).up()
        finally:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (locks.MIGRATION,))
            db.execute_sql("RESET lock_timeout; RESET statement_timeout")  # back to the pool's


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


# ---- writes sent together ---------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def select_sql(model, field_name: str, lock: bool = False) -> str:
    """``SELECT`` every column of ``model`` ``WHERE field = %s`` (``FOR UPDATE`` if ``lock``),
    built once.

    For the hottest reads (``model.raw(sql, value)`` makes the instance): Peewee's query
    builder costs more than the query itself (measured: 400 µs of CPU a row read with it,
    130 µs with the SQL built once, 55 µs bare psycopg2)."""
    query = model.select().where(model._meta.fields[field_name] == "")
    return (query.for_update() if lock else query).sql()[0]


def row_by(model, field_name: str, value, lock: bool = False):
    """The row of ``model`` whose unique ``field_name`` is ``value`` (locked until commit if
    ``lock``), or None; by :func:`select_sql`."""
    return next(iter(model.raw(select_sql(model, field_name, lock), value)), None)


@functools.lru_cache(maxsize=None)
def _insert_sql(model, names: tuple[str, ...]) -> str:
    fields = [model._meta.fields[n] for n in names]
    return (f'INSERT INTO "{model._meta.table_name}" ('
            + ", ".join(f'"{f.column_name}"' for f in fields)
            + ") VALUES (" + ", ".join(["%s"] * len(fields)) + ")")


@functools.lru_cache(maxsize=None)
def _update_sql(model, names: tuple[str, ...]) -> str:
    fields = [model._meta.fields[n] for n in names]
    return (f'UPDATE "{model._meta.table_name}" SET '
            + ", ".join(f'"{f.column_name}" = %s' for f in fields)
            + f' WHERE "{model._meta.primary_key.column_name}" = %s')


def insert_statement(model, **values) -> tuple[str, tuple]:
    """``INSERT`` one row of ``model`` (values by field name, converted as Peewee would)."""
    fields = model._meta.fields
    return (_insert_sql(model, tuple(values)),
            tuple(fields[name].db_value(value) for name, value in values.items()))


def update_statement(row) -> tuple[str, tuple]:
    """``UPDATE`` the loaded columns of ``row`` by its primary key (like ``row.save()``)."""
    model, data = type(row), row.__data__
    pk = model._meta.primary_key
    fields = [f for f in model._meta.sorted_fields if f is not pk and f.name in data]
    return (_update_sql(model, tuple(f.name for f in fields)),
            tuple(f.db_value(data[f.name]) for f in fields) + (row._pk,))


class Statements:
    """Writes that return nothing, sent to PostgreSQL in one round trip by :meth:`flush`.

    A unit of work collects its ledger, outbox and audit rows and the certificate's update
    here, so a use case costs one round trip for all its writes instead of one per row. The
    SQL of each table is built once (Peewee's query builder costs more than the statement).
    """

    def __init__(self):
        self.parts: list[tuple[str, tuple]] = []

    def add(self, sql: str, params: tuple = ()) -> None:
        self.parts.append((sql, params))

    def insert(self, model, **values) -> None:
        """``INSERT`` one row of ``model`` (values by field name, converted as Peewee would)."""
        self.parts.append(insert_statement(model, **values))

    def update(self, row) -> None:
        """``UPDATE`` the loaded columns of ``row`` by its primary key (like ``row.save()``)."""
        self.parts.append(update_statement(row))

    def flush(self) -> None:
        """Send every collected statement in one round trip (errors raise as Peewee's)."""
        if self.parts:
            self.send()

    def send(self, sql: str | None = None, params: tuple | dict = ()):
        """Send every collected statement, then ``sql`` (a read, a ``RETURNING`` write), in one
        round trip; returns the cursor, which holds the rows of the last statement."""
        parts, self.parts = self.parts, []
        if sql is not None:
            parts.append((sql, params))
        cursor = db.cursor()
        with peewee.__exception_wrapper__:
            cursor.execute(b";".join(cursor.mogrify(part, values) for part, values in parts))
        return cursor


# ---- start-up of a long-running process ---------------------------------------------------

def missing_migrations(conn) -> list[str]:
    """Migration files not applied to the database of the psycopg2 connection ``conn``."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migration') IS NOT NULL")
        applied = set()
        if cur.fetchone()[0]:
            cur.execute("SELECT name FROM schema_migration")
            applied = {r[0] for r in cur.fetchall()}
    return sorted(p.stem for p in MIGRATIONS_DIR.glob("[0-9]*.py") if p.stem not in applied)


def await_database(process: str, stop=None) -> None:
    """Wait until PostgreSQL answers (an outage at start-up is ridden through like any other:
    retried with backoff, logged once); then exit, saying why in one line, if a migration is
    missing: that is the one database fault a restart cannot mend."""
    import logging
    import sys

    import psycopg2

    from config import get_settings
    from models.store.liveness import Outages
    from observability import dependency_of

    outages = Outages(process)
    while stop is None or not stop.is_set():
        try:
            conn = psycopg2.connect(**connect_params(get_settings().database_url),
                                    connect_timeout=5, application_name=f"gcp-{process}-boot")
            try:
                missing = missing_migrations(conn)
            finally:
                conn.close()
        except Exception as exc:
            if dependency_of(exc) != "postgres":
                raise
            delay = outages.failed("postgres", exc)
            stop.wait(delay) if stop is not None else time.sleep(delay)
            continue
        outages.ok()
        if missing:
            line = (f"gcp {process}: the database lacks migration(s) {', '.join(missing)}: "
                    "run `python app.py migrate` first")
            logging.getLogger("gcp").critical(line)
            print(line, file=sys.stderr, flush=True)
            raise SystemExit(2)
        return
