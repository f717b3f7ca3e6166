"""The pure rules of support's corrections (no I/O): adjustments (the nominal cap, the debit
bound, four eyes above the limit, expiry) and transfers (refusals, both sides, the expiry kept)."""
import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.domain.adjustment import (
    Adjustment,
    PendingTransfer,
    needs_second_approval,
    same_person,
    transfer_expiry,
)
from models.domain.certificate import Certificate
from models.domain.errors import DomainError
from models.domain.hold import Hold
from models.domain.states import Status

NOW = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.timezone.utc)
TTL = dt.timedelta(hours=24)
LIMIT = Decimal("5000.00")
D = Decimal
cents = st.integers(min_value=1, max_value=2_000_000).map(lambda c: Decimal(c) / 100)


def issued(nominal="1000.00", spent="0.00", code="GC-000001", currency="RUB") -> Certificate:
    cert = Certificate(code=code, status=Status.AVAILABLE, currency=currency, open_value=False,
                       nominal=D(nominal))
    cert.reserve(D(nominal), currency)
    cert.issue(None)
    if D(spent):
        cert.redeem(D(spent), NOW)
    cert.events.clear()
    return cert


def pool(code="GC-000002", nominal=None, currency="RUB") -> Certificate:
    return Certificate(code=code, status=Status.AVAILABLE, currency=currency,
                       open_value=nominal is None, nominal=D(nominal) if nominal else None)


def request(direction, amount, by="support-1", limit=LIMIT) -> Adjustment:
    return Adjustment.request("adj-1", direction, D(amount), "SUPPORT_CORRECTION", by, NOW, limit, TTL)


def refused(code: str, call) -> DomainError:
    with pytest.raises(DomainError) as err:
        call()
    assert err.value.code == code, err.value.message
    return err.value


# ---- adjustments --------------------------------------------------------------------------------

def test_a_credit_is_capped_at_the_nominal():
    cert = issued("1000.00", spent="300.00")
    error = refused("EXCEEDS_NOMINAL", lambda: cert.check_adjustment("CREDIT", D("300.01"), NOW))
    assert error.details["maxCredit"] == "300.00"
    cert.adjust(request("CREDIT", "300.00"), NOW)
    assert cert.balance == D("1000.00") and cert.status == Status.ISSUED
    assert [(e.kind, e.amount, e.adjustment_id) for e in cert.ledger][-1] == ("ADJUST_CREDIT", D("300.00"), "adj-1")


def test_a_debit_is_bounded_by_available_not_by_the_balance():
    cert = issued("1000.00")
    cert.authorize(Hold("h1", D("600.00"), NOW + dt.timedelta(minutes=15)), NOW)
    refused("INSUFFICIENT_FUNDS", lambda: cert.check_adjustment("DEBIT", D("400.01"), NOW))
    cert.adjust(request("DEBIT", "400.00"), NOW)
    assert cert.balance == D("600.00") and cert.available == D("0.00")
    assert cert.status == Status.PARTIALLY_REDEEMED
    assert cert.events[-1].type == "adjust" and cert.events[-1].payload["amount"] == "400.00"


def test_the_status_follows_the_new_balance():
    cert = issued("100.00")
    cert.adjust(request("DEBIT", "100.00"), NOW)
    assert cert.status == Status.REDEEMED
    cert.adjust(request("CREDIT", "40.00"), NOW)
    assert cert.status == Status.PARTIALLY_REDEEMED


@pytest.mark.parametrize("status", [Status.AVAILABLE, Status.RESERVED, Status.LOCKED, Status.CANCELLED,
                                    Status.REFUND_PENDING, Status.REFUNDED, Status.EXPIRED])
def test_only_a_working_certificate_is_adjusted(status):
    cert = issued("100.00", spent="10.00")
    cert.status = status
    refused("INVALID_STATE", lambda: cert.check_adjustment("CREDIT", D("1.00"), NOW))


def test_a_certificate_past_its_expiry_is_not_adjusted():
    cert = issued("100.00", spent="10.00")
    cert.expires_at = NOW
    refused("INVALID_STATE", lambda: cert.check_adjustment("CREDIT", D("1.00"), NOW))


