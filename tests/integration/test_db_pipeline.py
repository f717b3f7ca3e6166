"""Writes sent together: ``Statements`` (one round trip for a unit of work's writes) and
``UnitOfWork.queue`` (writes nothing reads back at once, sent with the unit of work's end, or
with the next statement it sends)."""
import threading

import pytest
from peewee import IntegrityError

from models.domain import locks
from models.domain.errors import DomainError
from models.service.unit_of_work import UnitOfWork
from models.store.db import Statements, db
from models.store.tables import GiftCertificate, OrderEffect
from tests.helpers import load, uid


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


_EFFECTS = "SELECT effect_key FROM order_effect WHERE order_id = %s ORDER BY effect_key"


def effects(order_id):
    return [e for (e,) in db.execute_sql(_EFFECTS, (order_id,)).fetchall()]


def later_effect(uow, order_id, key):
    uow.queue("INSERT INTO order_effect (order_id, effect_key, outcome) VALUES (%s, %s, 'APPLIED')",
              (order_id, key))


def test_a_later_write_waits_for_the_end_of_the_transaction_and_commits_with_it():
    order = uid("o-")
    with UnitOfWork() as uow:
        later_effect(uow, order, "a")
        assert effects(order) == []  # not sent yet
        later_effect(uow, order, "b")
    assert effects(order) == ["a", "b"]


def test_a_later_write_that_fails_fails_the_transaction_and_rolls_everything_back():
    order = uid("o-")
    with pytest.raises(IntegrityError):
        with UnitOfWork() as uow:
            db.execute_sql("INSERT INTO order_effect (order_id, effect_key, outcome) VALUES (%s, 'x', 'APPLIED')",
                           (order,))
            later_effect(uow, order, "a")
            later_effect(uow, order, "a")  # unique (order_id, effect_key): fails at the end
    assert effects(order) == []
    with UnitOfWork() as uow:  # and the connection is usable afterwards
        later_effect(uow, order, "c")
    assert effects(order) == ["c"]


def test_a_transaction_that_fails_sends_none_of_its_later_writes():
    order = uid("o-")
    with pytest.raises(RuntimeError):
        with UnitOfWork() as uow:
            later_effect(uow, order, "a")
            raise RuntimeError("refused")
    assert effects(order) == []


def test_a_later_write_inside_a_savepoint_goes_with_the_savepoint():
    """An earlier inbox message handled in a savepoint that fails must take its recorded
    effects with it: a queued write would outlive the rollback and mark an undone effect done."""
    order = uid("o-")
    with UnitOfWork() as uow:
        later_effect(uow, order, "outer")
        with pytest.raises(RuntimeError):
            with UnitOfWork() as savepoint:  # nested: a savepoint
                later_effect(savepoint, order, "rolled-back")
                raise RuntimeError("the earlier message fails")
        with UnitOfWork() as savepoint:
            later_effect(savepoint, order, "kept")
    assert effects(order) == ["kept", "outer"]


def test_a_read_through_the_unit_of_work_sends_its_later_writes_first():
    order = uid("o-")
    with UnitOfWork() as uow:
        later_effect(uow, order, "a")
        assert [e for (e,) in uow.execute(_EFFECTS, (order,)).fetchall()] == ["a"]  # one round trip
        later_effect(uow, order, "b")
    assert effects(order) == ["a", "b"]


def test_a_joined_unit_of_work_writes_with_the_enclosing_one():
    order = uid("o-")
    with UnitOfWork() as uow:
        with UnitOfWork(savepoint=False) as joined:  # no savepoint: its writes are the enclosing one's
            later_effect(joined, order, "joined")
        assert effects(order) == []
        with pytest.raises(RuntimeError):  # a statement through a unit a savepoint is nested in
            with UnitOfWork():
                uow.execute(_EFFECTS, (order,))
    assert effects(order) == ["joined"]


def test_a_unit_of_work_that_refuses_after_commit_keeps_its_writes():
    order = uid("o-")
    with pytest.raises(DomainError) as refused:
        with UnitOfWork() as uow:
            later_effect(uow, order, "kept")
            uow.commit_then_refuse(DomainError("POOL_EMPTY", "no certificate available"))
    assert refused.value.code == "POOL_EMPTY" and effects(order) == ["kept"]


def test_a_lock_is_taken_once_per_transaction_and_again_after_its_savepoint_failed():
    order = uid("o-")
    sent = []
    with UnitOfWork() as uow:
        real = uow.execute
        uow.execute = lambda sql, params=(), **kw: sent.append(sql) or real(sql, params, **kw)
        uow.lock_order(order)
        uow.lock_order(order)  # held: not asked again
        assert len(sent) == 1
        with pytest.raises(RuntimeError):
            with UnitOfWork() as savepoint:
                savepoint.lock(locks.client_key(order))
                raise RuntimeError("rolled back, and its lock with it")
        assert not uow._scope.holds(locks.client_key(order))  # PostgreSQL released it too
        with UnitOfWork() as savepoint:
            savepoint.lock(locks.client_key(order))
        assert uow._scope.holds(locks.client_key(order))  # kept by the transaction from now on


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
                    with UnitOfWork() as uow:
                        later_effect(uow, order, f"k{i:02d}")
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
