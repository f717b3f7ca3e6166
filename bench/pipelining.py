"""Did the round-trip saving of ``PipelinedPostgresqlDatabase`` pay beside ``Statements``?

On a quiet machine it saved 6-12% of the units of work's own time and CPU, and about 2% of a
whole sale's CPU (``bench/latency.py``): not worth eight overridden Peewee internals, so the
class is gone from ``models/store/db.py``. It is kept here, so the measurement can be repeated. ``PipelinedPostgresqlDatabase`` held back ``BEGIN``, ``SAVEPOINT`` and ``RELEASE SAVEPOINT`` to
send them with the next statement, and skips the pool's ``SELECT 1`` for a connection returned
less than a second ago. ``Statements`` (one round trip for a unit of work's writes) is kept
either way. This runs the same use cases on both, in one process, on an embedded PostgreSQL
and Redis, alternating the two so that the machine's noise falls on both alike:

- **sale**: reserve (one unit of work), then the order and its full payment handled as the inbox
  actor handles them (an outer transaction, a savepoint per effect, the issue);
- **lock + unlock**: two single-row units of work.

It prints, per operation: wall time p50 and p99, and the CPU spent by this process and by its
PostgreSQL backend, for each variant and as a ratio. Run: ``python -m bench.pipelining [n]``.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import peewee
import psycopg2.extensions
from playhouse.pool import PooledPostgresqlDatabase

N = int(os.environ.get("BENCH_PIPELINING_N", "300"))
ROUNDS = 3
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# ---- the variant measured: the class models/store/db.py had until this benchmark showed it saved nothing
#: Statements that change nothing by themselves and can wait for the next one.
_PIGGYBACK = ("SAVEPOINT ", "RELEASE SAVEPOINT ")
_ROLLBACK_TO = "ROLLBACK TO SAVEPOINT "


class PipelinedPostgresqlDatabase(PooledPostgresqlDatabase):  # noqa: D101
    """Peewee's pooled PostgreSQL database, with fewer round trips.

    A round trip to PostgreSQL costs more CPU here (client and server, about 0.25 ms in all)
    than most of our statements, so:

    - ``BEGIN``, ``SAVEPOINT`` and ``RELEASE SAVEPOINT`` are not sent alone: they wait in a
      per-connection queue and go with the next statement (or the ``COMMIT``). A transaction or
      savepoint that sent nothing is ended without any round trip.
    - :meth:`defer` queues a write whose result nobody reads (marking an inbox row done,
      recording an applied effect) the same way; its error, if any, raises at the next
      statement or at ``COMMIT``, and the whole transaction is rolled back, as for any error.
    - a connection checked back into the pool less than :data:`PING_AFTER` seconds ago is
      reused without the pool's ``SELECT 1`` (a connection that broke meanwhile fails the
      transaction, which is retried like any other database fault).
    """

    #: Seconds a returned connection is trusted without a ping (HikariCP's bypass window).
    PING_AFTER = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._returned_at: dict[int, float] = {}

    # -- the queue
    def _queue(self) -> list[bytes]:
        queue = getattr(self._state, "gcp_queue", None)
        if queue is None:
            queue = self._state.gcp_queue = []
        return queue

    def _take_queue(self) -> bytes:
        queue = self._queue()
        text = b"".join(q if q.endswith(b";") else q + b";" for q in queue)
        queue.clear()
        return text

    def _plain_cursor(self):
        return super().cursor()

    def cursor(self, named_cursor=None):
        """A cursor for direct use (COPY, ...): whatever is queued is sent first."""
        cursor = self._plain_cursor()
        if self._queue():
            with peewee.__exception_wrapper__:
                cursor.execute(self._take_queue())
        return cursor

    def send(self, text: bytes, cursor=None):
        """Send ready SQL (already interpolated) with whatever is queued, in one round trip."""
        with peewee.__exception_wrapper__:
            cursor = cursor or self._plain_cursor()
            cursor.execute(self._take_queue() + text)
        return cursor

    def defer(self, sql: str, params: tuple = ()) -> None:
        """Run a write with the next statement or the COMMIT (right away outside a transaction)."""
        if not self.in_transaction():
            self.execute_sql(sql, params)
            return
        self._queue().append(self._plain_cursor().mogrify(sql, params))

    def execute_sql(self, sql, params=None):
        if isinstance(sql, str) and not params and self.in_transaction():
            if sql.startswith(_PIGGYBACK):
                self._queue().append(sql.encode())
                return None
            if sql.startswith(_ROLLBACK_TO):
                opened = ("SAVEPOINT " + sql[len(_ROLLBACK_TO):]).encode()
                queue = self._queue()
                if opened in queue:  # nothing was sent since: nothing to roll back
                    del queue[queue.index(opened):]
                    return None
        if not self._queue():
            return super().execute_sql(sql, params)
        self._log_query(sql, params)
        cursor = self._plain_cursor()
        return self.send(cursor.mogrify(sql, params or ()), cursor)

    # -- transactions
    def begin(self, isolation_level=None):
        if isolation_level is None and not self._isolation_level:
            if self.is_closed():  # open it now, as peewee's BEGIN would (connecting resets state)
                self.connect()
            queue = self._queue()
            queue.clear()
            queue.append(b"BEGIN")
            return
        super().begin(isolation_level)

    def commit(self):
        queue = self._queue()
        if b"BEGIN" in queue and all(q == b"BEGIN" or q.startswith((b"SAVEPOINT ", b"RELEASE "))
                                     for q in queue):
            queue.clear()  # the transaction never reached the server
            return
        self.send(b"COMMIT")

    def rollback(self):
        queue = self._queue()
        started = b"BEGIN" not in queue
        queue.clear()
        if started:
            with peewee.__exception_wrapper__:
                self._plain_cursor().execute("ROLLBACK")

    # -- the pool's liveness check
    def _is_closed(self, conn):
        if conn.closed:
            return True
        returned = self._returned_at.get(id(conn))
        if (returned is not None and time.monotonic() - returned < self.PING_AFTER
                and conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE):
            return False
        return super()._is_closed(conn)

    def _close(self, conn, close_conn=False):
        self._returned_at[id(conn)] = time.monotonic()
        if len(self._returned_at) > 4 * (self._max_connections or 64):
            self._returned_at.clear()  # forget connections long gone
        super()._close(conn, close_conn)

    def connect(self, reuse_if_open=False):
        opened = super().connect(reuse_if_open)
        if opened:
            self._queue().clear()
        return opened


def _variant(pipelined: bool):
    return PipelinedPostgresqlDatabase if pipelined else PooledPostgresqlDatabase


def _bind(url: str, cls) -> None:
    from models.store import db as dbmod

    params = dbmod.connect_params(url)
    database = params.pop("database")
    params.setdefault("options", dbmod.session_options())
    if dbmod.db.obj is not None:
        dbmod.db.obj.close_all()
    dbmod.db.initialize(cls(database, max_connections=4, stale_timeout=300, timeout=10, **params))


def _messages(code: str, order_id: str) -> list[tuple[str, dict]]:
    now = "2026-11-22T10:00:00Z"
    lines = [{"lineId": "1", "type": "GIFT_CERTIFICATE", "certificateCode": code, "amount": "1000.00"}]
    order = {"eventId": str(uuid.uuid4()), "eventType": "ORDER_CREATED", "occurredAt": now, "orderId": order_id,
             "channel": "ONLINE_STORE", "currency": "RUB", "total": "1000.00", "lines": lines,
             "customer": {"clientId": "c-" + order_id, "phone": "+79990001122"}}
    payment = {"eventId": str(uuid.uuid4()), "eventType": "PAYMENT_CAPTURED", "occurredAt": now,
               "paymentId": "pay-" + order_id, "orderId": order_id, "channel": "ONLINE_STORE",
               "amount": "1000.00", "currency": "RUB", "method": "CARD",
               "giftCertificate": {"code": code, "operation": "PURCHASE"}}
    return [("All_SalesOrder", order), ("All_Payments", payment)]


def _round(codes: list[str], op: str) -> dict:
    from models.domain import commands
    from models.service import messagebus
    from models.service.handlers import orders
    from models.store.db import db

    wall = []
    with db.connection_context():
        backend = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    cpu0, pg0 = time.process_time(), _cpu_of(backend)
    for code in codes:
        started = time.perf_counter()
        with db.connection_context():
            if op == "sale":
                order_id = "o-" + uuid.uuid4().hex[:12]
                messagebus.handle(commands.Reserve("ONLINE_STORE", order_id, "1", Decimal("1000.00"), "RUB", code=code))
                for source, msg in _messages(code, order_id):
                    with messagebus.transaction():
                        command = commands.OrderMessage if source == "All_SalesOrder" else commands.PaymentMessage
                        messagebus.handle(command(msg), orders.message_context(msg, source))
            else:
                messagebus.handle(commands.Lock(code, "BENCH"))
                messagebus.handle(commands.Unlock(code))
        wall.append(time.perf_counter() - started)
    cpu, pg = time.process_time() - cpu0, _cpu_of(backend) - pg0
    wall.sort()
    return {"p50": wall[len(wall) // 2] * 1000, "p99": wall[int(len(wall) * 0.99)] * 1000,
            "cpu": cpu / len(codes) * 1000, "pg": pg / len(codes) * 1000}


def main(n: int = N) -> dict:
    from devstack import EmbeddedStack

    root = Path(tempfile.mkdtemp(prefix="gcp-bench-pipe-"))
    stack = EmbeddedStack(root, database="gcp")
    try:
        os.environ.update(DATABASE_URL=stack.start_postgres(), REDIS_URL=stack.start_redis(),
                          JWT_SECRET="bench-secret-0123456789-0123456789",
                          CVC_ENCRYPTION_KEY="bench-cvc-key-0123456789-0123456789",
                          CVC_CLIENT_BUDGET="1000000/minute", LOG_LEVEL="WARNING")
        from config import reset_settings
        from models.domain import commands
        from models.service import messagebus
        from models.store.db import db, migrate

        reset_settings()
        results: dict[str, dict[str, list[dict]]] = {"sale": {}, "lock + unlock": {}}
        _bind(os.environ["DATABASE_URL"], _variant(True))
        migrate()
        for r in range(ROUNDS):
            for pipelined in ((True, False) if r % 2 == 0 else (False, True)):
                name = "pipelined" if pipelined else "plain"
                _bind(os.environ["DATABASE_URL"], _variant(pipelined))
                codes = ["BP" + uuid.uuid4().hex[:14].upper() for _ in range(n)]
                with db.connection_context():
                    messagebus.handle(commands.LoadBatch("b-" + codes[0], "ELECTRONIC", "RUB", tuple(
                        {"code": c, "nominal": Decimal("1000.00")} for c in codes)), commands.Context(actor="bench"))
                results["sale"].setdefault(name, []).append(_round(codes, "sale"))
                results["lock + unlock"].setdefault(name, []).append(_round(codes, "lock"))
        print(f"   {n} operations a round, {ROUNDS} rounds a variant, alternating; medians of the rounds")
        print(f"   {'operation':<15} {'variant':<10} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms':>8} {'PG CPU ms':>10}")
        summary = {}
        for op, by in results.items():
            med = {v: {k: statistics.median(r[k] for r in rounds) for k in ("p50", "p99", "cpu", "pg")}
                   for v, rounds in by.items()}
            for v in ("plain", "pipelined"):
                m = med[v]
                print(f"   {op:<15} {v:<10} {m['p50']:>8.2f} {m['p99']:>8.2f} {m['cpu']:>8.2f} {m['pg']:>10.2f}")
            ratio = {k: med["pipelined"][k] / med["plain"][k] for k in ("p50", "p99", "cpu", "pg")}
            print(f"   {op:<15} {'ratio':<10} {ratio['p50']:>8.2f} {ratio['p99']:>8.2f} {ratio['cpu']:>8.2f} "
                  f"{ratio['pg']:>10.2f}   (pipelined / plain)")
            summary[op] = {"plain": med["plain"], "pipelined": med["pipelined"], "ratio": ratio}
        return summary
    finally:
        from models.store.db import db

        if db.obj is not None:
            db.obj.close_all()
        stack.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else N)
