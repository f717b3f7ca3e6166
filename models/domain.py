"""The business rules of gift certificates: statuses, the state machine, money, and the
certificate aggregate. Pure: standard library only, no I/O, no clock (``now`` is passed in).

Both the HTTP API and the actors reach these rules through ``models.messagebus`` and its handlers; nothing else
decides whether a transition or an amount is allowed. Methods change the aggregate and record
what happened (``events`` for the stream and the audit, ``ledger`` for the balance ledger);
the unit of work persists both in the same transaction as the change.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

# ---- errors ------------------------------------------------------------------------------

class DomainError(Exception):
    """A refused operation: ``code`` is the contract's error code (api/errors.py maps it to an
    HTTP status)."""

    def __init__(self, code: str, message: str, /, **details):  # details may hold a "code"
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


# ---- money -------------------------------------------------------------------------------

#: The contract's money format: a string with two decimals, at most 12 integer digits.
MONEY_PATTERN = r"^(0|[1-9][0-9]{0,11})\.[0-9]{2}$"
_MONEY_RE = re.compile(MONEY_PATTERN)
#: The same, above 0.00 (what :func:`positive_money` takes), for the API's documentation.
POSITIVE_MONEY_PATTERN = r"^(0\.(0[1-9]|[1-9][0-9])|[1-9][0-9]{0,11}\.[0-9]{2})$"
#: ISO 4217 alphabetic code.
CURRENCY_PATTERN = r"^[A-Z]{3}$"
#: A certificate code, as printed on the card.
CODE_PATTERN = r"^[A-Z0-9-]{6,32}$"
_CODE_RE = re.compile(CODE_PATTERN)
ZERO = Decimal("0.00")


def parse_money(value: object, name: str = "amount") -> Decimal:
    """Parse the contract's money string (``"1500.00"``) exactly; floats are refused."""
    if not isinstance(value, str) or not _MONEY_RE.fullmatch(value):
        raise DomainError("VALIDATION_ERROR", f"{name} must be a string like \"1500.00\"",
                          field=name)
    try:
        return Decimal(value)
    except InvalidOperation:  # pragma: no cover - the pattern already excludes it
        raise DomainError("VALIDATION_ERROR", f"{name} is not a number", field=name) from None


def positive_money(value: object, name: str = "amount") -> Decimal:
    amount = parse_money(value, name)
    if amount <= 0:
        raise DomainError("VALIDATION_ERROR", f"{name} must be greater than 0.00", field=name)
    return amount


def fmt_money(value: Decimal | None) -> str | None:
    """Format an amount as the contract's money string (``None`` stays ``None``)."""
    return None if value is None else f"{Decimal(value):.2f}"


def valid_code(code: object) -> bool:
    return isinstance(code, str) and bool(_CODE_RE.fullmatch(code))


def loadable_expiry(expires_at: datetime | None, now: datetime) -> bool:
    """A code goes into the pool with no ``expiresAt`` or one still ahead, never already expired."""
    return expires_at is None or expires_at > now


def reservation_lapsed(reserved_until: datetime | None, now: datetime, payment_seen: bool) -> bool:
    """A reservation goes back to the pool once its time is up, never after a payment was seen."""
    return reserved_until is not None and reserved_until <= now and not payment_seen


def issue_expiry(batch_expires_at: datetime | None, now: datetime, validity_days: int | None
                 ) -> datetime | None:
    """Where a sold certificate's ``expiresAt`` comes from: its batch's date, else
    ``CERTIFICATE_VALIDITY_DAYS`` from the sale (none: it never expires)."""
    if batch_expires_at is not None:
        return batch_expires_at
    return now + timedelta(days=validity_days) if validity_days else None


def notifies_buyer(kind: str, notify: bool = True) -> bool:
    """Only an electronic certificate's CVC is sent to the buyer; a physical card has it
    printed under its scratch panel."""
    return notify and kind == "ELECTRONIC"


def available_of(balance: Decimal, held: Decimal) -> Decimal:
    """What can still be spent: the balance less the active holds, never below zero."""
    return max(balance - held, ZERO)


# ---- statuses and the state machine -------------------------------------------------------

class Status(str, enum.Enum):
    AVAILABLE = "AVAILABLE"
    RESERVED = "RESERVED"
    ISSUED = "ISSUED"
    PARTIALLY_REDEEMED = "PARTIALLY_REDEEMED"
    REDEEMED = "REDEEMED"
    REFUND_PENDING = "REFUND_PENDING"
    REFUND_PENDING_DETAILS = "REFUND_PENDING_DETAILS"
    REFUNDED = "REFUNDED"
    LOCKED = "LOCKED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    def __str__(self) -> str:
        return self.value


