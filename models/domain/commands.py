"""The commands of the service: what the HTTP views, the actors and the workers ask for, and the
:class:`Context` they are asked in.

Plain frozen data; :mod:`models.service.messagebus` maps each to its handler. Money is ``Decimal``,
validated by the caller (the API's schemas, the Kafka contracts).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from models.domain.states import SYSTEM

#: Contract names of the input topics, used as ``source`` of error and alert events.
SALES_ORDER, PAYMENTS, CLIENTS = "All_SalesOrder", "All_Payments", "All_Clients"


@dataclass(frozen=True)
class Context:
    """Who asked and why: carried into the audit trail and the stream envelope."""

    actor: str = SYSTEM               # client id (JWT sub) or SYSTEM
    channel: str | None = None        # the acting channel, if any
    request_id: str | None = None     # HTTP request id
    correlation_id: str | None = None # usually the orderId
    causation_id: str | None = None   # the input eventId or request id that caused this
    identity: str | None = None       # the admin's ADMIN_IDENTITY_CLAIM (four eyes); else actor

    @property
    def cause(self) -> str | None:
        return self.causation_id or self.request_id

    @property
    def person(self) -> str:
        """Who this is for the four-eyes rule: the identity claim, else the client id."""
        return self.identity or self.actor


#: The service acting on its own (the scheduler's rounds, tools).
SYSTEM_CONTEXT = Context()


# ---- the pool: batches, reservations, the sale, time
@dataclass(frozen=True)
class LoadBatch:
    batch_id: str
    kind: str
    currency: str
    certificates: tuple  # of {"code", "nominal"?, "expiresAt"?, "cvc"?} dicts, already validated
    dry_run: bool = False


@dataclass(frozen=True)
class Reserve:
    channel: str
    order_id: str
    line_id: str
    nominal: Decimal
    currency: str
    code: str | None = None


@dataclass(frozen=True)
class Release:
    code: str
    reason: str  # ORDER_CANCELLED | RESERVATION_EXPIRED | ...


@dataclass(frozen=True)
class ExpireReservation:
    """The scheduler's call for a reservation past ``reservedUntil``."""
    code: str


@dataclass(frozen=True)
class Issue:
    """Sell a reserved certificate: its order is paid in full."""
    code: str
    notify: bool = True


@dataclass(frozen=True)
class ExpireCertificate:
    code: str


# ---- authorization holds
@dataclass(frozen=True)
class Authorize:
    code: str
    channel: str
    order_id: str
    amount: Decimal
    cvc: str
    currency: str | None = None


@dataclass(frozen=True)
class Capture:
    authorization_id: str
    amount: Decimal | None = None
    channel: str | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Void:
    authorization_id: str
    channel: str | None = None
    expired: bool = False  # the scheduler ends holds past expiresAt


# ---- balance changes from the channels' events
@dataclass(frozen=True)
class Redeem:
    code: str
    amount: Decimal
    currency: str | None = None


@dataclass(frozen=True)
class RefundToCertificate:
    code: str
    amount: Decimal
    currency: str | None = None


@dataclass(frozen=True)
class RequestPurchaseRefund:
    code: str
    amount: Decimal


@dataclass(frozen=True)
class PurchaseRefundNeedsDetails:
    code: str
    reason: str | None = None


@dataclass(frozen=True)
class ConfirmPurchaseRefund:
    code: str


# ---- support
@dataclass(frozen=True)
class Lock:
    code: str
    reason: str


@dataclass(frozen=True)
class Unlock:
    code: str


@dataclass(frozen=True)
class Cancel:
    code: str
    reason: str


@dataclass(frozen=True)
class Adjust:
    """Correct a working certificate's balance (``direction`` CREDIT or DEBIT)."""
    code: str
    direction: str
    amount: Decimal
    reason: str
    comment: str | None = None


@dataclass(frozen=True)
class ApproveAdjustment:
    """A second admin (``ctx.person``) approves a pending adjustment: it is applied."""
    adjustment_id: str
    comment: str | None = None


@dataclass(frozen=True)
class RejectAdjustment:
    """An admin refuses (or its author withdraws) a pending adjustment: nothing moves."""
    adjustment_id: str
    comment: str | None = None


