"""The certificate aggregate: one gift certificate and the rules that change it. Methods change
it and record what happened (``events`` for the stream and the audit, ``ledger`` for the balance
ledger); the unit of work persists both in the same transaction as the change."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from models.domain.adjustment import Adjustment
from models.domain.errors import DomainError
from models.domain.events import Event, LedgerEntry
from models.domain.hold import Hold
from models.domain.money import ZERO, available_of, fmt_money
from models.domain.notification import NotificationLifecycle
from models.domain.policy import notifies_buyer
from models.domain.states import (
    ALLOWED_FROM,
    TRANSFERRED,
    EventType,
    HoldStatus,
    NotificationStatus,
    Status,
)


@dataclass
class Certificate(NotificationLifecycle):
    """One gift certificate and the rules that change it.

    ``held`` is the sum of the certificate's active holds; ``available`` never goes below
    zero and ``balance`` never below zero nor above ``nominal``.
    """

    code: str
    status: Status
    currency: str
    open_value: bool
    nominal: Decimal | None = None
    balance: Decimal = ZERO
    held: Decimal = ZERO
    status_before_lock: Status | None = None
    lock_reason: str | None = None
    expires_at: datetime | None = None
    cvc_failed_attempts: int = 0
    kind: str = "ELECTRONIC"
    # the CVC notification: its status, whether a sealed copy of the CVC is kept (until
    # delivery is confirmed or the certificate ends), and whether CRM may still fetch it once
    notification: NotificationStatus | None = None
    notification_channel: str | None = None
    cvc_copy: bool = False
    cvc_disclosable: bool = False
    # who it is reserved (then sold) for: the channel's order line, and until when it is held
    channel: str | None = None
    order_id: str | None = None
    line_id: str | None = None
    reserved_at: datetime | None = None
    reserved_until: datetime | None = None
    events: list[Event] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)

    # -- derived
    @property
    def available(self) -> Decimal:
        return available_of(self.balance, self.held)

    def _require(self, action: str, code: str = "INVALID_STATE") -> None:
        if self.status not in ALLOWED_FROM[action]:
            raise DomainError(code, f"cannot {action.replace('_', ' ')} a certificate in status "
                              f"{self.status.value}", status=self.status.value, action=action)

    def _require_currency(self, currency: str | None) -> None:
        if currency is not None and currency != self.currency:
            raise DomainError("CURRENCY_MISMATCH",
                              f"certificate is in {self.currency}, not {currency}",
                              expected=self.currency, got=currency)

    def ensure_usable(self, now: datetime) -> None:
        self._require("redeem", "NOT_REDEEMABLE")
        if self.expires_at is not None and self.expires_at <= now:
            raise DomainError("NOT_REDEEMABLE", "certificate has expired", status="EXPIRED")

    def _spent_status(self) -> Status:
        if self.balance == 0:
            return Status.REDEEMED
        if self.nominal is not None and self.balance >= self.nominal:
            return Status.ISSUED
        return Status.PARTIALLY_REDEEMED

    def _record(self, event_type: EventType, status: str | None = None, *,
                correlation_id: str | None = None, **payload) -> None:
        self.events.append(Event(event_type, status or self.status.value, payload, correlation_id))

    def _move(self, kind: str, amount: Decimal, authorization_id: str | None = None, *,
              adjustment_id: str | None = None, transfer_id: str | None = None) -> None:
        new_balance = self.balance + amount
        if new_balance < 0:  # the last line of defence; callers check first
            raise DomainError("INSUFFICIENT_FUNDS", "balance would go below zero")
        if self.nominal is not None and new_balance > self.nominal:
            raise DomainError("INVALID_STATE", "balance would exceed the nominal")
        self.balance = new_balance
        self.ledger.append(LedgerEntry(kind, amount, new_balance, authorization_id,
                                       adjustment_id, transfer_id))

    def _require_unexpired(self, now: datetime) -> None:
        if self.expires_at is not None and self.expires_at <= now:
            raise DomainError("INVALID_STATE", "certificate has expired", status="EXPIRED")

    # -- pool: reserve, release, issue
    def reserve(self, nominal: Decimal, currency: str | None = None, *, channel: str | None = None,
                order_id: str | None = None, line_id: str | None = None, now: datetime | None = None,
                until: datetime | None = None) -> None:
        """Reserve for an order line (``channel``, ``order_id``, ``line_id``) until ``until``; an
        open-value code takes the requested nominal."""
        self._require("reserve", "ALREADY_RESERVED")
        self._require_currency(currency)
        if nominal <= 0:
            raise DomainError("VALIDATION_ERROR", "nominal must be greater than 0.00", field="nominal")
        if self.open_value:
            self.nominal = nominal
        elif self.nominal != nominal:
            raise DomainError("NOMINAL_MISMATCH",
                              f"certificate has nominal {fmt_money(self.nominal)}, not {fmt_money(nominal)}",
                              nominal=fmt_money(self.nominal))
        self.status = Status.RESERVED
        self.channel, self.order_id, self.line_id = channel, order_id, line_id
        self.reserved_at, self.reserved_until = now, until
        self._record(EventType.RESERVE)

    def release(self, reason: str) -> None:
        """Give a reservation back to the pool (cancelled order or expired reservation): it
        keeps nothing of whom it was reserved for."""
        self._require("release")
        self.status = Status.AVAILABLE
        if self.open_value:
            self.nominal = None
        self.channel = self.order_id = self.line_id = self.reserved_at = self.reserved_until = None
        self._record(EventType.RELEASE, reason=reason)

    def issue(self, expires_at: datetime | None, notify: bool = True) -> None:
        """Sell: the order is paid in full. Balance becomes the nominal; an electronic
        certificate's CVC notification is requested (the caller seals the CVC copy)."""
        self._require("issue")
        assert self.nominal is not None
        self.status = Status.ISSUED
        self.reserved_until = None  # sold: the order line stays, the reservation's time is over
        self.expires_at = expires_at
        self.cvc_failed_attempts = 0
        self._move("ISSUE", self.nominal)
        self._record(EventType.ISSUE)
        if notifies_buyer(self.kind, notify):
            self._request_notification()

    # -- holds
    def authorize(self, hold: Hold, now: datetime, currency: str | None = None) -> None:
        """Place a hold of ``hold.amount`` on the available balance."""
        self.ensure_usable(now)
        self._require_currency(currency)
        if hold.amount <= 0:
            raise DomainError("VALIDATION_ERROR", "amount must be greater than 0.00", field="amount")
        if hold.amount > self.available:
            raise DomainError("INSUFFICIENT_FUNDS", "not enough available balance",
                              available=fmt_money(self.available), requested=fmt_money(hold.amount))
        self.held += hold.amount
        self._record(EventType.AUTHORIZATION_CREATED, authorizationId=hold.id, amount=fmt_money(hold.amount))

    def capture(self, hold: Hold, now: datetime, amount: Decimal | None = None,
                currency: str | None = None) -> Decimal:
        """Debit up to the held amount (default all) and release the rest. Returns the debit."""
        self._require_currency(currency)
        if hold.status != HoldStatus.ACTIVE:
            raise DomainError("AUTHORIZATION_NOT_ACTIVE", f"authorization is {hold.status}",
                              authorizationStatus=hold.status)
        if hold.lapsed(now):
            raise DomainError("AUTHORIZATION_EXPIRED", "authorization has expired")
        amount = hold.amount if amount is None else amount
        if amount <= 0:
            raise DomainError("VALIDATION_ERROR", "amount must be greater than 0.00", field="amount")
        if amount > hold.amount:
            raise DomainError("AMOUNT_EXCEEDS_HOLD", "capture exceeds the held amount",
                              held=fmt_money(hold.amount))
        self._require("capture", "NOT_REDEEMABLE")
        self.held -= hold.amount
        hold.status, hold.captured_amount = HoldStatus.CAPTURED, amount
        self._move("REDEEM", -amount, hold.id)
        self.status = self._spent_status()
        self._record(EventType.AUTHORIZATION_CAPTURED, authorizationId=hold.id, amount=fmt_money(amount),
                     released=fmt_money(hold.amount - amount))
        return amount

    def end_hold(self, hold: Hold, status: HoldStatus) -> None:
        """Void (``VOIDED``) or expire (``EXPIRED``) an active hold, releasing its amount."""
        if hold.status != HoldStatus.ACTIVE:
            raise DomainError("AUTHORIZATION_NOT_ACTIVE", f"authorization is {hold.status}",
                              authorizationStatus=hold.status)
        hold.status = status
        self.held -= hold.amount
        event = EventType.AUTHORIZATION_VOIDED if status == HoldStatus.VOIDED else EventType.AUTHORIZATION_EXPIRED
        self._record(event, authorizationId=hold.id, amount=fmt_money(hold.amount))

    # -- redemption and refunds
    def redeem(self, amount: Decimal, now: datetime, currency: str | None = None) -> None:
        """Debit without a hold (a tender confirmed by Payments)."""
        self.ensure_usable(now)
        self._require_currency(currency)
        if amount <= 0:
            raise DomainError("VALIDATION_ERROR", "amount must be greater than 0.00", field="amount")
        if amount > self.available:
            raise DomainError("INSUFFICIENT_FUNDS", "not enough available balance",
                              available=fmt_money(self.available), requested=fmt_money(amount))
        self._move("REDEEM", -amount)
        self.status = self._spent_status()
        self._record(EventType.REDEEM_FULL if self.status == Status.REDEEMED else EventType.REDEEM_PARTIAL,
                     amount=fmt_money(amount))

    def refund_credit(self, amount: Decimal, currency: str | None = None) -> Decimal:
        """Credit a refund back onto the certificate, never above the nominal. Returns the credit."""
        self._require("refund_credit")
        self._require_currency(currency)
        assert self.nominal is not None
        credit = min(amount, self.nominal - self.balance)
        if credit <= 0:
            raise DomainError("INVALID_STATE", "nothing to refund onto the certificate")
        self._move("REFUND_CREDIT", credit)
        self.status = self._spent_status()
        self._record(EventType.REFUND, amount=fmt_money(credit), requested=fmt_money(amount))
        return credit

    def request_purchase_refund(self, requested: Decimal) -> Decimal:
        """The buyer returns the certificate: it can no longer be used. Returns the refundable sum."""
        if self.status == Status.REDEEMED:
            raise DomainError("INVALID_STATE", "a fully redeemed certificate cannot be refunded",
                              status=self.status.value)
        self._require("refund_request")
        if self.held > 0:
            raise DomainError("INVALID_STATE", "certificate has active authorizations",
                              held=fmt_money(self.held))
        refundable = min(self.balance, requested)
        self.status = Status.REFUND_PENDING
        self._record(EventType.REFUND, amount=fmt_money(refundable), refundableAmount=fmt_money(refundable))
        return refundable

    def refund_needs_details(self, reason: str | None) -> None:
        self._require("refund_details")
        self.status = Status.REFUND_PENDING_DETAILS
        self._record(EventType.REFUND_PENDING_DETAILS, reason=reason)

    def confirm_purchase_refund(self) -> Decimal:
        """Payments gave the buyer's money back: the balance goes to 0.00. Returns the debit."""
        self._require("refund_confirm")
        refunded = self.balance
        if refunded > 0:
            self._move("PURCHASE_REFUND", -refunded)
        self.status = Status.REFUNDED
        self._wipe_cvc_copy()
        self._record(EventType.REFUND, amount=fmt_money(refunded))
        return refunded

    # -- support corrections: adjust and transfer
    def check_adjustment(self, direction: str, amount: Decimal, now: datetime) -> None:
        """Whether an adjustment could be applied now: a working, unexpired certificate; a
        credit never lifts the balance above nominal, a debit never takes more than available."""
        self._require("adjust")
        self._require_unexpired(now)
        if amount <= 0:
            raise DomainError("VALIDATION_ERROR", "amount must be greater than 0.00", field="amount")
        assert self.nominal is not None  # a sold certificate always has one
        if direction == "CREDIT":
            room = self.nominal - self.balance
            if amount > room:
                raise DomainError("EXCEEDS_NOMINAL", "a credit never lifts the balance above the "
                                  "nominal", nominal=fmt_money(self.nominal),
                                  remainingBalance=fmt_money(self.balance), maxCredit=fmt_money(room))
        elif direction == "DEBIT":
            if amount > self.available:
                raise DomainError("INSUFFICIENT_FUNDS", "a debit never takes more than available",
                                  available=fmt_money(self.available), requested=fmt_money(amount))
        else:
            raise DomainError("VALIDATION_ERROR", "direction must be CREDIT or DEBIT", field="direction")

    def adjust(self, adjustment: Adjustment, now: datetime) -> None:
        """Apply an APPLIED adjustment to the balance (re-checked: the balance may have moved
        since it was asked for); the status follows the new balance."""
        if adjustment.status != "APPLIED":
            raise DomainError("ADJUSTMENT_NOT_PENDING", "only an approved adjustment is applied")
        self.check_adjustment(adjustment.direction, adjustment.amount, now)
        kind = "ADJUST_CREDIT" if adjustment.direction == "CREDIT" else "ADJUST_DEBIT"
        self._move(kind, adjustment.signed_amount, adjustment_id=adjustment.id)
        self.status = self._spent_status()
        self._record(EventType.ADJUST, direction=adjustment.direction, amount=fmt_money(adjustment.amount),
                     reason=adjustment.reason, adjustmentId=adjustment.id,
                     requestedBy=adjustment.requested_by, approvedBy=adjustment.decided_by)

    def transferable(self, now: datetime, approved: Decimal | None = None) -> Decimal:
        """The amount a transfer would move (the whole balance), or why it cannot: not from a
        terminal or unsold status, not past ``expiresAt``, not while holds are active; nor, for
        a transfer a second admin ``approved`` for another amount, once the balance moved."""
        self._require("transfer_out")
        self._require_unexpired(now)
        if self.held > 0:
            raise DomainError("HOLDS_ACTIVE", "certificate has active authorization holds: "
                              "capture or void them first", held=fmt_money(self.held))
        if self.balance <= 0:
            raise DomainError("INVALID_STATE", "nothing to transfer: the balance is 0.00")
        if approved is not None and approved != self.balance:
            raise DomainError("BALANCE_CHANGED", "the balance changed since the transfer was asked "
                              "for: reject it and ask again", approved=fmt_money(approved),
                              remainingBalance=fmt_money(self.balance))
        return self.balance

    def transfer_out(self, to_code: str, reason: str, transfer_id: str, now: datetime) -> Decimal:
        """Move the whole remaining balance away: CANCELLED, lockReason TRANSFERRED, 0.00.
        Returns the amount moved."""
        amount = self.transferable(now)
        self._move("TRANSFER_OUT", -amount, transfer_id=transfer_id)
        self.status, self.status_before_lock, self.lock_reason = Status.CANCELLED, None, TRANSFERRED
        self._wipe_cvc_copy()
        self._record(EventType.TRANSFER, toCode=to_code, amount=fmt_money(amount), reason=reason,
                     transferId=transfer_id, correlation_id=self.code)
        return amount

    def check_transfer_in(self, currency: str, amount: Decimal, expires_at: datetime | None,
                          now: datetime) -> None:
        """Whether this certificate could receive a transfer of ``amount`` now: an AVAILABLE one
        of the same currency, showing that nominal (or open value), not expired."""
        self._require("transfer_in", "TARGET_NOT_AVAILABLE")
        self._require_currency(currency)
        if not self.open_value and self.nominal != amount:
            raise DomainError("NOMINAL_MISMATCH", f"target has nominal {fmt_money(self.nominal)}, "
                              f"not the {fmt_money(amount)} to transfer", nominal=fmt_money(self.nominal))
        if expires_at is not None and expires_at <= now:
            raise DomainError("TARGET_NOT_AVAILABLE", "the target has expired", to=self.code)

    def transfer_in(self, from_code: str, currency: str, amount: Decimal, reason: str,
                    transfer_id: str, expires_at: datetime | None, now: datetime) -> None:
        """Receive a transferred balance: a pool certificate becomes ISSUED with nominal =
        balance = ``amount`` (an open-value one takes it; a printed one must show it)."""
        self.check_transfer_in(currency, amount, expires_at, now)
        if self.open_value:
            self.nominal = amount
        self.status, self.expires_at = Status.ISSUED, expires_at
        self._move("TRANSFER_IN", amount, transfer_id=transfer_id)
        self._record(EventType.TRANSFER, fromCode=from_code, amount=fmt_money(amount), reason=reason,
                     transferId=transfer_id, correlation_id=from_code)
        if notifies_buyer(self.kind):  # the buyer gets the target's CVC as for a sale
            self._request_notification()

    # -- support actions and time
    def lock(self, reason: str) -> None:
        self._require("lock")
        self.status_before_lock, self.status, self.lock_reason = self.status, Status.LOCKED, reason
        self._record(EventType.LOCK, reason=reason)

    def unlock(self) -> None:
        self._require("unlock")
        assert self.status_before_lock is not None
        self.status, self.status_before_lock, self.lock_reason = self.status_before_lock, None, None
        self.cvc_failed_attempts = 0
        self._record(EventType.UNLOCK)

    def cancel(self, reason: str) -> None:
        """Annul (terminal). The caller ends the active holds first."""
        self._require("cancel")
        if self.held > 0:
            raise DomainError("INVALID_STATE", "certificate has active authorizations")
        self.status, self.status_before_lock, self.lock_reason = Status.CANCELLED, None, None
        self._wipe_cvc_copy()
        self._record(EventType.CANCEL, reason=reason)

    def expire(self, now: datetime) -> None:
        self._require("expire")
        if self.expires_at is None or self.expires_at > now:
            raise DomainError("INVALID_STATE", "certificate has not expired")
        if self.held > 0:
            raise DomainError("INVALID_STATE", "certificate has active authorizations")
        self.status = Status.EXPIRED
        self._wipe_cvc_copy()
        self._record(EventType.EXPIRE)
