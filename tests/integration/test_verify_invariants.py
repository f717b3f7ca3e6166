"""``verify`` against real PostgreSQL: a clean history of sales, redemptions, refunds, holds,
adjustments and transfers reports nothing; then each invariant (and the time-driven work) is
broken on purpose in one row, inside a transaction rolled back afterwards, and verify reports
exactly that. Other tests of this worker write rows too, so each check is scoped to ours."""
from __future__ import annotations

from decimal import Decimal

import pytest

from models.domain import commands
from models.service import messagebus
from models.store import cvc
from models.store.db import db
from tests.e2e import flow
from tests.helpers import load, uid, unique_currency
from tests.integration.verifykit import cert, corrupted, deliver, rules, sell
from workers.verify import Scope, verify

D = Decimal
SUPPORT = commands.Context(actor="support-1", request_id="req-verify")


@pytest.fixture(autouse=True)
def conn(stack):
    with db.connection_context():
        yield


def authorize(code: str, amount: str) -> str:
    row = cert(code)
    hold = messagebus.handle(commands.Authorize(code, "ONLINE_STORE", uid("o-"), D(amount), cvc.decrypt(row.cvc_encrypted)),
                      commands.Context(actor="web", channel="ONLINE_STORE"))
    return hold["authorizationId"]


class History:
    """One of everything the ledger knows, on certificates and orders of its own."""

    def __init__(self):
        # a sale, a redemption, a capture, a refund onto it, a support debit, and a hold left open
        self.code, self.order_id = sell("1500.00")
        messagebus.handle(commands.Redeem(self.code, D("300.00")), commands.Context(causation_id=flow.eid()))
        messagebus.handle(commands.Capture(authorize(self.code, "200.00")))
        messagebus.handle(commands.RefundToCertificate(self.code, D("150.00")), commands.Context(causation_id=flow.eid()))
        self.adjustment = messagebus.handle(svc_support().Adjust(self.code, "DEBIT", D("50.00"), "SUPPORT_CORRECTION"),
                                     SUPPORT)["adjustmentId"]
        self.hold = authorize(self.code, "100.00")
        # a transfer of a whole balance onto an open-value pool certificate
        self.source, self.source_order = sell("700.00")
        messagebus.handle(commands.Redeem(self.source, D("100.00")), commands.Context(causation_id=flow.eid()))
        self.target = load(1, None)[0]
        self.transfer = messagebus.handle(svc_support().Transfer(self.source, "DAMAGED_CARD", to=self.target),
                                   SUPPORT)["transferId"]
        # a paid order the pool could not serve: issue.blocked
        currency = unique_currency()
        self.blocked_order = uid("order-")
        deliver("order", flow.order(self.blocked_order, [{"lineId": "1", "type": "GIFT_CERTIFICATE",
                                                          "amount": "700.00"}], "700.00", currency=currency))
        deliver("payment", flow.payment(self.blocked_order, "700.00", currency=currency))
        assert cert(self.code).remaining_balance == D("1100.00")

    @property
    def scope(self) -> Scope:
        return Scope.of(codes=[self.code, self.source, self.target],
                        orders=[self.order_id, self.source_order, self.blocked_order])


def svc_support():
    from models.service.handlers import support

    return support


@pytest.fixture
def history(conn):
    return History()


def check(history, **kw) -> list[str]:
    return [str(v) for v in verify(db.connection(), history.scope, **kw)]


def op_id(code: str, kind: str, n: int = 0) -> int:
    return db.execute_sql("SELECT o.id FROM gift_certificate_operation o JOIN gift_certificate g"
                          " ON g.id = o.certificate_id WHERE g.code = %s AND o.kind = %s ORDER BY o.id"
                          " OFFSET %s LIMIT 1", (code, kind, n)).fetchone()[0]


# ---- clean ------------------------------------------------------------------------------

def test_a_clean_history_reports_nothing(history):
    assert check(history) == []
    row = cert(history.code)
    assert (row.status, row.remaining_balance) == ("PARTIALLY_REDEEMED", D("1100.00"))


# ---- invariant 1 ----------------------------------------------------------------------------

def test_two_certificates_for_one_order_line(history):
    with corrupted() as sql:
        sql("DROP INDEX gift_certificate_order_line_key")  # the schema forbids it: the check backs it
        sql("UPDATE gift_certificate SET channel = 'ONLINE_STORE', order_id = %s, line_id = '1'"
            " WHERE code = %s", (history.order_id, history.target))
        lines = check(history)
    assert (f"sold_once.order_line order {history.order_id} line 1: ONLINE_STORE: certificates "
            f"{history.code},{history.target}") in lines


