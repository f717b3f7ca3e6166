"""The schema and its invariants, enforced by PostgreSQL itself (not only by the domain code)."""
import re
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest

from models.store.db import MIGRATIONS_DIR, db, migrate, migration_status
from tests.helpers import uid, unique_code

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cur(stack):
    """A raw psycopg2 cursor in autocommit mode: each statement stands alone."""
    conn = psycopg2.connect(stack["DATABASE_URL"])
    conn.autocommit = True
    with conn.cursor() as c:
        yield c
    conn.close()


def insert_batch(cur, batch_id=None):
    batch_id = batch_id or uid("b-")
    cur.execute("INSERT INTO certificate_batch (batch_id, kind, currency, loaded_by) "
                "VALUES (%s, 'ELECTRONIC', 'RUB', 'test')", (batch_id,))
    return batch_id


def insert_cert(cur, batch_id, code=None, **cols):
    values = {"code": code or unique_code(), "batch_id": batch_id, "kind": "ELECTRONIC",
              "currency": "RUB", "open_value": False, "nominal": Decimal("1000.00"),
              "status": "AVAILABLE", **cols}
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    cur.execute(f"INSERT INTO gift_certificate ({names}) VALUES ({marks}) RETURNING id",
                list(values.values()))
    return cur.fetchone()[0]


def test_migrate_is_safe_to_run_twice_and_records_history(stack):
    assert migrate() == []
    with db.connection_context():
        status = dict(migration_status())
    files = sorted(p.stem for p in MIGRATIONS_DIR.glob("[0-9]*.py"))
    assert sorted(status) == files and all(status.values())


def test_a_duplicate_code_is_refused_by_the_database(cur):
    batch = insert_batch(cur)
    code = unique_code()
    insert_cert(cur, batch, code)
    with pytest.raises(psycopg2.errors.UniqueViolation):
        insert_cert(cur, batch, code)


def test_a_negative_balance_is_refused_by_the_database(cur):
    batch = insert_batch(cur)
    cert = insert_cert(cur, batch, status="ISSUED", order_id=uid(), line_id="1", channel="POS",
                       issued_at="2026-11-22T10:00:00Z", remaining_balance=Decimal("10.00"))
    with pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute("UPDATE gift_certificate SET remaining_balance = -0.01 WHERE id = %s", (cert,))
    with pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute("INSERT INTO gift_certificate_operation (certificate_id, kind, amount, balance_after,"
                    " currency, op_key) VALUES (%s, 'REDEEM', -20.00, -10.00, 'RUB', %s)", (cert, uid()))


def test_a_balance_above_the_nominal_is_refused(cur):
    batch = insert_batch(cur)
    with pytest.raises(psycopg2.errors.CheckViolation):
        insert_cert(cur, batch, status="ISSUED", order_id=uid(), line_id="1", channel="POS",
                    issued_at="2026-11-22T10:00:00Z", remaining_balance=Decimal("1000.01"))


def test_a_second_reservation_for_one_order_line_is_refused(cur):
    batch = insert_batch(cur)
    order = uid("order-")
    insert_cert(cur, batch, status="RESERVED", channel="ONLINE_STORE", order_id=order, line_id="1")
    with pytest.raises(psycopg2.errors.UniqueViolation):
        insert_cert(cur, batch, status="RESERVED", channel="ONLINE_STORE", order_id=order, line_id="1")
    # the same line id in another order is fine
    insert_cert(cur, batch, status="RESERVED", channel="ONLINE_STORE", order_id=order + "-b", line_id="1")


def test_a_sold_code_cannot_go_back_to_the_pool(cur):
    batch = insert_batch(cur)
    cert = insert_cert(cur, batch, status="ISSUED", order_id=uid(), line_id="1", channel="POS",
                       issued_at="2026-11-22T10:00:00Z", remaining_balance=Decimal("1000.00"))
    with pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute("UPDATE gift_certificate SET status = 'AVAILABLE', order_id = NULL, "
                    "remaining_balance = 0 WHERE id = %s", (cert,))


def test_ledger_rows_apply_once_and_keep_their_sign(cur):
    batch = insert_batch(cur)
    cert = insert_cert(cur, batch, status="ISSUED", order_id=uid(), line_id="1", channel="POS",
                       issued_at="2026-11-22T10:00:00Z", remaining_balance=Decimal("1000.00"))
    key = uid("op-")
    sql = ("INSERT INTO gift_certificate_operation (certificate_id, kind, amount, balance_after, "
           "currency, op_key) VALUES (%s, %s, %s, %s, 'RUB', %s)")
    cur.execute(sql, (cert, "REDEEM", Decimal("-1.00"), Decimal("999.00"), key))
    with pytest.raises(psycopg2.errors.UniqueViolation):
        cur.execute(sql, (cert, "REDEEM", Decimal("-1.00"), Decimal("998.00"), key))
    with pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute(sql, (cert, "REDEEM", Decimal("1.00"), Decimal("999.00"), uid()))