def test_above_the_limit_it_waits_for_approval():
    assert not needs_second_approval(D("5000.00"), LIMIT)
    assert needs_second_approval(D("5000.01"), LIMIT)
    at_once, pending = request("DEBIT", "5000.00"), request("DEBIT", "5000.01")
    assert (at_once.status, at_once.expires_at) == ("APPLIED", None)
    assert (pending.status, pending.expires_at) == ("PENDING_APPROVAL", NOW + TTL)
    cert = issued("9000.00")
    refused("ADJUSTMENT_NOT_PENDING", lambda: cert.adjust(pending, NOW))  # not applied before approval
    assert cert.balance == D("9000.00") and cert.ledger[-1].kind == "ISSUE"


def test_four_eyes_the_author_never_approves():
    adjustment = request("CREDIT", "6000.00", by="support-1")
    error = refused("SELF_APPROVAL_FORBIDDEN", lambda: adjustment.approve("support-1", NOW))
    assert adjustment.status == "PENDING_APPROVAL"  # refused, and still waiting
    adjustment.approve("support-2", NOW)
    assert (adjustment.status, adjustment.decided_by) == ("APPLIED", "support-2")
    refused("ADJUSTMENT_NOT_PENDING", lambda: adjustment.approve("support-3", NOW))
    refused("ADJUSTMENT_NOT_PENDING", lambda: adjustment.reject("support-3", NOW))
    cert = issued("9000.00", spent="7000.00")
    cert.adjust(adjustment, NOW)
    assert cert.events[-1].payload["approvedBy"] == "support-2"
    assert cert.events[-1].payload["requestedBy"] == "support-1"


def test_the_author_may_withdraw_it():
    adjustment = request("CREDIT", "6000.00", by="support-1")
    adjustment.reject("support-1", NOW)
    assert adjustment.status == "REJECTED"


def test_a_pending_adjustment_expires_after_the_ttl():
    adjustment = request("DEBIT", "6000.00")
    just_before = NOW + TTL - dt.timedelta(microseconds=1)
    assert adjustment.effective_status(just_before) == "PENDING_APPROVAL"
    assert adjustment.effective_status(NOW + TTL) == "EXPIRED"
    for decide in (lambda: adjustment.approve("support-2", NOW + TTL),
                   lambda: adjustment.reject("support-2", NOW + TTL)):
        refused("ADJUSTMENT_EXPIRED", decide)
    assert adjustment.expire(NOW + TTL) and adjustment.status == "EXPIRED"
    assert not adjustment.expire(NOW + TTL)
    refused("ADJUSTMENT_NOT_PENDING", lambda: adjustment.approve("support-2", NOW))
    assert not request("DEBIT", "1.00").expire(NOW + 10 * TTL)  # applied ones never expire


def test_bad_directions_and_reasons_are_refused():
    refused("VALIDATION_ERROR", lambda: Adjustment.request("a", "UP", D("1.00"), "OTHER", "s", NOW, LIMIT, TTL))
    refused("VALIDATION_ERROR", lambda: Adjustment.request("a", "CREDIT", D("1.00"), "WHY", "s", NOW, LIMIT, TTL))
    refused("VALIDATION_ERROR", lambda: issued().check_adjustment("DEBIT", D("0.00"), NOW))


@given(st.lists(st.tuples(st.sampled_from(["CREDIT", "DEBIT"]), cents), max_size=25), cents)
def test_any_adjustments_keep_the_balance_within_zero_and_nominal(steps, nominal):
    cert = issued(f"{nominal:.2f}")
    for direction, amount in steps:
        try:
            cert.adjust(Adjustment.request("a", direction, amount, "OTHER", "s", NOW, D("1e12"), TTL), NOW)
        except DomainError as exc:
            assert exc.code in ("EXCEEDS_NOMINAL", "INSUFFICIENT_FUNDS")
        assert D("0.00") <= cert.balance <= cert.nominal
        assert cert.balance == sum((e.amount for e in cert.ledger), D("0.00"))


# ---- transfers ----------------------------------------------------------------------------------

