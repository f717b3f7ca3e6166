"""Correlation of the channels' messages by ``orderId``: pure decisions, no I/O.

All_SalesOrder and All_Payments arrive in any order, possibly hours apart, duplicated or
replayed. The rules here look at everything known about one order (its latest snapshot, its
cancellation and refunds, every payment event, and the effects already applied) and return the
effects still to apply (:mod:`models.domain.order` holds what the messages say). Each effect
has a stable ``key`` (:mod:`models.domain.effects`): applied once, recorded in ``order_effect``,
so the same messages in any order lead to the same effects in the same order.

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

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from models.domain.effects import Action, Decision, Outcome, effect_key, parse_effect_key
from models.domain.money import ZERO, fmt_money
from models.domain.order import AUTHORIZED, CAPTURED, GC, REFUND_FAILED, REFUNDED, Line, Order, Payment


def _time_key(payment: Payment):
    return (payment.occurred_at is None, payment.occurred_at or datetime.min, payment.seq)


def captured_total(order: Order, payments: list[Payment]) -> Decimal:
    """Sum of the order's captured payments in the order's currency (each paymentId once)."""
    captured: dict[str, Decimal] = {}
    for payment in payments:
        if payment.event_type == CAPTURED and payment.currency == order.currency:
            captured[payment.payment_id] = max(captured.get(payment.payment_id, ZERO), payment.amount)
    return sum(captured.values(), ZERO)


def paid_in_full(order: Order, payments: list[Payment]) -> bool:
    return order.total > 0 and captured_total(order, payments) >= order.total


def gc_lines_total(order: Order) -> Decimal:
    """What the order's gift-certificate lines sell for; the order's total must cover it
    (contract section 4, Issue: a certificate is never sold below its nominal)."""
    return sum((line.amount for line in order.gc_lines), ZERO)


def payment_seen(payments: list[Payment]) -> bool:
    """Payments reported money for the order (authorized or captured)."""
    return any(payment.event_type in (AUTHORIZED, CAPTURED) for payment in payments)


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


class _Plan:
    """The decisions of one :func:`decide`, in the order to apply them: each key once, and none
    already done."""

    def __init__(self, done: dict[str, str]):
        self.done = done
        self.decisions: list[Decision] = []

    def add(self, key: str, action: Action, cause: str | None = None, **params) -> None:
        if key not in self.done and not self.planned(key):
            self.decisions.append(Decision(key, action, params, cause))

    def planned(self, key: str) -> bool:
        return any(d.key == key for d in self.decisions)


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
    plan = _Plan(done)
    ordered = sorted(payments, key=_time_key)
    _say_foreign_captures(plan, order, ordered)
    _cancel_or_issue(plan, order, payments)
    tender_codes, confirmed_codes = _redeem_tenders(plan, order, ordered)
    if order.refunds:  # refunds: only once the order was refunded
        _credit_refunds(plan, ordered, tender_codes, confirmed_codes)
        _request_refunds(plan, order)
        _settle_refunds(plan, order, ordered, issued or {})
    return plan.decisions


def _say_foreign_captures(plan: _Plan, order: Order, ordered: list[Payment]) -> None:
    """A captured payment in another currency does not count; it is said, once."""
    for payment in ordered:
        if payment.event_type == CAPTURED and payment.currency != order.currency:
            plan.add(effect_key(Action.CURRENCY_ERROR, payment.payment_id), Action.CURRENCY_ERROR,
                     payment.event_id, payment_id=payment.payment_id,
                     message=f"payment {payment.payment_id} of {fmt_money(payment.amount)} "
                             f"{payment.currency} for order {order.order_id} in {order.currency} "
                             "does not count towards its total")


def _cancel_or_issue(plan: _Plan, order: Order, payments: list[Payment]) -> None:
    """A cancelled order releases its reservations (or, paid, alerts support) and issues
    nothing; an order paid in full issues each certificate line, if its total covers them."""
    if order.cancelled_by is not None:
        if payment_seen(payments):
            plan.add(effect_key(Action.ALERT, "cancelled-after-payment"), Action.ALERT, order.cancelled_by,
                     alert="ORDER_CANCELLED_AFTER_PAYMENT",
                     message=f"order {order.order_id} was cancelled after a payment was seen: "
                             "its certificates are kept for support")
        else:
            plan.add(effect_key(Action.RELEASE), Action.RELEASE, order.cancelled_by, reason="ORDER_CANCELLED")
        if paid_in_full(order, payments) and order.gc_lines:
            plan.add(effect_key(Action.ALERT, "paid-after-cancel"), Action.ALERT, alert="PAID_AFTER_CANCEL",
                     message=f"order {order.order_id} is paid in full but was cancelled: nothing issued")
        return
    if not (order.gc_lines and paid_in_full(order, payments)):
        return
    lines_total = gc_lines_total(order)
    if lines_total > order.total:  # never sell a certificate below its nominal
        plan.add(effect_key(Action.ALERT, "order-total-mismatch"), Action.ALERT, alert="ORDER_TOTAL_MISMATCH",
                 message=(f"order {order.order_id}: its gift-certificate lines sum to "
                          f"{fmt_money(lines_total)} {order.currency}, above its total "
                          f"{fmt_money(order.total)}: nothing issued"),
                 details={"linesTotal": fmt_money(lines_total), "orderTotal": fmt_money(order.total),
                          "currency": order.currency})
        return
    for line in order.gc_lines:
        plan.add(effect_key(Action.ISSUE, line.line_id), Action.ISSUE, line_id=line.line_id,
                 code=line.code, nominal=line.amount)


def _redeem_tenders(plan: _Plan, order: Order, ordered: list[Payment]) -> tuple[set[str], set[str]]:
    """Certificate tenders: one naming an API authorization is confirmed, any other is debited
    by its captured ``REDEMPTION`` payments. Returns the tenders' codes and the confirmed ones."""
    tenders = [t for t in order.tenders if t.type == GC and t.code]
    confirmed_codes = set()
    for tender in tenders:
        if tender.authorization_id:
            confirmed_codes.add(tender.code)
            plan.add(effect_key(Action.CONFIRM, tender.authorization_id), Action.CONFIRM, code=tender.code,
                     amount=tender.amount, authorization_id=tender.authorization_id)
    tender_codes = {t.code for t in tenders}
    for payment in ordered:
        if (payment.event_type == CAPTURED and payment.gc_operation == "REDEMPTION"
                and payment.gc_code in tender_codes and payment.gc_code not in confirmed_codes):
            plan.add(effect_key(Action.REDEEM, payment.gc_code, payment.payment_id), Action.REDEEM,
                     payment.event_id, code=payment.gc_code, amount=payment.gc_sum, currency=payment.currency)
    return tender_codes, confirmed_codes