S = Status


class HoldStatus(str, enum.Enum):
    """An authorization hold's life: ACTIVE until captured, voided or expired."""

    ACTIVE = "ACTIVE"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    EXPIRED = "EXPIRED"

    def __str__(self) -> str:
        return self.value


class NotificationStatus(str, enum.Enum):
    """The CVC notification of a sold electronic certificate (``notificationStatus``)."""

    REQUESTED = "NOTIFICATION_REQUESTED"
    SENT = "NOTIFICATION_SENT"
    FAILED = "NOTIFICATION_FAILED"

    def __str__(self) -> str:
        return self.value


class OrderStatus(str, enum.Enum):
    """A channel's order as its messages told it (``sales_order.status``)."""

    OPEN = "OPEN"
    PAID = "PAID"
    CANCELLED = "CANCELLED"
    REFUNDED = "REFUNDED"

    def __str__(self) -> str:
        return self.value


class EventType(str, enum.Enum):
    """Every ``eventType`` of GiftCertificates.Stream: the contract's closed list (a test
    checks it against the stream's schema). Adding an event type starts here."""

    RESERVE = "reserve"
    RELEASE = "release"
    ISSUE = "issue"
    ISSUE_BLOCKED = "issue.blocked"
    NOTIFICATION_REQUESTED = "notification.requested"
    NOTIFICATION_SENT = "notification.sent"
    NOTIFICATION_FAILED = "notification.failed"
    REDEEM_PARTIAL = "redeem.partial"
    REDEEM_FULL = "redeem.full"
    REFUND = "refund"
    REFUND_PENDING_DETAILS = "refund.pendingDetails"
    AUTHORIZATION_CREATED = "authorization.created"
    AUTHORIZATION_CAPTURED = "authorization.captured"
    AUTHORIZATION_VOIDED = "authorization.voided"
    AUTHORIZATION_EXPIRED = "authorization.expired"
    LOCK = "lock"
    UNLOCK = "unlock"
    CANCEL = "cancel"
    EXPIRE = "expire"
    ADJUST = "adjust"
    TRANSFER = "transfer"
    AUDIT = "audit"
    ERROR = "error"
    ALERT = "alert"

    def __str__(self) -> str:
        return self.value


E = EventType
#: Events that are not about one certificate's life and carry no ``sequence``.
UNSEQUENCED = frozenset({E.ISSUE_BLOCKED, E.ERROR, E.ALERT})
#: Events that move money: their payload's ``orderId`` is the operation's order and ``amount``
#: the operation's amount (contract section 4, example 21).
MONEY_MOVEMENTS = frozenset({E.REDEEM_PARTIAL, E.REDEEM_FULL, E.REFUND, E.AUTHORIZATION_CREATED,
                             E.AUTHORIZATION_CAPTURED, E.AUTHORIZATION_VOIDED,
                             E.AUTHORIZATION_EXPIRED, E.ADJUST})


def alert_key(payload: dict, subject: str | None = None) -> str:
    """The stream key of an ``error`` or ``alert`` (contract section 4, revision 3): the
    certificate it names (``certificateCode``), else the order it names (``orderId``), else the
    subject it is about (a pool alert: ``pool:<currency>/<kind>/<nominal>``). An alert about a
    certificate so lands in that certificate's partition, in order with its events."""
    return payload.get("certificateCode") or payload.get("orderId") or subject or ""
#: Statuses a sold certificate works in (lock and cancel apply to these).
WORKING = frozenset({S.ISSUED, S.PARTIALLY_REDEEMED, S.REDEEMED})
#: Statuses that can be redeemed or authorized.
REDEEMABLE = frozenset({S.ISSUED, S.PARTIALLY_REDEEMED})