def test_transfer_moves_the_whole_balance_and_each_side_records_the_other():
    source, target = issued("1000.00", spent="400.00"), pool()
    amount = source.transferable(NOW)
    target.transfer_in(source.code, source.currency, amount, "DAMAGED_CARD", "trf-1", None, NOW)
    assert source.transfer_out(target.code, "DAMAGED_CARD", "trf-1", NOW) == D("600.00")
    assert (source.status, source.lock_reason, source.balance) == (Status.CANCELLED, "TRANSFERRED", D("0.00"))
    assert (target.status, target.nominal, target.balance) == (Status.ISSUED, D("600.00"), D("600.00"))
    assert source.ledger[-1].kind == "TRANSFER_OUT" and target.ledger[-1].kind == "TRANSFER_IN"
    assert source.ledger[-1].amount + target.ledger[-1].amount == 0
    assert source.ledger[-1].transfer_id == target.ledger[-1].transfer_id == "trf-1"
    (out,), (into, requested) = source.events, target.events
    assert (out.type, out.status, out.payload["toCode"]) == ("transfer", "CANCELLED", target.code)
    assert (into.type, into.status, into.payload["fromCode"]) == ("transfer", "ISSUED", source.code)
    assert out.correlation_id == into.correlation_id == source.code
    # the buyer gets the target's CVC as for a sale; the source keeps no CVC copy
    assert (requested.type, target.notification, target.cvc_copy) == ("notification.requested",
                                                                      "NOTIFICATION_REQUESTED", True)
    assert not source.cvc_copy and not source.cvc_disclosable


def test_a_locked_certificate_can_be_transferred():
    source = issued("1000.00", spent="1.00")
    source.lock("DAMAGED")
    assert source.transferable(NOW) == D("999.00")
    source.transfer_out("GC-000002", "DAMAGED_CARD", "trf-1", NOW)
    assert source.status_before_lock is None and source.lock_reason == "TRANSFERRED"


def test_transfer_is_refused_while_holds_are_active():
    source = issued("1000.00")
    source.authorize(Hold("h1", D("1.00"), NOW + dt.timedelta(minutes=15)), NOW)
    error = refused("HOLDS_ACTIVE", lambda: source.transferable(NOW))
    assert error.details["held"] == "1.00" and source.status == Status.ISSUED


@pytest.mark.parametrize("status", [Status.CANCELLED, Status.REFUNDED, Status.EXPIRED, Status.REDEEMED,
                                    Status.AVAILABLE, Status.RESERVED, Status.REFUND_PENDING])
def test_transfer_is_refused_from_terminal_unsold_or_empty_statuses(status):
    source = issued("1000.00", spent="1.00")
    source.status = status
    refused("INVALID_STATE", lambda: source.transferable(NOW))


def test_transfer_is_refused_past_expiry_and_with_nothing_left():
    expired = issued("100.00")
    expired.expires_at = NOW
    refused("INVALID_STATE", lambda: expired.transferable(NOW))
    empty = issued("100.00", spent="100.00")
    empty.lock("X")
    refused("INVALID_STATE", lambda: empty.transferable(NOW))


def test_the_target_must_be_available_same_currency_and_show_the_amount():
    refused("TARGET_NOT_AVAILABLE", lambda: issued(code="GC-000009").transfer_in(
        "GC-000001", "RUB", D("10.00"), "R", "t", None, NOW))
    refused("CURRENCY_MISMATCH", lambda: pool(currency="EUR").transfer_in(
        "GC-000001", "RUB", D("10.00"), "R", "t", None, NOW))
    refused("NOMINAL_MISMATCH", lambda: pool(nominal="500.00").transfer_in(
        "GC-000001", "RUB", D("10.00"), "R", "t", None, NOW))
    printed = pool(nominal="10.00")
    printed.transfer_in("GC-000001", "RUB", D("10.00"), "R", "t", None, NOW)
    assert printed.status == Status.ISSUED
    refused("TARGET_NOT_AVAILABLE", lambda: pool().transfer_in(
        "GC-000001", "RUB", D("10.00"), "R", "t", NOW, NOW))


