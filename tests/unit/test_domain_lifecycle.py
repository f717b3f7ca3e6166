"""The transition table, and the cancel, expire and purchase-refund lifecycles: pure rules, no
database."""
import datetime as dt
from decimal import Decimal

import pytest

from models.domain.certificate import Certificate
from models.domain.errors import DomainError
from models.domain.hold import Hold
from models.domain.states import ALLOWED_FROM, Status

NOW = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.timezone.utc)
D = Decimal
S = Status


def in_status(status: Status, balance: str = "600.00") -> Certificate:
    cert = Certificate("GC-LIFE-1", status, "RUB", False, nominal=D("1000.00"), balance=D(balance))
    if status == S.LOCKED:
        cert.status_before_lock = S.ISSUED
    if status in (S.AVAILABLE, S.RESERVED):  # unsold: no balance yet
        cert.balance = D("0.00")
    return cert


#: action -> a call that succeeds from every status the table allows (for a certificate with a
#: balance of 600.00 of 1,000.00, no holds, no expiry)
ACTIONS = {
    "reserve": lambda c: c.reserve(D("1000.00"), "RUB"),
    "release": lambda c: c.release("ORDER_CANCELLED"),
    "issue": lambda c: c.issue(None),
    "authorize": lambda c: c.authorize(Hold("h1", D("10.00"), NOW + dt.timedelta(minutes=5)), NOW),
    "redeem": lambda c: c.redeem(D("10.00"), NOW),
    "refund_credit": lambda c: c.refund_credit(D("10.00")),
    "refund_request": lambda c: c.request_purchase_refund(D("600.00")),
    "refund_details": lambda c: c.refund_needs_details("card expired"),
    "refund_confirm": lambda c: c.confirm_purchase_refund(),
    "lock": lambda c: c.lock("FRAUD_SUSPECTED"),
    "unlock": lambda c: c.unlock(),
    "cancel": lambda c: c.cancel("ANNULLED"),
    "transfer_out": lambda c: c.transferable(NOW),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("status", list(Status))
def test_the_transition_table_is_what_the_aggregate_allows(action, status):
    cert = in_status(status)
    if status in ALLOWED_FROM[action]:
        ACTIONS[action](cert)  # allowed: no refusal
    else:
        with pytest.raises(DomainError) as refused:
            ACTIONS[action](cert)
        assert refused.value.code in ("INVALID_STATE", "NOT_REDEEMABLE", "ALREADY_RESERVED")
        assert cert.status == status and not cert.ledger  # a refusal changes nothing


def test_the_terminal_statuses_allow_nothing_but_what_the_table_says():
    for status in (S.REFUNDED, S.CANCELLED, S.EXPIRED):
        assert [a for a, allowed in ALLOWED_FROM.items() if status in allowed] == []


# ---- cancel

def test_cancel_waits_for_the_holds_then_ends_everything():
    cert = in_status(S.PARTIALLY_REDEEMED)
    hold = Hold("h1", D("100.00"), NOW + dt.timedelta(minutes=5))
    cert.authorize(hold, NOW)
    with pytest.raises(DomainError):
        cert.cancel("ANNULLED")  # an active hold first
    cert.end_hold(hold, "VOIDED")
    cert.cancel("ANNULLED")
    assert (cert.status, cert.held, cert.events[-1].type, cert.events[-1].payload) == (
        S.CANCELLED, D("0.00"), "cancel", {"reason": "ANNULLED"})
    with pytest.raises(DomainError):
        cert.redeem(D("1.00"), NOW)


def test_a_locked_certificate_can_be_cancelled_and_forgets_its_lock():
    cert = in_status(S.ISSUED)
    cert.lock("FRAUD_SUSPECTED")
    cert.cancel("FRAUD")
    assert (cert.status, cert.lock_reason, cert.status_before_lock) == (S.CANCELLED, None, None)


# ---- expire

def test_expire_only_past_expires_at_and_without_holds():
    cert = in_status(S.ISSUED, "1000.00")
    cert.expires_at = NOW + dt.timedelta(seconds=1)
    with pytest.raises(DomainError):
        cert.expire(NOW)  # not yet
    cert.expires_at = NOW
    hold = Hold("h1", D("5.00"), NOW + dt.timedelta(minutes=5))
    cert.held = hold.amount
    with pytest.raises(DomainError):
        cert.expire(NOW)  # a hold is still active
    cert.held = D("0.00")
    cert.expire(NOW)
    assert cert.status == S.EXPIRED and cert.balance == D("1000.00")  # the balance stays, unusable
    with pytest.raises(DomainError) as refused:
        cert.redeem(D("1.00"), NOW)
    assert refused.value.code == "NOT_REDEEMABLE"


def test_a_certificate_past_its_date_is_not_redeemable_even_before_the_scheduler_expires_it():
    cert = in_status(S.ISSUED, "1000.00")
    cert.expires_at = NOW - dt.timedelta(minutes=1)
    with pytest.raises(DomainError) as refused:
        cert.ensure_usable(NOW)
    assert refused.value.details == {"status": "EXPIRED"}


# ---- purchase refund

def test_purchase_refund_request_details_then_confirm():
    cert = in_status(S.PARTIALLY_REDEEMED)
    assert cert.request_purchase_refund(D("1000.00")) == D("600.00")  # what is left, at most
    assert cert.status == S.REFUND_PENDING and cert.events[-1].payload["refundableAmount"] == "600.00"
    with pytest.raises(DomainError):
        cert.redeem(D("1.00"), NOW)  # no longer usable
    cert.refund_needs_details("card expired")
    assert cert.status == S.REFUND_PENDING_DETAILS
    assert cert.confirm_purchase_refund() == D("600.00")
    assert (cert.status, cert.balance) == (S.REFUNDED, D("0.00"))
    assert cert.ledger[-1].kind == "PURCHASE_REFUND" and cert.ledger[-1].amount == D("-600.00")


def test_no_purchase_refund_of_a_spent_certificate_or_one_with_holds():
    spent = in_status(S.REDEEMED, "0.00")
    with pytest.raises(DomainError) as refused:
        spent.request_purchase_refund(D("1000.00"))
    assert "fully redeemed" in refused.value.message
    held = in_status(S.ISSUED, "1000.00")
    held.authorize(Hold("h1", D("1.00"), NOW + dt.timedelta(minutes=5)), NOW)
    with pytest.raises(DomainError):
        held.request_purchase_refund(D("1000.00"))
