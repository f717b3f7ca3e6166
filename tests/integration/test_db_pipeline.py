"""Writes sent together: ``Statements`` (one round trip for a unit of work's writes) and
``unit_of_work.later`` (writes nothing reads back, sent with the transaction's end)."""
import threading

import pytest
from peewee import IntegrityError

from models.service import unit_of_work as work
from models.store.db import Statements, db
from models.store.tables import GiftCertificate, OrderEffect
from tests.helpers import load, uid


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


def effects(order_id):
    return [e for (e,) in db.execute_sql(
        "SELECT effect_key FROM order_effect WHERE order_id = %s ORDER BY effect_key", (order_id,)).fetchall()]


def later_effect(order_id, key):
    work.later("INSERT INTO order_effect (order_id, effect_key, outcome) VALUES (%s, %s, 'APPLIED')",
               (order_id, key))


def test_a_later_write_waits_for_the_end_of_the_transaction_and_commits_with_it():
    order = uid("o-")
    with work.transaction():
        later_effect(order, "a")
        assert effects(order) == []  # not sent yet
        later_effect(order, "b")
    assert effects(order) == ["a", "b"]


def test_a_later_write_that_fails_fails_the_transaction_and_rolls_everything_back():
    order = uid("o-")
    with pytest.raises(IntegrityError):
        with work.transaction():
            db.execute_sql("INSERT INTO order_effect (order_id, effect_key, outcome) VALUES (%s, 'x', 'APPLIED')",
                           (order,))
            later_effect(order, "a")
            later_effect(order, "a")  # unique (order_id, effect_key): fails at the end
    assert effects(order) == []
    with work.transaction():  # and the connection is usable afterwards
        later_effect(order, "c")
    assert effects(order) == ["c"]


def test_a_transaction_that_fails_sends_none_of_its_later_writes():
    order = uid("o-")
    with pytest.raises(RuntimeError):
        with work.transaction():
            later_effect(order, "a")
            raise RuntimeError("refused")
    assert effects(order) == []


def test_a_later_write_inside_a_savepoint_goes_with_the_savepoint():
    """An earlier inbox message handled in a savepoint that fails must take its recorded
    effects with it: a queued write would outlive the rollback and mark an undone effect done."""
    order = uid("o-")
    with work.transaction():
        later_effect(order, "outer")
        with pytest.raises(RuntimeError):
            with work.transaction():  # nested: a savepoint
                later_effect(order, "rolled-back")
                raise RuntimeError("the earlier message fails")
        with work.transaction():
            later_effect(order, "kept")
    assert effects(order) == ["kept", "outer"]


def test_a_reader_flushes_the_later_writes_first():
    order = uid("o-")
    with work.transaction():
        later_effect(order, "a")
        work.flush_later()
        assert effects(order) == ["a"]
        later_effect(order, "b")
    assert effects(order) == ["a", "b"]


def test_a_later_write_outside_a_transaction_runs_at_once():
    order = uid("o-")
    later_effect(order, "now")
    assert effects(order) == ["now"]


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


def test_a_pooled_connection_the_server_closed_is_replaced():
    """A pooled connection that PostgreSQL closed while it was idle is dropped at check-out,
    not handed out (a thread of its own: its own pooled connection)."""
    import psycopg2

    from config import get_settings
    from models.store.db import connect_params

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
    in_thread(backend_pid)
    assert len(seen) == 2 and seen[1] != seen[0]


def test_threads_keep_their_own_later_writes():
    orders = [uid("o-") for _ in range(4)]
    errors = []

    def run(order):
        try:
            with db.connection_context():
                for i in range(20):
                    with work.transaction():
                        later_effect(order, f"k{i:02d}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for order in orders:
        assert effects(order) == [f"k{i:02d}" for i in range(20)]
    assert OrderEffect.select().where(OrderEffect.order_id.in_(orders)).count() == 80