def test_a_code_sold_to_another_order(history):
    with corrupted() as sql:
        sql("UPDATE gift_certificate_operation SET order_id = 'order-other' WHERE id = %s",
            (op_id(history.code, "ISSUE"),))
        lines = check(history)
    assert lines == [f"sold_once.code {history.code}: 1 ISSUE ledger row(s) for order(s) order-other, "
                     f"1 issue event(s); the certificate's order {history.order_id}"]


# ---- invariant 2 ----------------------------------------------------------------------------

def test_a_balance_changed_behind_the_ledger(history):
    with corrupted() as sql:
        sql("UPDATE gift_certificate SET remaining_balance = 1000.00 WHERE code = %s", (history.code,))
        lines = check(history)
    assert (f"balance.ledger {history.code}: remainingBalance 1000.00, sum of 5 ledger row(s) 1100.00, "
            "difference -100.00") in lines
    assert (f"balance.formula {history.code}: PARTIALLY_REDEEMED: nominal 1500.00 - redeemed 500.00 "
            "+ refunded 150.00 - refunded to buyer 0.00 + adjusted -50.00 - transferred out 0.00 = "
            "1100.00, remainingBalance 1000.00") in lines
    assert (f"stream.last_state {history.code}: PARTIALLY_REDEEMED 1000.00, last event 9 "
            "authorization.created says PARTIALLY_REDEEMED 1100.00") in lines
    assert rules(lines) == {"balance.ledger", "balance.formula", "stream.last_state"}


def test_a_ledger_row_deleted(history):
    with corrupted() as sql:
        redeem = op_id(history.code, "REDEEM")
        sql("DELETE FROM gift_certificate_operation WHERE id = %s", (redeem,))
        lines = check(history)
    assert (f"balance.ledger {history.code}: remainingBalance 1100.00, sum of 4 ledger row(s) 1400.00, "
            "difference -300.00") in lines
    assert any(l.startswith(f"balance.running {history.code}: ledger row ") and "running sum 1300.00" in l
               for l in lines), lines


def test_a_nominal_that_does_not_add_up(history):
    with corrupted() as sql:
        sql("UPDATE gift_certificate SET nominal = 1600.00 WHERE code = %s", (history.code,))
        lines = check(history)
    assert lines == [f"balance.formula {history.code}: PARTIALLY_REDEEMED: nominal 1600.00 - redeemed "
                     "500.00 + refunded 150.00 - refunded to buyer 0.00 + adjusted -50.00 - transferred "
                     "out 0.00 = 1200.00, remainingBalance 1100.00"]


def test_a_negative_balance_and_one_above_nominal(history):
    with corrupted() as sql:  # both forbidden by CHECKs too: dropped inside this transaction
        sql("ALTER TABLE gift_certificate DROP CONSTRAINT gift_certificate_remaining_balance_check,"
            " DROP CONSTRAINT balance_within_nominal")
        sql("UPDATE gift_certificate SET remaining_balance = -5.00 WHERE code = %s", (history.code,))
        sql("UPDATE gift_certificate SET remaining_balance = 800.00 WHERE code = %s", (history.target,))
        lines = check(history)
    assert f"balance.negative {history.code}: remainingBalance -5.00" in lines
    assert f"balance.above_nominal {history.target}: remainingBalance 800.00 > nominal 600.00" in lines


def test_an_adjustment_without_its_ledger_row(history):
    with corrupted() as sql:
        sql("DELETE FROM gift_certificate_operation WHERE adjustment_id = %s", (history.adjustment,))
        lines = check(history)
    assert (f"adjustment.ledger {history.adjustment}: {history.code} APPLIED DEBIT 50.00: 0 ledger "
            "row(s) summing none") in lines


def test_an_unbalanced_transfer(history):
    with corrupted() as sql:
        sql("UPDATE gift_certificate_operation SET amount = 500.00 WHERE transfer_id = %s"
            " AND kind = 'TRANSFER_IN'", (history.transfer,))
        lines = check(history)
    assert (f"transfer.unbalanced {history.transfer}: {history.source} -> {history.target} amount "
            "600.00: 2 ledger row(s), net -100.00, credit 500.00") in lines


# ---- invariant 3 ----------------------------------------------------------------------------

def test_holds_above_the_balance(history):
    with corrupted() as sql:
        sql("UPDATE authorization_hold SET amount = 1200.00 WHERE id = %s", (history.hold,))
        lines = check(history)
    assert lines == [f"available.negative {history.code}: remainingBalance 1100.00 - 1 active hold(s) "
                     "1200.00 = available -100.00"]