#: The transition table: action -> statuses it may start from. Where an action's target
#: depends on the balance, the aggregate computes it (see ``Certificate._spent_status``).
ALLOWED_FROM: dict[str, frozenset[Status]] = {
    "reserve": frozenset({S.AVAILABLE}),
    "release": frozenset({S.RESERVED}),
    "issue": frozenset({S.RESERVED}),
    "authorize": REDEEMABLE,
    "capture": REDEEMABLE,
    "redeem": REDEEMABLE,
    "refund_credit": frozenset({S.PARTIALLY_REDEEMED, S.REDEEMED}),
    "refund_request": REDEEMABLE,
    "refund_details": frozenset({S.REFUND_PENDING}),
    "refund_confirm": frozenset({S.REFUND_PENDING, S.REFUND_PENDING_DETAILS}),
    "lock": WORKING,
    "unlock": frozenset({S.LOCKED}),
    "cancel": WORKING | {S.LOCKED},
    "expire": REDEEMABLE,
    "notify": WORKING,
    "adjust": WORKING,
    "transfer_out": REDEEMABLE | {S.LOCKED},
    "transfer_in": frozenset({S.AVAILABLE}),
}

#: Why support adjusts a balance (contract section 3, ``actions/adjust``).
ADJUST_REASONS = ("SUPPORT_CORRECTION", "COMPLIMENTARY", "DAMAGED_CARD", "FRAUD_RECOVERY", "OTHER")
#: Which way an adjustment moves the balance.
DIRECTIONS = ("CREDIT", "DEBIT")
#: An adjustment's life: applied at once, or pending until a second admin decides (or its
#: time is up).
ADJUSTMENT_STATUSES = ("PENDING_APPROVAL", "APPLIED", "REJECTED", "EXPIRED")
#: The lockReason of a certificate whose balance was transferred to another one.
TRANSFERRED = "TRANSFERRED"

CHANNELS = ("ONLINE_STORE", "POS")
SYSTEM = "SYSTEM"
KINDS = ("ELECTRONIC", "PHYSICAL")


# ---- what the aggregate records ------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """A change to publish on GiftCertificates.Stream and write to the audit trail."""

    type: EventType
    status: str
    payload: dict = field(default_factory=dict)
    correlation_id: str | None = None  # ties events of one operation (a transfer's two sides)


@dataclass(frozen=True)
class LedgerEntry:
    """A balance movement: positive credits, negative debits."""

    kind: str  # ISSUE | REDEEM | REFUND_CREDIT | PURCHASE_REFUND | ADJUST_* | TRANSFER_*
    amount: Decimal
    balance_after: Decimal
    authorization_id: str | None = None
    adjustment_id: str | None = None
    transfer_id: str | None = None


@dataclass
class Hold:
    """A two-phase authorization hold on part of a certificate's balance."""

    id: str
    amount: Decimal
    expires_at: datetime
    status: HoldStatus = HoldStatus.ACTIVE
    captured_amount: Decimal = ZERO
    channel: str | None = None  # the channel that placed it

    def lapsed(self, now: datetime) -> bool:
        """Its time is up (whatever its status)."""
        return self.expires_at <= now

    def overdue(self, now: datetime) -> bool:
        """An active hold past its ``expires_at`` no longer reserves money: it is to be expired."""
        return self.status == HoldStatus.ACTIVE and self.lapsed(now)

    def visible_to(self, channel: str | None) -> bool:
        """A channel sees (captures, voids) only its own holds; support and the system see all."""
        return channel is None or self.channel == channel


def needs_second_approval(amount: Decimal, limit: Decimal, moved_lately: Decimal = ZERO) -> bool:
    """Four eyes: an adjustment or a transfer waits for a second admin when it, together with
    what the certificate already moved without a second approver within
    ``ADJUST_APPROVAL_WINDOW`` (``moved_lately``, credits and debits alike), is above
    ``ADJUST_APPROVAL_LIMIT``. Splitting a large correction into small ones so gets nowhere."""
    return moved_lately + amount > limit


def same_person(a: str, b: str) -> bool:
    """Whether two admin identities (``ADMIN_IDENTITY_CLAIM``) name one person: compared
    case-insensitively, so "Alice" cannot approve what "alice" asked for. One person holding
    two identities is the identity provider's to prevent."""
    return a.casefold() == b.casefold()