def test_a_transfer_never_extends_validity():
    later, sooner = NOW + dt.timedelta(days=30), NOW + dt.timedelta(days=3)
    assert transfer_expiry(None, None) is None
    assert transfer_expiry(later, None) == later
    assert transfer_expiry(None, sooner) == sooner
    assert transfer_expiry(later, sooner) == transfer_expiry(sooner, later) == sooner


@given(cents, cents)
def test_a_transfer_conserves_money(nominal, spent):
    source = issued(f"{nominal:.2f}")
    if spent < nominal:
        source.redeem(spent, NOW)
    before = source.balance
    target = pool()
    amount = source.transferable(NOW)
    target.transfer_in(source.code, "RUB", amount, "R", "t", None, NOW)
    source.transfer_out(target.code, "R", "t", NOW)
    assert source.balance + target.balance == before
    assert source.balance == sum((e.amount for e in source.ledger), D("0.00")) == 0
    assert target.balance == sum((e.amount for e in target.ledger), D("0.00")) == target.nominal



# ---- four eyes that cannot be walked around (issue 27) -------------------------------------------

@given(st.lists(cents, max_size=6), cents)
def test_what_moved_lately_counts_towards_the_limit(earlier, amount):
    # whatever moved without a second approver, a new move waits once the sum passes the limit
    moved = sum(earlier, D("0.00"))
    assert needs_second_approval(amount, LIMIT, moved) == (moved + amount > LIMIT)
    adjustment = Adjustment.request("adj-1", "CREDIT", amount, "OTHER", "a", NOW, LIMIT, TTL, moved)
    assert (adjustment.status == "PENDING_APPROVAL") == (moved + amount > LIMIT)


def test_four_credits_of_the_limit_are_one_applied_and_three_pending():
    moved, statuses = D("0.00"), []
    for _ in range(4):
        a = Adjustment.request("adj-1", "CREDIT", LIMIT, "OTHER", "support-1", NOW, LIMIT, TTL, moved)
        statuses.append(a.status)
        moved += a.amount if a.status == "APPLIED" else 0
    assert statuses == ["APPLIED", "PENDING_APPROVAL", "PENDING_APPROVAL", "PENDING_APPROVAL"]


@pytest.mark.parametrize("author, approver", [("Alice", "alice"), ("BOB@x.example", "bob@X.EXAMPLE"),
                                              ("straße", "STRASSE")])
def test_another_admin_is_another_person_in_any_case(author, approver):
    assert same_person(author, approver)
    adjustment = request("CREDIT", "6000.00", by=author)
    refused("SELF_APPROVAL_FORBIDDEN", lambda: adjustment.approve(approver, NOW))
    pending = PendingTransfer("trf-1", D("9000.00"), None, "R", author, NOW + TTL)
    refused("SELF_APPROVAL_FORBIDDEN", lambda: pending.approve(approver, NOW))
    pending.approve("carol", NOW)
    assert (pending.status, pending.decided_by) == ("APPLIED", "carol")
    refused("TRANSFER_NOT_PENDING", lambda: pending.reject("dave", NOW))


def test_a_pending_transfer_expires_and_is_then_refused():
    pending = PendingTransfer("trf-1", D("9000.00"), "PC-1", "R", "support-1", NOW + TTL)
    later = NOW + TTL
    assert pending.effective_status(later) == "EXPIRED" and pending.effective_status(NOW) == "PENDING_APPROVAL"
    error = refused("TRANSFER_EXPIRED", lambda: pending.approve("support-2", later))
    assert error.details == {"transferStatus": "EXPIRED"}


def test_an_approved_transfer_needs_the_balance_it_was_asked_for():
    cert = issued("9000.00", spent="100.00")
    error = refused("BALANCE_CHANGED", lambda: cert.transferable(NOW, approved=D("9000.00")))
    assert error.details == {"approved": "9000.00", "remainingBalance": "8900.00"}
    assert cert.transferable(NOW, approved=D("8900.00")) == D("8900.00")


def test_a_named_target_is_checked_without_being_changed():
    card = pool(nominal="500.00")
    refused("NOMINAL_MISMATCH", lambda: card.check_transfer_in("RUB", D("600.00"), None, NOW))
    card.check_transfer_in("RUB", D("500.00"), None, NOW)
    assert card.status == Status.AVAILABLE and card.ledger == [] and card.events == []