# ---- invariant 4 ----------------------------------------------------------------------------

def test_an_outbox_event_deleted_leaves_a_sequence_gap(history):
    with corrupted() as sql:
        sql("DELETE FROM outbox_event WHERE certificate_id = %s AND sequence = 2", (cert(history.code).id,))
        lines = check(history)
    assert (f"stream.sequence {history.code}: 8 event(s) with 8 sequence value(s) 1..9, "
            "stream_sequence 9, missing 2") in lines
    assert any(l.startswith(f"stream.ledger {history.code}: ledger row ") and " ISSUE 1500.00 " in l
               for l in lines), lines
    assert any(l.startswith(f"outbox.missing {history.code}: issue at ") for l in lines), lines


def test_an_audit_row_deleted(history):
    with corrupted() as sql:
        sql("DELETE FROM audit_log WHERE id = (SELECT min(id) FROM audit_log WHERE certificate_id = %s"
            " AND action = 'redeem.partial')", (cert(history.code).id,))
        lines = check(history)
    assert len(lines) == 1 and lines[0].startswith(f"audit.missing {history.code}: redeem.partial at ")
    assert lines[0].endswith(": 1 outbox event(s), 0 audit row(s)")


def test_a_status_changed_without_an_event(history):
    with corrupted() as sql:
        sql("UPDATE gift_certificate SET status = 'ISSUED' WHERE code = %s", (history.code,))
        lines = check(history)
    assert lines == [f"stream.last_state {history.code}: ISSUED 1100.00, last event 9 "
                     "authorization.created says PARTIALLY_REDEEMED 1100.00"]


# ---- invariant 5 ----------------------------------------------------------------------------

def test_a_paid_order_with_no_certificate(history):
    order_id = uid("order-")
    scope = Scope.of(orders=[order_id])
    with corrupted() as sql:
        sql("INSERT INTO sales_order (order_id, channel, currency, total, status, lines, tenders,"
            " created_at, updated_at) VALUES (%s, 'POS', 'RUB', 900.00, 'OPEN', %s::jsonb, '[]', now(), now())",
            (order_id, '[{"lineId": "7", "type": "GIFT_CERTIFICATE", "amount": "900.00"}]'))
        for payment_id, amount in (("pay-1", "900.00"), ("pay-1", "900.00")):  # a repeat counts once
            sql("INSERT INTO order_payment (event_id, order_id, payment_id, event_type, channel, amount,"
                " currency, method, payload, created_at) VALUES (%s, %s, %s, 'PAYMENT_CAPTURED', 'POS',"
                " %s, 'RUB', 'CARD', '{}', now())", (flow.eid(), order_id, payment_id, amount))
        lines = [str(v) for v in verify(db.connection(), scope)]
        assert lines == [f"order.not_issued order {order_id} line 7: POS paid 900.00 of total 900.00 RUB; "
                         "line nominal 900.00: no sold certificate, no blocked_issue"]
        # and the blocked order of the history is fine until its blocked_issue row goes
        sql("DELETE FROM blocked_issue WHERE order_id = %s", (history.blocked_order,))
        assert any(l.startswith(f"order.not_issued order {history.blocked_order} line 1:")
                   for l in check(history))


# ---- time-driven work ---------------------------------------------------------------------

def test_a_hold_left_active_past_its_expiry(history):
    with corrupted() as sql:
        sql("UPDATE authorization_hold SET expires_at = now() - interval '1 hour' WHERE id = %s",
            (history.hold,))
        lines = check(history)
    assert len(lines) == 1 and lines[0].startswith(f"hold.overdue {history.hold}: {history.code} ACTIVE "
                                                   "100.00, expired at ")
    assert lines[0].endswith("(allowed 11.0 s)")
    assert check(history, grace_ms=10_000_000) == []  # within the grace it is not yet a fault


def test_an_inbox_row_left_pending(history):
    event_id = flow.eid()
    with corrupted() as sql:
        sql("INSERT INTO inbox_message (event_id, topic, partition, \"offset\", payload, status,"
            " received_at) VALUES (%s, 'All_Payments', 0, 42, '{}', 'PENDING', now() - interval '5 minutes')",
            (event_id,))
        lines = [str(v) for v in verify(db.connection(), Scope.of(inbox=[event_id]))]
    assert len(lines) == 1 and lines[0].startswith(f"inbox.stuck inbox ")
    assert f" {event_id}: All_Payments PENDING for 30" in lines[0] and "(allowed 40.0 s)" in lines[0]
