"""Statuses, the closed list of stream event types and the state machine's transition table."""
from __future__ import annotations

import enum

# ---- statuses and the state machine -------------------------------------------------------

class Status(enum.StrEnum):
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




class HoldStatus(enum.StrEnum):
    """An authorization hold's life: ACTIVE until captured, voided or expired."""

    ACTIVE = "ACTIVE"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    EXPIRED = "EXPIRED"


class NotificationStatus(enum.StrEnum):
    """The CVC notification of a sold electronic certificate (``notificationStatus``)."""

    REQUESTED = "NOTIFICATION_REQUESTED"
    SENT = "NOTIFICATION_SENT"
    FAILED = "NOTIFICATION_FAILED"


class OrderStatus(enum.StrEnum):
    """A channel's order as its messages told it (``sales_order.status``)."""

    OPEN = "OPEN"
    PAID = "PAID"
    CANCELLED = "CANCELLED"
    REFUNDED = "REFUNDED"


class EventType(enum.StrEnum):
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


#: Statuses a sold certificate works in (lock and cancel apply to these).
WORKING = frozenset({Status.ISSUED, Status.PARTIALLY_REDEEMED, Status.REDEEMED})
#: Statuses that can be redeemed or authorized.
REDEEMABLE = frozenset({Status.ISSUED, Status.PARTIALLY_REDEEMED})

#: The transition table: action -> statuses it may start from. Where an action's target
#: depends on the balance, the aggregate computes it (see ``Certificate._spent_status``).
ALLOWED_FROM: dict[str, frozenset[Status]] = {
    "reserve": frozenset({Status.AVAILABLE}),
    "release": frozenset({Status.RESERVED}),
    "issue": frozenset({Status.RESERVED}),
    "authorize": REDEEMABLE,
    "capture": REDEEMABLE,
    "redeem": REDEEMABLE,
    "refund_credit": frozenset({Status.PARTIALLY_REDEEMED, Status.REDEEMED}),
    "refund_request": REDEEMABLE,
    "refund_details": frozenset({Status.REFUND_PENDING}),
    "refund_confirm": frozenset({Status.REFUND_PENDING, Status.REFUND_PENDING_DETAILS}),
    "lock": WORKING,
    "unlock": frozenset({Status.LOCKED}),
    "cancel": WORKING | {Status.LOCKED},
    "expire": REDEEMABLE,
    "notify": WORKING,
    "adjust": WORKING,
    "transfer_out": REDEEMABLE | {Status.LOCKED},
    "transfer_in": frozenset({Status.AVAILABLE}),
}

#: The lockReason of a certificate whose balance was transferred to another one.
TRANSFERRED = "TRANSFERRED"

CHANNELS = ("ONLINE_STORE", "POS")
SYSTEM = "SYSTEM"
KINDS = ("ELECTRONIC", "PHYSICAL")