class Approval:
    """The life of a support change that may wait for a second admin (four eyes): pending until
    ``expires_at``; then another person approves it (and only then is it carried out) or
    anyone rejects it. A subclass has ``id``, ``requested_by``, ``expires_at``, ``status`` and
    ``decided_by``; ``KIND`` names it in error codes (``ADJUSTMENT_EXPIRED``...)."""

    KIND = "ADJUSTMENT"
    id: str
    requested_by: str
    expires_at: datetime | None
    status: str
    decided_by: str | None

    def lapsed(self, now: datetime) -> bool:
        """Pending past ``ADJUST_APPROVAL_TTL``: it can no longer be decided."""
        return (self.status == "PENDING_APPROVAL" and self.expires_at is not None
                and self.expires_at <= now)

    def effective_status(self, now: datetime) -> str:
        """The status as support sees it: a pending one past its time is EXPIRED."""
        return "EXPIRED" if self.lapsed(now) else self.status

    def expire(self, now: datetime) -> bool:
        """Mark a lapsed pending one EXPIRED; True when it changed."""
        if self.lapsed(now):
            self.status = "EXPIRED"
            return True
        return False

    def _require_pending(self, now: datetime) -> None:
        name = self.KIND.lower()
        if self.lapsed(now):
            raise DomainError(f"{self.KIND}_EXPIRED", f"the {name} waited longer than "
                              "ADJUST_APPROVAL_TTL and can no longer be approved or rejected",
                              **{f"{name}Status": "EXPIRED"})
        if self.status != "PENDING_APPROVAL":
            raise DomainError(f"{self.KIND}_NOT_PENDING", f"the {name} is {self.status}",
                              **{f"{name}Status": self.status})

    def approve(self, by: str, now: datetime) -> None:
        """A second admin approves (the caller then carries it out)."""
        self._require_pending(now)
        if same_person(by, self.requested_by):
            raise DomainError("SELF_APPROVAL_FORBIDDEN", f"an {self.KIND.lower()} must be approved "
                              "by another admin than the one who asked for it",
                              requestedBy=self.requested_by)
        self.status, self.decided_by = "APPLIED", by

    def reject(self, by: str, now: datetime) -> None:
        """Refuse it (its author may withdraw it too: nothing moves)."""
        self._require_pending(now)
        self.status, self.decided_by = "REJECTED", by


@dataclass
class Adjustment(Approval):
    """A support correction of a certificate's balance, and who asked for and decided it
    (``requested_by`` and ``decided_by``: their identities)."""

    id: str
    direction: str  # CREDIT | DEBIT
    amount: Decimal
    reason: str
    requested_by: str
    expires_at: datetime | None  # None when applied at once
    status: str = "PENDING_APPROVAL"
    decided_by: str | None = None

    @classmethod
    def request(cls, adjustment_id: str, direction: str, amount: Decimal, reason: str, by: str,
                now: datetime, limit: Decimal, ttl: timedelta,
                moved_lately: Decimal = ZERO) -> "Adjustment":
        """A new adjustment: applied at once unless :func:`needs_second_approval`, else
        pending for ``ttl``."""
        if direction not in DIRECTIONS:
            raise DomainError("VALIDATION_ERROR", "direction must be CREDIT or DEBIT", field="direction")
        if reason not in ADJUST_REASONS:
            raise DomainError("VALIDATION_ERROR", "unknown adjustment reason", field="reason")
        if needs_second_approval(amount, limit, moved_lately):
            return cls(adjustment_id, direction, amount, reason, by, now + ttl)
        return cls(adjustment_id, direction, amount, reason, by, None, "APPLIED")

    @property
    def signed_amount(self) -> Decimal:
        return self.amount if self.direction == "CREDIT" else -self.amount


@dataclass
class PendingTransfer(Approval):
    """A transfer that waits for a second admin: the whole balance of the source as it was when
    asked (``amount``), onto ``to_code`` or, with None, the next certificate of the pool."""

    KIND = "TRANSFER"
    id: str
    amount: Decimal
    to_code: str | None
    reason: str
    requested_by: str
    expires_at: datetime | None
    status: str = "PENDING_APPROVAL"
    decided_by: str | None = None


def transfer_expiry(source_expires: datetime | None, target_batch_expires: datetime | None
                    ) -> datetime | None:
    """A transfer never extends validity: the target keeps the source's ``expiresAt``, or its
    own batch's if that is earlier (None when neither has one)."""
    limits = [t for t in (source_expires, target_batch_expires) if t is not None]
    return min(limits) if limits else None


# ---- the aggregate ----------------------------------------------------------------------

