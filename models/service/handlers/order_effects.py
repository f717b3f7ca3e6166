"""Applying what the correlation decided for one order (:func:`correlate`).

The pure rules of :mod:`models.domain.correlation` say which effects are still to apply; each
is applied here through the certificate use cases, inside the caller's unit of work and under
the order's lock, and written to ``order_effect`` with its outcome, so a duplicate, a replay or
a redelivery finds it done. A refused effect (the domain said no) becomes an ``error`` event on
the stream, and counts as applied (``REFUSED``): the message is not retried for it.
"""
from __future__ import annotations

import dataclasses
import logging

from models.domain import correlation
from models.domain.commands import (
    PAYMENTS,
    ConfirmCapture,
    ConfirmPurchaseRefund,
    Context,
    Issue,
    PurchaseRefundNeedsDetails,
    RaiseAlert,
    Redeem,
    RefundToCertificate,
    Release,
    RequestPurchaseRefund,
    Reserve,
)
from models.domain.correlation import Reservation
from models.domain.effects import Action, Decision, Outcome
from models.domain.errors import DomainError
from models.domain.money import fmt_money
from models.domain.order import GC, Line, Order, OrderRecord
from models.domain.states import Status
from models.domain.timeutil import utcnow
from models.service.handlers.balance import (
    confirm_purchase_refund,
    purchase_refund_needs_details,
    redeem,
    refund_to_certificate,
    request_purchase_refund,
)
from models.service.handlers.holds import confirm_capture
from models.service.handlers.notifications import raise_alert
from models.service.handlers.pool import issue, release, reserve
from models.service.unit_of_work import UnitOfWork
from models.store.orders import order_from

log = logging.getLogger("gcp.orders")

#: Actions that make several changes: each runs in a savepoint of its own, so a refusal leaves
#: nothing half done (the others are one use case, atomic on its own).
MULTI_STEP = frozenset({Action.RELEASE})

#: Safety bound on re-deciding after applying effects (a chain is at most issue → request →
#: details → confirm).
MAX_ROUNDS = 8


def correlate(uow: UnitOfWork, order_id: str, ctx: Context, source: str,
              recorded: OrderRecord | None = None) -> list[tuple[str, str]]:
    """Apply every effect still open for the order (under its lock, in ``uow``); returns the
    ``(effect key, outcome)`` applied, in order.

    ``recorded``: the order as this unit of work just recorded it, when it is new (so it is not
    read back, and no effect can have been applied to it yet)."""
    if recorded is not None:
        order, done = order_from(order_id, recorded.channel, recorded.currency, recorded.total,
                                 recorded.lines, recorded.tenders, recorded.cancelled_event_id,
                                 recorded.refunds), {}
    else:
        order, done = uow.orders.load(order_id)
    if order is None:
        return []
    applier = EffectApplier(uow, order, ctx, source)
    payments = uow.orders.payments(order_id)
    applied: list[tuple[str, str]] = []
    issued_any = False
    for _ in range(MAX_ROUNDS):
        issued = uow.orders.issued_codes(order_id) if order.refunds else {}
        decisions = correlation.decide(order, payments, done, issued)
        if not decisions:
            break
        for decision in decisions:
            result = applier.apply(decision)
            done[decision.key] = result
            applied.append((decision.key, result))
            issued_any = issued_any or decision.action == Action.ISSUE
        if not order.refunds:
            break  # only a refund's effects wait for other effects of the same order
    if issued_any:
        uow.orders.mark_paid(order_id, utcnow())
    return applied


def _reservation_view(reservation: Reservation) -> dict:
    return {"certificateCode": reservation.code, "status": reservation.status,
            "channel": reservation.channel, "orderId": reservation.order_id,
            "lineId": reservation.line_id, "nominal": fmt_money(reservation.nominal),
            "currency": reservation.currency}


