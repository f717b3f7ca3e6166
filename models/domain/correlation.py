"""Correlation of the channels' messages by ``orderId``: pure decisions, no I/O.

All_SalesOrder and All_Payments arrive in any order, possibly hours apart, duplicated or
replayed. The rules here look at everything known about one order (its latest snapshot, its
cancellation and refunds, every payment event, and the effects already applied) and return the
effects still to apply. Each effect has a stable ``key``: applied once, recorded in
``order_effect``, so the same messages in any order lead to the same effects in the same order.

The rules (contract section 4, "Correlation"):

- **issue**: an order with ``GIFT_CERTIFICATE`` lines is paid in full when its captured
  payments reach the order ``total``; then each such line's certificate is issued. A cancelled
  order is never issued. Nor is one whose gift-certificate lines sum to more than its total,
  however much was captured: one ``ORDER_TOTAL_MISMATCH`` alert names both sums, and a later
  ``ORDER_UPDATED`` that corrects the total (and a capture that covers it) issues as usual.
- **redeem**: a ``GIFT_CERTIFICATE`` tender plus a ``PAYMENT_CAPTURED`` with operation
  ``REDEMPTION`` for the same certificate debit it once (per payment). A tender naming an
  ``authorizationId`` is a capture made through the API: it is *confirmed*, never debited again.
- **purchase refund**: ``ORDER_REFUNDED`` for a certificate line (once the line was issued) asks
  for the refund; ``PAYMENT_REFUNDED``/``PURCHASE`` confirms it; ``REFUND_FAILED`` with
  ``requisitesRequired`` asks for details. Outcomes apply in the payments' own time order, and
  only after the request.
- **refund to a certificate**: ``ORDER_REFUNDED`` plus ``PAYMENT_REFUNDED``/``REFUND`` credit a
  certificate the order was paid with (a tender of it), after the order's debit of it.
- **cancel**: ``ORDER_CANCELLED`` releases the order's reservations, unless a payment was seen
  (then support is alerted instead); a payment after the cancellation issues nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from models.domain.money import ZERO, fmt_money
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


@dataclass(frozen=True)
class Decision:
    """An effect to apply. ``cause`` is the eventId it derives from (None: the current one)."""
    key: str
    action: str
    params: dict = field(default_factory=dict)
    cause: str | None = None


def _time_key(p: Payment):
    return (p.occurred_at is None, p.occurred_at or datetime.min, p.seq)


def captured_total(order: Order, payments: list[Payment]) -> Decimal:
    """Sum of the order's captured payments in the order's currency (each paymentId once)."""
    captured: dict[str, Decimal] = {}
    for p in payments:
        if p.event_type == CAPTURED and p.currency == order.currency:
            captured[p.payment_id] = max(captured.get(p.payment_id, ZERO), p.amount)
    return sum(captured.values(), ZERO)


def paid_in_full(order: Order, payments: list[Payment]) -> bool:
    return order.total > 0 and captured_total(order, payments) >= order.total


def gc_lines_total(order: Order) -> Decimal:
    """What the order's gift-certificate lines sell for; the order's total must cover it
    (contract section 4, Issue: a certificate is never sold below its nominal)."""
    return sum((line.amount for line in order.gc_lines), ZERO)


def payment_seen(payments: list[Payment]) -> bool:
    """Payments reported money for the order (authorized or captured)."""
    return any(p.event_type in (AUTHORIZED, CAPTURED) for p in payments)


def capture_mismatch(tender_code: str, tender_amount: Decimal, authorization_id: str,
                     hold: dict | None) -> str | None:
    """Why a tender naming an API authorization does not match it (None when it does).

    ``hold`` is ``{"code", "status", "captured"}`` or None when unknown.
    """
    amount = fmt_money(tender_amount)
    if hold is None:
        return f"tender {amount} names unknown authorization {authorization_id}"
    if hold["code"] != tender_code:
        return (f"tender names certificate {tender_code} but authorization {authorization_id} "
                f"is on {hold['code']}")
    if hold["status"] != "CAPTURED":
        return f"tender {amount} names authorization {authorization_id}, which is {hold['status']}"
    if hold["captured"] != tender_amount:
        return (f"tender {amount} differs from captured authorization {authorization_id} "
                f"({fmt_money(hold['captured'])})")
    return None


@dataclass(frozen=True)
class Reservation:
    """A certificate as the issue rule sees it: who reserved it, for what."""
    code: str
    status: str
    channel: str | None
    order_id: str | None
    line_id: str | None
    nominal: Decimal | None
    currency: str
    kind: str = "ELECTRONIC"


def line_mismatch(order: Order, line: Line, own: Reservation | None,
                  others: tuple[Reservation, ...] = ()) -> str | None:
    """Why a paid line contradicts a reservation that still stands (None when it does not).

    ``own`` is what the order's own channel reserved for ``(channel, orderId, lineId)``;
    ``others`` are the other certificates in play (another channel's reservation of the same
    order line contradicts; a code the line names that was lost to another order does not:
    the line then gets a fresh certificate, invariant 5). Contract section 4:
    a line is issued only when its ``certificateCode``, its ``amount`` and the order's
    ``currency`` match its reservation (code, nominal, currency).
    """
    if own is not None:
        if own.status != "RESERVED":
            return None  # already sold (a replay): nothing to compare
        problems = []
        if line.code is not None and line.code != own.code:
            problems.append(f"the line names certificate {line.code}, the reservation is {own.code}")
        if own.nominal != line.amount:
            problems.append(f"the line amount is {fmt_money(line.amount)}, the reserved nominal "
                            f"{fmt_money(own.nominal)}")
        if own.currency != order.currency:
            problems.append(f"the order is in {order.currency}, the reservation in {own.currency}")
        return "; ".join(problems) or None
    for other in others:  # a code reserved for another order is no reservation of this line
        if (other.status == "RESERVED" and other.channel != order.channel
                and other.order_id == order.order_id and other.line_id == line.line_id):
            return (f"order line {line.line_id} was reserved by channel {other.channel} "
                    f"({other.code}), not by the order's channel {order.channel}")
    return None


def line_for_code(order: Order, code: str | None, issued: dict[str, str]) -> Line | None:
    """The certificate line a payment's ``giftCertificate.code`` refers to (the line's code or
    the certificate actually issued for it)."""
    for line in order.gc_lines:
        if code is not None and (line.code == code or issued.get(line.line_id) == code):
            return line
    lines = order.gc_lines
    return lines[0] if code is None and len(lines) == 1 else None


def decide(order: Order | None, payments: list[Payment], done: dict[str, str],
           issued: dict[str, str] | None = None) -> list[Decision]:
    """The effects still to apply for one order, in the order to apply them.

    Parameters:
        order: what the sales-order messages said (None until one arrived).
        payments: every payment event of the order.
        done: ``{effect key: outcome}`` of the effects already applied.
        issued: ``{lineId: code}`` of the certificates actually sold for the order's lines.
    Returns:
        the decisions whose key is not in ``done``.
    """
    if order is None:
        return []
    issued = issued or {}
    out: list[Decision] = []

    def add(key: str, action: str, cause: str | None = None, **params) -> None:
        if key not in done and all(d.key != key for d in out):
            out.append(Decision(key, action, params, cause))

    seen = payment_seen(payments)
    ordered = sorted(payments, key=_time_key)

    # -- a captured payment in another currency does not count; it is said, once
    for p in ordered:
        if p.event_type == CAPTURED and p.currency != order.currency:
            add(f"currency_mismatch:{p.payment_id}", "currency_error", p.event_id,
                message=f"payment {p.payment_id} of {fmt_money(p.amount)} {p.currency} for order "
                        f"{order.order_id} in {order.currency} does not count towards its total",
                payment_id=p.payment_id)

    # -- cancellation and issue
    if order.cancelled_by is not None:
        if seen:
            add("alert:cancelled-after-payment", "alert", order.cancelled_by,
                alert="ORDER_CANCELLED_AFTER_PAYMENT",
                message=f"order {order.order_id} was cancelled after a payment was seen: "
                        "its certificates are kept for support")
        else:
            add("release", "release", order.cancelled_by, reason="ORDER_CANCELLED")
        if paid_in_full(order, payments) and order.gc_lines:
            add("alert:paid-after-cancel", "alert", alert="PAID_AFTER_CANCEL",
                message=f"order {order.order_id} is paid in full but was cancelled: nothing issued")
    elif order.gc_lines and paid_in_full(order, payments):
        lines_total = gc_lines_total(order)
        if lines_total > order.total:  # never sell a certificate below its nominal
            add("alert:order-total-mismatch", "alert", alert="ORDER_TOTAL_MISMATCH",
                message=(f"order {order.order_id}: its gift-certificate lines sum to "
                         f"{fmt_money(lines_total)} {order.currency}, above its total "
                         f"{fmt_money(order.total)}: nothing issued"),
                details={"linesTotal": fmt_money(lines_total), "orderTotal": fmt_money(order.total),
                         "currency": order.currency})
        else:
            for line in order.gc_lines:
                add(f"issue:{line.line_id}", "issue", line_id=line.line_id, code=line.code,
                    nominal=line.amount)

    # -- redemptions with a certificate tender
    tenders = [t for t in order.tenders if t.type == GC and t.code]
    confirmed_codes = set()
    for tender in tenders:
        if tender.authorization_id:
            confirmed_codes.add(tender.code)
            add(f"confirm:{tender.authorization_id}", "confirm", code=tender.code,
                amount=tender.amount, authorization_id=tender.authorization_id)
    tender_codes = {t.code for t in tenders}
    for p in ordered:
        if (p.event_type == CAPTURED and p.gc_operation == "REDEMPTION" and p.gc_code in tender_codes
                and p.gc_code not in confirmed_codes):
            add(f"redeem:{p.gc_code}:{p.payment_id}", "redeem", p.event_id, code=p.gc_code,
                amount=p.gc_sum, currency=p.currency)

    # -- refunds: only once the order was refunded
    if not order.refunds:
        return out
    pending_debit = {c for c in tender_codes - confirmed_codes
                     if not any(k.startswith(f"redeem:{c}:") for k in done)}
    for p in ordered:
        if p.event_type == REFUNDED and p.gc_operation == "REFUND" and p.gc_code:
            if p.gc_code not in tender_codes or p.gc_code in pending_debit:
                continue  # wait for the order's tender with this certificate, and its debit
            add(f"refund_credit:{p.gc_code}:{p.payment_id}", "refund_credit", p.event_id,
                code=p.gc_code, amount=p.gc_sum, currency=p.currency)

    gc_by_line = {line.line_id: line for line in order.gc_lines}
    for refund in sorted(order.refunds, key=lambda r: (r.occurred_at is None,
                                                       r.occurred_at or datetime.min)):
        for line_id, amount in refund.lines:
            line = gc_by_line.get(line_id)
            if line is None:
                continue  # a product line: not ours
            if f"issue:{line_id}" not in done:
                continue  # wait until the line was sold
            add(f"refund_request:{line_id}", "refund_request", refund.event_id,
                line_id=line_id, code=line.code, amount=amount)
    for p in ordered:
        if p.gc_operation != "PURCHASE" or p.event_type not in (REFUNDED, REFUND_FAILED):
            continue
        line = line_for_code(order, p.gc_code, issued)
        if line is None:
            continue
        requested = f"refund_request:{line.line_id}"
        planned = done.get(requested) or ("PLANNED" if any(d.key == requested for d in out) else None)
        if planned is None:
            continue  # wait for ORDER_REFUNDED
        if planned not in ("APPLIED", "PLANNED"):
            continue  # the request was refused: nothing to confirm
        confirm_key = f"refund_confirm:{line.line_id}"
        if p.event_type == REFUNDED:
            add(confirm_key, "refund_confirm", p.event_id, line_id=line.line_id, code=line.code)
        elif p.requisites_required:
            if confirm_key in done or any(d.key == confirm_key for d in out):
                continue  # already refunded: a late "needs details" changes nothing
            add(f"refund_details:{line.line_id}", "refund_details", p.event_id,
                line_id=line.line_id, code=line.code, reason=p.reason)
    return out
