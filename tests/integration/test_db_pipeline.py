"""The pipelined database (models.db): BEGIN, savepoints and deferred writes go with the next
statement, yet transactions behave exactly as if each had been sent on its own."""
import threading

import pytest
from peewee import IntegrityError

from models.db import Statements, db
from models.tables import GiftCertificate, OrderEffect
from tests.helpers import load, uid


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


def effects(order_id):
    return [e for (e,) in db.execute_sql(
        "SELECT effect_key FROM order_effect WHERE order_id = %s ORDER BY effect_key", (order_id,)).fetchall()]


def defer_effect(order_id, key):
    db.defer("INSERT INTO order_effect (order_id, effect_key, outcome) VALUES (%s, %s, 'APPLIED')",
             (order_id, key))


def test_a_deferred_write_is_seen_by_the_next_read_and_committed_with_the_transaction():
    order = uid("o-")
    with db.atomic():
        defer_effect(order, "a")
        assert effects(order) == ["a"]  # sent ahead of this read
        defer_effect(order, "b")  # sent with the COMMIT
    assert effects(order) == ["a", "b"]


def test_a_deferred_write_that_fails_fails_the_commit_and_rolls_everything_back():
    order = uid("o-")
    with pytest.raises(IntegrityError):
        with db.atomic():
            defer_effect(order, "a")
            assert effects(order) == ["a"]
            defer_effect(order, "a")  # unique (order_id, effect_key): fails at COMMIT
    assert effects(order) == []
    # and the connection is usable afterwards
    with db.atomic():
        defer_effect(order, "c")
    assert effects(order) == ["c"]


def test_savepoints_roll_back_only_their_own_writes_whether_sent_or_still_queued():
    order = uid("o-")
    with db.atomic():
        defer_effect(order, "outer")
        with pytest.raises(RuntimeError):
            with db.atomic():  # nothing sent inside: the rollback costs nothing
                defer_effect(order, "queued-inner")
                raise RuntimeError("refused")
        with pytest.raises(RuntimeError):
            with db.atomic():  # sent inside, then rolled back on the server
                defer_effect(order, "sent-inner")
                assert "sent-inner" in effects(order)
                raise RuntimeError("refused")
        with db.atomic():
            defer_effect(order, "kept-inner")
    assert effects(order) == ["kept-inner", "outer"]


def test_a_write_outside_a_transaction_runs_at_once():
    order = uid("o-")
    defer_effect(order, "now")
    assert effects(order) == ["now"]


def test_a_raw_cursor_sends_what_is_queued_first():
    """COPY and other direct cursor use must run inside the transaction (and savepoint) opened
    before it, though BEGIN and SAVEPOINT were only queued."""
    order = uid("o-")
    with pytest.raises(RuntimeError):
        with db.atomic():
            with db.atomic():
                db.cursor().execute("INSERT INTO order_effect (order_id, effect_key, outcome)"
                                    " VALUES (%s, 'raw', 'APPLIED')", (order,))
            raise RuntimeError("roll the transaction back")
    assert effects(order) == []


def test_statements_update_only_the_loaded_columns():
    code = load(1, "700.00")[0]
    row = (GiftCertificate.select(GiftCertificate.id, GiftCertificate.code, GiftCertificate.lock_reason)
           .where(GiftCertificate.code == code).get())
    row.lock_reason = "TEST"
    with db.atomic():
        writes = Statements()
        writes.update(row)
        writes.flush()
    again = GiftCertificate.get(GiftCertificate.code == code)
    assert again.lock_reason == "TEST" and str(again.nominal) == "700.00" and again.status == "AVAILABLE"


def test_a_pooled_connection_broken_while_idle_is_replaced():
    """Within the bypass window a returned connection is trusted; after it, the pool pings and
    drops a connection the server closed (a thread of its own: its own pooled connection)."""
    import psycopg2

    from config import get_settings
    from models.db import connect_params

    seen = []

    def backend_pid():
        with db.connection_context():
            seen.append(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])

    def in_thread(fn):
        t = threading.Thread(target=fn)
        t.start()
        t.join()

    in_thread(backend_pid)
    admin = psycopg2.connect(**connect_params(get_settings().database_url))
    admin.autocommit = True
    admin.cursor().execute("SELECT pg_terminate_backend(%s)", (seen[0],))
    admin.close()
    db.obj._returned_at.clear()  # as if the bypass window had passed
    in_thread(backend_pid)
    assert len(seen) == 2 and seen[1] != seen[0]  # the dead one was dropped, not handed out


def test_threads_keep_their_own_queues():
    orders = [uid("o-") for _ in range(4)]
    errors = []

    def work(order):
        try:
            with db.connection_context():
                for i in range(20):
                    with db.atomic():
                        defer_effect(order, f"k{i:02d}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for order in orders:
        assert effects(order) == [f"k{i:02d}" for i in range(20)]
    assert OrderEffect.select().where(OrderEffect.order_id.in_(orders)).count() == 80