def test_holds_and_amounts_are_never_negative_and_codes_well_formed(cur):
    batch = insert_batch(cur)
    cert = insert_cert(cur, batch)
    with pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute("INSERT INTO authorization_hold (id, certificate_id, channel, client_id, order_id,"
                    " amount, currency, status, expires_at) VALUES (%s, %s, 'POS', 'c', 'o', -5.00,"
                    " 'RUB', 'ACTIVE', now())", (uid(), cert))
    with pytest.raises(psycopg2.errors.CheckViolation):
        insert_cert(cur, batch, code="bad code!")
    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        insert_cert(cur, "no-such-batch")


def test_stream_sequence_is_unique_per_certificate(cur):
    batch = insert_batch(cur)
    cert = insert_cert(cur, batch)
    sql = ("INSERT INTO outbox_event (event_id, message_key, event_type, channel, certificate_id, "
           "sequence, envelope) VALUES (gen_random_uuid(), 'k', 'reserve', 'POS', %s, 1, '{}')")
    cur.execute(sql, (cert,))
    with pytest.raises(psycopg2.errors.UniqueViolation):
        cur.execute(sql, (cert,))


def erd_tables() -> set[str]:
    text = (ROOT / "docs" / "erd.md").read_text()
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    return set(re.findall(r"^\s{4}([a-z_]+) \{", block, re.M))


def test_the_er_diagram_matches_the_migrated_schema(cur):
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_type = 'BASE TABLE' AND table_name <> 'schema_migration'")
    actual = {r[0] for r in cur.fetchall()}
    drawn = erd_tables()
    assert drawn, "no entity found in docs/erd.md"
    assert drawn - actual == set(), "drawn in docs/erd.md but missing in the database"
    assert actual - drawn == set(), "in the database but not drawn in docs/erd.md"


def test_four_eyes_and_transfer_rows_are_enforced_by_the_database(cur):
    batch = insert_batch(cur)
    cert = insert_cert(cur, batch, status="ISSUED", remaining_balance=Decimal("1000.00"),
                       order_id=uid("o-"), line_id="1", channel="POS")
    adjustment = ("INSERT INTO balance_adjustment (id, certificate_id, direction, amount, currency, reason,"
                  " needs_approval, status, requested_by, requested_identity, requested_at, expires_at,"
                  " decided_by, decided_identity, decided_at)"
                  " VALUES (%s, %s, 'DEBIT', 6000.00, 'RUB', 'OTHER', true, 'APPLIED', 'support-1', 'Alice',"
                  " now(), now(), 'support-2', %s, now())")
    # an adjustment that needed approval, approved by its own author (in any case): refused
    for same in ("Alice", "alice", "ALICE"):
        with pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute(adjustment, (uid("adj-"), cert, same))
    cur.execute(adjustment, (uid("adj-"), cert, "bob"))
    # likewise a transfer that waited for a second admin
    request = ("INSERT INTO transfer_request (id, from_certificate_id, amount, currency, reason, status,"
               " requested_by, requested_identity, requested_at, expires_at, decided_by, decided_identity,"
               " decided_at) VALUES (%s, %s, 6000.00, 'RUB', 'R', 'APPLIED', 'support-1', 'Alice', now(),"
               " now(), 'support-2', %s, now())")
    with pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute(request, (uid("trf-"), cert, "aLiCe"))
    cur.execute(request, (uid("trf-"), cert, "bob"))
    # a transfer row with the wrong sign, or without its transfer: refused
    op = ("INSERT INTO gift_certificate_operation (certificate_id, kind, amount, balance_after, currency,"
          " op_key, transfer_id) VALUES (%s, %s, %s, 0, 'RUB', %s, %s)")
    with pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute(op, (cert, "TRANSFER_IN", Decimal("-1.00"), uid(), None))
    with pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute(op, (cert, "TRANSFER_OUT", Decimal("-1.00"), uid(), None))
    # a certificate gives its balance away once
    other, third = insert_cert(cur, batch), insert_cert(cur, batch)
    transfer = ("INSERT INTO certificate_transfer (id, from_certificate_id, to_certificate_id, amount,"
                " currency, reason, actor, created_at) VALUES (%s, %s, %s, 1000.00, 'RUB', 'R', 'a', now())")
    made = uid("trf-")
    cur.execute(transfer, (made, cert, other))
    with pytest.raises(psycopg2.errors.UniqueViolation):
        cur.execute(transfer, (uid("trf-"), cert, third))
    cur.execute("DELETE FROM certificate_transfer WHERE id = %s", (made,))  # no ledger rows: not a real one
