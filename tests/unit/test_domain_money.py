"""Property-based tests of the money invariants of the pure domain (no I/O).

Any sequence of authorize / capture / void / expire / redeem / refund-to-certificate / adjust keeps
balance = sum of the ledger >= 0, balance <= nominal, held = sum of active holds and
available = balance - held >= 0. A refused operation is rolled back, as its transaction is.
"""
import copy
import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from models.domain.adjustment import Adjustment
from models.domain.certificate import Certificate
from models.domain.errors import DomainError
from models.domain.hold import Hold
from models.domain.money import fmt_money, parse_money, positive_money
from models.domain.policy import reservation_lapsed
from models.domain.states import REDEEMABLE, HoldStatus, Status

NOW = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.timezone.utc)
cents = st.integers(min_value=1, max_value=200_000).map(lambda c: Decimal(c) / 100)


def issued_certificate(nominal: Decimal) -> Certificate:
    cert = Certificate(code="PROP-0001", status=Status.AVAILABLE, currency="RUB", open_value=False,
                       nominal=nominal)
    cert.reserve(nominal, "RUB")
    cert.issue(None)
    return cert


class MoneyMachine(RuleBasedStateMachine):
    """Random use of one issued certificate, checking the invariants after every step."""

    @initialize(nominal=cents)
    def start(self, nominal):
        self.cert = issued_certificate(nominal)
        self.holds: list[Hold] = []
        self.counter = 0
        self.refused = 0

    def attempt(self, change):
        """Apply a change; a DomainError rolls the aggregate and holds back (as the UoW does)."""
        saved = copy.deepcopy((self.cert, self.holds))
        try:
            change()
        except DomainError as exc:
            assert exc.code in ("INSUFFICIENT_FUNDS", "NOT_REDEEMABLE", "AUTHORIZATION_NOT_ACTIVE",
                                "AUTHORIZATION_EXPIRED", "AMOUNT_EXCEEDS_HOLD", "INVALID_STATE",
                                "VALIDATION_ERROR", "CURRENCY_MISMATCH", "EXCEEDS_NOMINAL"), exc.code
            self.cert, self.holds = saved
            self.refused += 1

    @rule(amount=cents, minutes=st.integers(-5, 30))
    def authorize(self, amount, minutes):
        self.counter += 1
        hold = Hold(f"h{self.counter}", amount, NOW + dt.timedelta(minutes=minutes))

        def change():
            self.cert.authorize(hold, NOW)
            self.holds.append(hold)
        self.attempt(change)

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), partial=st.booleans())
    def capture(self, data, partial):
        hold = data.draw(st.sampled_from(self.holds))
        amount = None
        if partial:
            amount = data.draw(cents)
        self.attempt(lambda: self.cert.capture(hold, NOW, amount))

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), expire=st.booleans())
    def end(self, data, expire):
        hold = data.draw(st.sampled_from(self.holds))
        if expire and not hold.overdue(NOW):
            return
        self.attempt(lambda: self.cert.end_hold(hold, HoldStatus.EXPIRED if expire else HoldStatus.VOIDED))

    @rule(amount=cents)
    def redeem(self, amount):
        self.attempt(lambda: self.cert.redeem(amount, NOW))

    @rule(amount=cents)
    def refund_to_certificate(self, amount):
        self.attempt(lambda: self.cert.refund_credit(amount))

    @rule(direction=st.sampled_from(["CREDIT", "DEBIT"]), amount=cents)
    def adjust(self, direction, amount):
        self.counter += 1
        adjustment = Adjustment.request(f"adj-{self.counter}", direction, amount, "OTHER", "support",
                                        NOW, Decimal("1e12"), dt.timedelta(hours=24))
        self.attempt(lambda: self.cert.adjust(adjustment, NOW))

    @rule(currency=st.sampled_from(["USD", "EUR"]), amount=cents)
    def other_currency(self, currency, amount):
        before = self.cert.balance
        self.attempt(lambda: self.cert.redeem(amount, NOW, currency))
        assert self.cert.balance == before

    @rule()
    def lock_and_unlock(self):
        if self.cert.status in REDEEMABLE or self.cert.status == Status.REDEEMED:
            before = self.cert.status
            self.cert.lock("CHECK")
            self.attempt(lambda: self.cert.redeem(Decimal("0.01"), NOW))
            self.cert.unlock()
            assert self.cert.status == before

    @invariant()
    def balance_is_the_sum_of_the_ledger(self):
        assert self.cert.balance == sum((e.amount for e in self.cert.ledger), Decimal("0.00"))
        running = Decimal("0.00")
        for entry in self.cert.ledger:
            running += entry.amount
            assert entry.balance_after == running

    @invariant()
    def balance_within_zero_and_nominal(self):
        assert Decimal("0.00") <= self.cert.balance <= self.cert.nominal

    @invariant()
    def available_never_negative_and_held_is_the_active_holds(self):
        active = sum((h.amount for h in self.holds if h.status == "ACTIVE"), Decimal("0.00"))
        assert self.cert.held == active
        assert self.cert.available == self.cert.balance - active >= 0

    @invariant()
    def captured_never_more_than_held(self):
        for h in self.holds:
            assert h.captured_amount <= h.amount
            assert (h.status == "CAPTURED") == (h.captured_amount > 0)

    @invariant()
    def status_follows_the_balance(self):
        if self.cert.status == Status.REDEEMED:
            assert self.cert.balance == 0
        if self.cert.status == Status.ISSUED:
            assert self.cert.balance == self.cert.nominal
        if self.cert.status == Status.PARTIALLY_REDEEMED:
            assert 0 < self.cert.balance < self.cert.nominal


MoneyMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestMoney = MoneyMachine.TestCase


@given(st.text(max_size=20) | st.integers() | st.floats(allow_nan=True) | st.none())
def test_parse_money_accepts_only_the_contract_string(value):
    if isinstance(value, str):
        try:
            amount = parse_money(value)
        except DomainError as exc:
            assert exc.code == "VALIDATION_ERROR"
        else:
            assert fmt_money(amount) == value
    else:
        with pytest.raises(DomainError):
            parse_money(value)


@given(st.integers(min_value=0, max_value=10**14 - 1))
def test_money_round_trips_exactly(c):
    text = fmt_money(Decimal(c) / 100)
    assert parse_money(text) == Decimal(c) / 100
    if c == 0:
        with pytest.raises(DomainError):
            positive_money(text)
    else:
        assert positive_money(text) > 0


@given(st.lists(cents, max_size=20), cents)
def test_holds_never_exceed_the_balance(amounts, nominal):
    cert = issued_certificate(nominal)
    placed = Decimal("0.00")
    for i, amount in enumerate(amounts):
        try:
            cert.authorize(Hold(f"h{i}", amount, NOW + dt.timedelta(minutes=15)), NOW)
            placed += amount
        except DomainError as exc:
            assert exc.code == "INSUFFICIENT_FUNDS" and amount > cert.available
    assert placed == cert.held <= cert.balance == nominal


@given(st.booleans(), st.integers(-60, 60))
def test_reservation_lapses_only_without_payment(paid, minutes):
    until = NOW + dt.timedelta(minutes=minutes)
    assert reservation_lapsed(until, NOW, paid) == (not paid and minutes <= 0)
    assert reservation_lapsed(None, NOW, False) is False


def test_refund_to_certificate_is_capped_at_nominal():
    cert = issued_certificate(Decimal("100.00"))
    cert.redeem(Decimal("30.00"), NOW)
    assert cert.refund_credit(Decimal("50.00")) == Decimal("30.00")
    assert cert.balance == Decimal("100.00") and cert.status == Status.ISSUED
    with pytest.raises(DomainError) as err:
        cert.refund_credit(Decimal("1.00"))
    assert err.value.code == "INVALID_STATE"


def test_capture_refuses_another_currency_before_touching_the_hold():
    cert = issued_certificate(Decimal("100.00"))
    hold = Hold("h1", Decimal("10.00"), NOW + dt.timedelta(minutes=1))
    cert.authorize(hold, NOW)
    with pytest.raises(DomainError) as err:
        cert.capture(hold, NOW, None, "USD")
    assert err.value.code == "CURRENCY_MISMATCH" and hold.status == "ACTIVE" and cert.held == Decimal("10.00")