@dataclass
class Certificate:
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
            return S.REDEEMED
        if self.nominal is not None and self.balance >= self.nominal:
            return S.ISSUED
        return S.PARTIALLY_REDEEMED

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
    def reserve(self, nominal: Decimal, currency: str | None = None) -> None:
        """Reserve for an order line; an open-value code takes the requested nominal."""
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
        self.status = S.RESERVED
        self._record(E.RESERVE)

    def release(self, reason: str) -> None:
        """Give a reservation back to the pool (cancelled order or expired reservation)."""
        self._require("release")
        self.status = S.AVAILABLE
        if self.open_value:
            self.nominal = None
        self._record(E.RELEASE, reason=reason)

    def issue(self, expires_at: datetime | None, notify: bool = True) -> None:
        """Sell: the order is paid in full. Balance becomes the nominal; an electronic
        certificate's CVC notification is requested (the caller seals the CVC copy)."""
        self._require("issue")
        assert self.nominal is not None
        self.status = S.ISSUED
        self.expires_at = expires_at
        self.cvc_failed_attempts = 0
        self._move("ISSUE", self.nominal)
        self._record(E.ISSUE)
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
        self._record(E.AUTHORIZATION_CREATED, authorizationId=hold.id, amount=fmt_money(hold.amount))

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
        self._record(E.AUTHORIZATION_CAPTURED, authorizationId=hold.id, amount=fmt_money(amount),
                     released=fmt_money(hold.amount - amount))
        return amount

    def end_hold(self, hold: Hold, status: HoldStatus) -> None:
        """Void (``VOIDED``) or expire (``EXPIRED``) an active hold, releasing its amount."""
        if hold.status != HoldStatus.ACTIVE:
            raise DomainError("AUTHORIZATION_NOT_ACTIVE", f"authorization is {hold.status}",
                              authorizationStatus=hold.status)
        hold.status = status
        self.held -= hold.amount
        event = E.AUTHORIZATION_VOIDED if status == HoldStatus.VOIDED else E.AUTHORIZATION_EXPIRED
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
        self._record(E.REDEEM_FULL if self.status == S.REDEEMED else E.REDEEM_PARTIAL,
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
        self._record(E.REFUND, amount=fmt_money(credit), requested=fmt_money(amount))
        return credit

    def request_purchase_refund(self, requested: Decimal) -> Decimal:
        """The buyer returns the certificate: it can no longer be used. Returns the refundable sum."""
        if self.status == S.REDEEMED:
            raise DomainError("INVALID_STATE", "a fully redeemed certificate cannot be refunded",
                              status=self.status.value)
        self._require("refund_request")
        if self.held > 0:
            raise DomainError("INVALID_STATE", "certificate has active authorizations",
                              held=fmt_money(self.held))
        refundable = min(self.balance, requested)
        self.status = S.REFUND_PENDING
        self._record(E.REFUND, amount=fmt_money(refundable), refundableAmount=fmt_money(refundable))
        return refundable

    def refund_needs_details(self, reason: str | None) -> None:
        self._require("refund_details")
        self.status = S.REFUND_PENDING_DETAILS
        self._record(E.REFUND_PENDING_DETAILS, reason=reason)

    def confirm_purchase_refund(self) -> Decimal:
        """Payments gave the buyer's money back: the balance goes to 0.00. Returns the debit."""
        self._require("refund_confirm")
        refunded = self.balance
        if refunded > 0:
            self._move("PURCHASE_REFUND", -refunded)
        self.status = S.REFUNDED
        self._wipe_cvc_copy()
        self._record(E.REFUND, amount=fmt_money(refunded))
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
        self._record(E.ADJUST, direction=adjustment.direction, amount=fmt_money(adjustment.amount),
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
        self.status, self.status_before_lock, self.lock_reason = S.CANCELLED, None, TRANSFERRED
        self._wipe_cvc_copy()
        self._record(E.TRANSFER, toCode=to_code, amount=fmt_money(amount), reason=reason,
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
        self.status, self.expires_at = S.ISSUED, expires_at
        self._move("TRANSFER_IN", amount, transfer_id=transfer_id)
        self._record(E.TRANSFER, fromCode=from_code, amount=fmt_money(amount), reason=reason,
                     transferId=transfer_id, correlation_id=from_code)
        if notifies_buyer(self.kind):  # the buyer gets the target's CVC as for a sale
            self._request_notification()

    # -- support actions and time
    def lock(self, reason: str) -> None:
        self._require("lock")
        self.status_before_lock, self.status, self.lock_reason = self.status, S.LOCKED, reason
        self._record(E.LOCK, reason=reason)

    def unlock(self) -> None:
        self._require("unlock")
        assert self.status_before_lock is not None
        self.status, self.status_before_lock, self.lock_reason = self.status_before_lock, None, None
        self.cvc_failed_attempts = 0
        self._record(E.UNLOCK)

    def cancel(self, reason: str) -> None:
        """Annul (terminal). The caller ends the active holds first."""
        self._require("cancel")
        if self.held > 0:
            raise DomainError("INVALID_STATE", "certificate has active authorizations")
        self.status, self.status_before_lock, self.lock_reason = S.CANCELLED, None, None
        self._wipe_cvc_copy()
        self._record(E.CANCEL, reason=reason)

    def expire(self, now: datetime) -> None:
        self._require("expire")
        if self.expires_at is None or self.expires_at > now:
            raise DomainError("INVALID_STATE", "certificate has not expired")
        if self.held > 0:
            raise DomainError("INVALID_STATE", "certificate has active authorizations")
        self.status = S.EXPIRED
        self._wipe_cvc_copy()
        self._record(E.EXPIRE)

    # -- the CVC notification: request, disclose once, result, request again
    def _request_notification(self, channel: str = "SMS") -> None:
        self.notification, self.notification_channel = NotificationStatus.REQUESTED, channel
        self.cvc_copy = self.cvc_disclosable = True
        self._record(E.NOTIFICATION_REQUESTED, NotificationStatus.REQUESTED.value, notificationChannel=channel)

    def _wipe_cvc_copy(self) -> None:
        """A certificate that ends (cancel, expire, refund, transfer) keeps no CVC copy."""
        self.cvc_copy = self.cvc_disclosable = False

    @property
    def notification_due(self) -> bool:
        """A CVC notification is requested and its copy is kept: it is to be sent (by SMS or CRM)."""
        return self.notification == NotificationStatus.REQUESTED and self.cvc_copy

    def disclose_cvc(self, by: str, delivery: str) -> None:
        """CRM fetches the CVC: once per notification request, audited. ``delivery`` is the
        deployment's path (``NOTIFY_VIA``): under ``sms`` the service sends the CVC itself and the
        SMS is the only way it leaves, so nothing is ever disclosed (and nothing changes)."""
        if delivery == "sms":
            raise DomainError("NO_NOTIFICATION_PENDING", "the CVC is sent to the buyer by SMS "
                              "(NOTIFY_VIA=sms): it is never disclosed", notifyVia="sms")
        if not self.notification_due:
            raise DomainError("NO_NOTIFICATION_PENDING", "no CVC notification is pending for this "
                              "certificate", notificationStatus=self.notification and self.notification.value)
        if not self.cvc_disclosable:
            raise DomainError("CVC_ALREADY_DISCLOSED",
                              "the CVC was already disclosed for this notification request")
        self.cvc_disclosable = False
        self._record(E.AUDIT, action="CVC_DISCLOSED", by=by)

    def request_notification_again(self) -> None:
        """Support asks again after NOTIFICATION_FAILED: the same CVC (the buyer may already
        hold it), from the copy kept until delivery is confirmed."""
        self._require("notify")
        if self.notification != NotificationStatus.FAILED:
            raise DomainError("INVALID_STATE", "a notification can be requested again only after "
                              "NOTIFICATION_FAILED", notificationStatus=self.notification and self.notification.value)
        if not self.cvc_copy:
            raise DomainError("INVALID_STATE", "no CVC copy is kept to send again")
        self._request_notification(self.notification_channel or "SMS")

    def record_notification(self, delivered: bool, reason: str | None = None) -> bool:
        """CRM or the SMS sender reports the notification; a delivery wipes the CVC copy.
        A repeated report changes nothing (returns False)."""
        status = NotificationStatus.SENT if delivered else NotificationStatus.FAILED
        if self.notification == status:
            return False
        self.notification = status
        if delivered:
            self._wipe_cvc_copy()
        self._record(E.NOTIFICATION_SENT if delivered else E.NOTIFICATION_FAILED, status.value, reason=reason)
        return True

    def check_cvc(self, matches: bool, max_attempts: int) -> None:
        """Count a CVC check. The ``max_attempts``-th wrong one in a row locks the certificate.

        Raises CVC_MISMATCH for a wrong CVC; the caller commits the count (and the lock) anyway.
        """
        if matches:
            self.cvc_failed_attempts = 0
            return
        self.cvc_failed_attempts += 1
        if self.cvc_failed_attempts >= max_attempts and self.status in WORKING:
            self.lock("CVC_ATTEMPTS")
            self.events.append(Event(E.ALERT, "ALERT", {
                "code": "CVC_ATTEMPTS",
                "message": f"{self.cvc_failed_attempts} wrong CVC attempts in a row: certificate locked",
                "certificateCode": self.code}))