@dataclass(frozen=True)
class Transfer:
    """Move the whole remaining balance of ``code`` onto ``to`` (an AVAILABLE code), or onto
    the next electronic certificate of the pool when ``to`` is None; above the approval limit it
    waits for a second admin."""
    code: str
    reason: str
    to: str | None = None


@dataclass(frozen=True)
class ApproveTransfer:
    """A second admin (``ctx.person``) approves a pending transfer: it is carried out."""
    transfer_id: str
    comment: str | None = None


@dataclass(frozen=True)
class RejectTransfer:
    """An admin refuses (or its author withdraws) a pending transfer: nothing moves."""
    transfer_id: str
    comment: str | None = None


# ---- the CVC notification, alerts
@dataclass(frozen=True)
class DiscloseCvc:
    code: str


@dataclass(frozen=True)
class RequestNotification:
    code: str


@dataclass(frozen=True)
class NotificationResult:
    code: str
    delivered: bool
    reason: str | None = None


@dataclass(frozen=True)
class RaiseAlert:
    """An ``alert`` or ``error`` event on the stream (no state change)."""
    event_type: str  # alert | error
    code: str
    message: str
    source: str
    certificate_code: str | None = None
    order_id: str | None = None
    subject: str | None = None  # the record key when it names no certificate and no order
    details: dict | None = None  # more payload fields (never a secret)


@dataclass(frozen=True)
class TakeSmsLease:
    """An attempt to send the CVC SMS of one notification request takes its lease."""
    code: str
    notification_event_id: str
    lease_ms: int
    gateway_idempotent: bool  # the gateway drops a second submit with the same reference


@dataclass(frozen=True)
class SmsAttemptFailed:
    """The gateway failed this attempt (it will be retried): the lease is given back."""
    notification_event_id: str
    reason: str


@dataclass(frozen=True)
class RecordSmsOutcome:
    """What the SMS gateway said about the CVC SMS of one notification request."""
    code: str
    notification_event_id: str
    delivered: bool
    reason: str | None = None
    gateway_id: str | None = None
    alert: bool = False  # not delivered: support is alerted


# ---- the channels' messages (Kafka)
@dataclass(frozen=True)
class ProcessInboxMessage:
    """Apply one input message recorded by the pump (``inbox_message``), once, in its key's
    Kafka order."""
    inbox_id: int


@dataclass(frozen=True)
class RecordInboxFailure:
    """An attempt at an inbox message failed (not its database: the caller tells those apart);
    ``final``: no retry is left, the message goes to the DLQ."""
    inbox_id: int
    error: BaseException
    final: bool


@dataclass(frozen=True)
class OrderMessage:
    """An All_SalesOrder message, already validated against its schema."""
    message: dict


@dataclass(frozen=True)
class PaymentMessage:
    """An All_Payments message, already validated against its schema."""
    message: dict


@dataclass(frozen=True)
class ClientMessage:
    """An All_Clients message, already validated against its schema."""
    message: dict


@dataclass(frozen=True)
class ConfirmCapture:
    """A tender names an authorization captured through the API: confirm it, debit nothing."""
    code: str
    amount: Decimal
    authorization_id: str
    source: str = SALES_ORDER


@dataclass(frozen=True)
class ResolveBlockedIssues:
    """The pool was refilled: issue the paid order lines waiting for it, oldest first."""
    limit: int = 1000


@dataclass(frozen=True)
class ExpireOrderReservation:
    """The scheduler's call for a lapsed reservation, serialized with its order's payments."""
    code: str
    order_id: str | None


# ---- the scheduler's rounds (each finds what is due at ``now`` and runs its use case on it)
@dataclass(frozen=True)
class ExpireOverdueHolds:
    """Expire the authorization holds past their ``expiresAt`` (``authorization.expired``)."""
    now: datetime
    limit: int = 200


@dataclass(frozen=True)
class ReleaseLapsedReservations:
    """Release the reservations past ``reservedUntil`` whose order has no payment seen."""
    now: datetime
    limit: int = 200


@dataclass(frozen=True)
class ExpireDueCertificates:
    """Expire the sold certificates past their ``expiresAt`` (``expire``)."""
    now: datetime
    limit: int = 200


@dataclass(frozen=True)
class PurgeIdempotencyKeys:
    """Forget the ``Idempotency-Key`` answers older than their time to live."""
    now: datetime
