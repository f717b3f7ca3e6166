"""The channels' order as its messages tell it: the ``sales_order`` record and how each
All_SalesOrder message merges into it, its lines, tenders and refunds, and its payments
(All_Payments). Plain data; :mod:`models.domain.correlation` decides what they call for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from models.domain.states import OrderStatus

GC = "GIFT_CERTIFICATE"
CAPTURED, AUTHORIZED = "PAYMENT_CAPTURED", "PAYMENT_AUTHORIZED"
REFUNDED, REFUND_FAILED = "PAYMENT_REFUNDED", "REFUND_FAILED"
#: Order event types carrying the order's content (the latest by ``occurredAt`` wins).
SNAPSHOT_TYPES = frozenset({"ORDER_CREATED", "ORDER_UPDATED"})
CANCELLED_TYPE, REFUNDED_TYPE = "ORDER_CANCELLED", "ORDER_REFUNDED"


@dataclass
class OrderRecord:
    """What the All_SalesOrder messages told about one order (the ``sales_order`` row)."""

    order_id: str
    channel: str
    currency: str
    total: Decimal
    lines: list
    tenders: list
    customer: dict | None
    status: OrderStatus = OrderStatus.OPEN
    snapshot_at: datetime | None = None
    cancelled_event_id: str | None = None
    refunds: list = field(default_factory=list)
    last_event_id: str | None = None


def merge_order_message(record: OrderRecord | None, msg: dict, occurred: datetime | None,
                        now: datetime) -> OrderRecord:
    """The order after one more All_SalesOrder message (``record`` None: its first one).

    The content (lines, tenders, total) is the latest ``ORDER_CREATED``/``ORDER_UPDATED`` by
    ``occurredAt``; until one arrived, whatever message came first stands in. A cancellation and
    the refunds are kept beside it, so a late ``ORDER_CREATED`` never undoes them.
    """
    event_type = msg["eventType"]
    content = dict(channel=msg["channel"], currency=msg["currency"], total=Decimal(msg["total"]),
                   lines=msg.get("lines") or [], tenders=msg.get("tenders") or [],
                   customer=msg.get("customer"))
    is_snapshot = event_type in SNAPSHOT_TYPES
    if record is None:
        record = OrderRecord(order_id=msg["orderId"], snapshot_at=occurred if is_snapshot else None, **content)
    else:
        newer = record.snapshot_at is None or (occurred is not None and occurred >= record.snapshot_at)
        if is_snapshot and newer:
            for name, value in content.items():
                if name == "customer" and value is None:
                    continue
                setattr(record, name, value)
            record.snapshot_at = occurred or now
        elif not record.lines and content["lines"]:
            record.lines = content["lines"]
    if event_type == CANCELLED_TYPE and record.cancelled_event_id is None:
        record.cancelled_event_id = msg["eventId"]
        record.status = OrderStatus.CANCELLED
    if event_type == REFUNDED_TYPE:
        if all(r["eventId"] != msg["eventId"] for r in record.refunds):
            record.refunds = [*record.refunds, {"eventId": msg["eventId"], "occurredAt": msg.get("occurredAt"),
                                                "refundLines": msg.get("refundLines") or []}]
        if record.status != OrderStatus.CANCELLED:
            record.status = OrderStatus.REFUNDED
    record.last_event_id = msg["eventId"]
    return record


@dataclass(frozen=True)
class Line:
    line_id: str
    type: str
    amount: Decimal
    code: str | None = None


@dataclass(frozen=True)
class Tender:
    type: str
    amount: Decimal
    code: str | None = None
    authorization_id: str | None = None


@dataclass(frozen=True)
class RefundRequest:
    """One ``ORDER_REFUNDED`` message: which lines, for how much."""
    event_id: str
    occurred_at: datetime | None
    lines: tuple[tuple[str, Decimal], ...]


@dataclass(frozen=True)
class Order:
    order_id: str
    channel: str
    currency: str
    total: Decimal
    lines: tuple[Line, ...] = ()
    tenders: tuple[Tender, ...] = ()
    cancelled_by: str | None = None          # eventId of ORDER_CANCELLED, if any
    refunds: tuple[RefundRequest, ...] = ()

    @property
    def gc_lines(self) -> tuple[Line, ...]:
        return tuple(line for line in self.lines if line.type == GC)


@dataclass(frozen=True)
class Payment:
    event_id: str
    payment_id: str
    event_type: str
    amount: Decimal
    currency: str
    occurred_at: datetime | None = None
    seq: int = 0                              # arrival order, breaks ties in occurred_at
    gc_code: str | None = None
    gc_operation: str | None = None
    gc_amount: Decimal | None = None
    requisites_required: bool = False
    reason: str | None = None

    @property
    def gc_sum(self) -> Decimal:
        """The amount concerning the certificate (``giftCertificate.amount``, else ``amount``)."""
        return self.gc_amount if self.gc_amount is not None else self.amount