class EffectApplier:
    """Applies one order's decisions in the caller's unit of work; each action returns its
    ``(outcome, detail)``."""

    def __init__(self, uow: UnitOfWork, order: Order, ctx: Context, source: str):
        self.uow = uow
        self.order = order
        self.ctx = dataclasses.replace(ctx, correlation_id=order.order_id, channel=ctx.channel or order.channel)
        self.source = source
        self._actions = {
            Action.ISSUE: self._issue, Action.RELEASE: self._release, Action.REDEEM: self._redeem,
            Action.CONFIRM: self._confirm, Action.REFUND_REQUEST: self._refund_request,
            Action.REFUND_DETAILS: self._refund_details, Action.REFUND_CONFIRM: self._refund_confirm,
            Action.REFUND_CREDIT: self._refund_credit, Action.CURRENCY_ERROR: self._currency_error,
            Action.ALERT: self._alert,
        }

    def apply(self, decision: Decision) -> str:
        """Apply one decision and record it; returns its outcome."""
        ctx = dataclasses.replace(self.ctx, causation_id=decision.cause or self.ctx.causation_id)
        action = self._actions[decision.action]
        try:
            if decision.action in MULTI_STEP:
                with UnitOfWork(ctx) as step:
                    result, detail = action(step, decision.params, ctx)
            else:
                result, detail = action(self.uow, decision.params, ctx)
        except DomainError as refused:
            raise_alert(RaiseAlert("error", refused.code, refused.message, self.source,
                                   certificate_code=decision.params.get("code"), order_id=self.order.order_id), ctx)
            result, detail = Outcome.REFUSED, f"{refused.code}: {refused.message}"
        self.uow.orders.record_effect(self.order.order_id, decision.key, result, detail, ctx.causation_id)
        log.debug("order effect", extra={"orderId": self.order.order_id, "effect": decision.key,
                                        "outcome": result})
        return result

    def _line_code(self, uow: UnitOfWork, params: dict) -> str:
        found = uow.orders.line_certificate(self.order.channel, self.order.order_id, params["line_id"])
        code = found.code if found is not None else params.get("code")
        if not code:
            raise DomainError("CERTIFICATE_NOT_FOUND", "no certificate for this order line",
                              lineId=params["line_id"])
        return code

    # -- the actions: (the unit of work to read through, the decision's params, the context)
    def _issue(self, uow: UnitOfWork, params: dict, ctx: Context):
        order, line_id = self.order, params["line_id"]
        line = Line(line_id, GC, params["nominal"], params.get("code"))
        found = uow.orders.line_certificates(order.order_id, line_id, line.code)
        own = next((r for r in found if r.channel == order.channel and r.order_id == order.order_id
                    and r.line_id == line_id), None)
        others = tuple(r for r in found if r is not own)
        mismatch = correlation.line_mismatch(order, line, own, others)
        if mismatch is not None:  # issue nothing: support sorts it out
            raise_alert(RaiseAlert(
                "alert", "LINE_MISMATCH", f"order {order.order_id} line {line_id}: {mismatch}",
                self.source, certificate_code=(own.code if own else line.code), order_id=order.order_id,
                details={"lineId": line_id,
                         "line": {"certificateCode": line.code, "amount": fmt_money(line.amount),
                                  "currency": order.currency, "channel": order.channel},
                         "reservation": _reservation_view(own or others[0]) if (own or others) else None}),
                ctx)
            return Outcome.REFUSED, f"LINE_MISMATCH: {mismatch}"
        if own is not None:  # the usual case: the reservation is there
            if own.status != Status.RESERVED.value:
                return Outcome.SKIPPED, f"certificate {own.code} is {own.status}"
            issue(Issue(own.code), ctx)
            return Outcome.APPLIED, own.code
        named = next((r for r in others if r.code == line.code), None)
        with UnitOfWork(ctx) as both:  # reserve again, then issue: both or neither
            return self._reissue(both, params, ctx, named)

    def _reissue(self, uow: UnitOfWork, params: dict, ctx: Context, named: Reservation | None):
        order, line_id = self.order, params["line_id"]
        found = None
        if named is not None and named.status == Status.AVAILABLE.value:
            # the reservation lapsed but the very code is still free: sell it after all
            reserve(Reserve(order.channel, order.order_id, line_id, params["nominal"],
                            order.currency, code=named.code), ctx)
            found = uow.orders.line_certificate(order.channel, order.order_id, line_id)
        if found is None:  # the reservation was lost: a fresh certificate from the pool
            try:
                reserve(Reserve(order.channel, order.order_id, line_id, params["nominal"], order.currency), ctx)
            except DomainError as refused:
                if refused.code != "POOL_EMPTY":
                    raise
                uow.orders.block_line(order.order_id, line_id, order.channel, params["nominal"], order.currency,
                                      named.kind if named is not None else "ELECTRONIC", ctx.causation_id,
                                      utcnow())
                return Outcome.BLOCKED, "POOL_EMPTY"
            found = uow.orders.line_certificate(order.channel, order.order_id, line_id)
        issue(Issue(found.code), ctx)
        return Outcome.APPLIED, found.code

    def _release(self, uow: UnitOfWork, params: dict, ctx: Context):
        released = []
        for code in uow.orders.reserved_codes(self.order.channel, self.order.order_id):
            release(Release(code, params["reason"]), ctx)
            released.append(code)
        uow.orders.cancel_blocked_lines(self.order.order_id, utcnow())
        return Outcome.APPLIED, ",".join(released) or None

    def _redeem(self, uow: UnitOfWork, params: dict, ctx: Context):
        redeem(Redeem(params["code"], params["amount"], params["currency"]), ctx)
        return Outcome.APPLIED, params["code"]

    def _confirm(self, uow: UnitOfWork, params: dict, ctx: Context):
        confirmed = confirm_capture(ConfirmCapture(params["code"], params["amount"], params["authorization_id"],
                                                   self.source), ctx)
        return confirmed["outcome"], confirmed["detail"]

    def _refund_request(self, uow: UnitOfWork, params: dict, ctx: Context):
        code = self._line_code(uow, params)
        request_purchase_refund(RequestPurchaseRefund(code, params["amount"]), ctx)
        return Outcome.APPLIED, code

    def _refund_details(self, uow: UnitOfWork, params: dict, ctx: Context):
        code = self._line_code(uow, params)
        purchase_refund_needs_details(PurchaseRefundNeedsDetails(code, params.get("reason")), ctx)
        return Outcome.APPLIED, code

    def _refund_confirm(self, uow: UnitOfWork, params: dict, ctx: Context):
        code = self._line_code(uow, params)
        confirm_purchase_refund(ConfirmPurchaseRefund(code), ctx)
        return Outcome.APPLIED, code

    def _refund_credit(self, uow: UnitOfWork, params: dict, ctx: Context):
        refund_to_certificate(RefundToCertificate(params["code"], params["amount"], params["currency"]), ctx)
        return Outcome.APPLIED, params["code"]

    def _currency_error(self, uow: UnitOfWork, params: dict, ctx: Context):
        raise_alert(RaiseAlert("error", "CURRENCY_MISMATCH", params["message"], PAYMENTS,
                               order_id=self.order.order_id, details={"paymentId": params["payment_id"]}), ctx)
        return Outcome.APPLIED, params["payment_id"]

    def _alert(self, uow: UnitOfWork, params: dict, ctx: Context):
        raise_alert(RaiseAlert("alert", params["alert"], params["message"], self.source,
                               order_id=self.order.order_id, details=params.get("details")), ctx)
        return Outcome.APPLIED, params["alert"]
