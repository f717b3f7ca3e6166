"""What the aggregate records: stream events (with the rules for their sequence and key) and
ledger entries."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from models.domain.states import EventType

#: Events that are not about one certificate's life and carry no ``sequence``.
UNSEQUENCED = frozenset({EventType.ISSUE_BLOCKED, EventType.ERROR, EventType.ALERT})
#: Events that move money: their payload's ``orderId`` is the operation's order and ``amount``
#: the operation's amount (contract section 4, example 21).
MONEY_MOVEMENTS = frozenset({EventType.REDEEM_PARTIAL, EventType.REDEEM_FULL, EventType.REFUND, EventType.AUTHORIZATION_CREATED,
                             EventType.AUTHORIZATION_CAPTURED, EventType.AUTHORIZATION_VOIDED,
                             EventType.AUTHORIZATION_EXPIRED, EventType.ADJUST})


def alert_key(payload: dict, subject: str | None = None) -> str:
    """The stream key of an ``error`` or ``alert`` (contract section 4, revision 3): the
    certificate it names (``certificateCode``), else the order it names (``orderId``), else the
    subject it is about (a pool alert: ``pool:<currency>/<kind>/<nominal>``). An alert about a
    certificate so lands in that certificate's partition, in order with its events."""
    return payload.get("certificateCode") or payload.get("orderId") or subject or ""

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