def _debited(done: dict[str, str], code: str) -> bool:
    """A redemption of ``code`` was applied already."""
    for key in done:
        parsed = parse_effect_key(key)
        if parsed is not None and parsed[0] == Action.REDEEM and parsed[1][0] == code:
            return True
    return False


def _credit_refunds(plan: _Plan, ordered: list[Payment], tender_codes: set[str],
                    confirmed_codes: set[str]) -> None:
    """A refund onto a certificate credits it, once the order's tender with that certificate
    was debited."""
    pending_debit = {c for c in tender_codes - confirmed_codes if not _debited(plan.done, c)}
    for payment in ordered:
        if payment.event_type == REFUNDED and payment.gc_operation == "REFUND" and payment.gc_code:
            if payment.gc_code not in tender_codes or payment.gc_code in pending_debit:
                continue  # wait for the order's tender with this certificate, and its debit
            plan.add(effect_key(Action.REFUND_CREDIT, payment.gc_code, payment.payment_id), Action.REFUND_CREDIT,
                     payment.event_id, code=payment.gc_code, amount=payment.gc_sum, currency=payment.currency)


def _request_refunds(plan: _Plan, order: Order) -> None:
    """``ORDER_REFUNDED`` for a sold certificate line asks for its purchase refund."""
    gc_by_line = {line.line_id: line for line in order.gc_lines}
    for refund in sorted(order.refunds, key=lambda r: (r.occurred_at is None,
                                                       r.occurred_at or datetime.min)):
        for line_id, amount in refund.lines:
            line = gc_by_line.get(line_id)
            if line is None:
                continue  # a product line: not ours
            if effect_key(Action.ISSUE, line_id) not in plan.done:
                continue  # wait until the line was sold
            plan.add(effect_key(Action.REFUND_REQUEST, line_id), Action.REFUND_REQUEST, refund.event_id,
                     line_id=line_id, code=line.code, amount=amount)


def _settle_refunds(plan: _Plan, order: Order, ordered: list[Payment], issued: dict[str, str]) -> None:
    """Payments' answers to a purchase refund, in their own time order and only after the
    request: refunded confirms it, "requisites required" asks for details (unless refunded)."""
    for payment in ordered:
        if payment.gc_operation != "PURCHASE" or payment.event_type not in (REFUNDED, REFUND_FAILED):
            continue
        line = line_for_code(order, payment.gc_code, issued)
        if line is None:
            continue
        requested = effect_key(Action.REFUND_REQUEST, line.line_id)
        if not (plan.done.get(requested) == Outcome.APPLIED or plan.planned(requested)):
            continue  # wait for ORDER_REFUNDED, or the request was refused: nothing to confirm
        confirm_key = effect_key(Action.REFUND_CONFIRM, line.line_id)
        if payment.event_type == REFUNDED:
            plan.add(confirm_key, Action.REFUND_CONFIRM, payment.event_id, line_id=line.line_id, code=line.code)
        elif payment.requisites_required:
            if confirm_key in plan.done or plan.planned(confirm_key):
                continue  # already refunded: a late "needs details" changes nothing
            plan.add(effect_key(Action.REFUND_DETAILS, line.line_id), Action.REFUND_DETAILS, payment.event_id,
                     line_id=line.line_id, code=line.code, reason=payment.reason)
