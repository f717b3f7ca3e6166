"""Authorization holds: authorize (CVC checked), capture, void, their expiry, and the
confirmation of an API capture that an order's tender names."""
from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from config import get_settings
from models.domain import correlation
from models.domain.commands import Authorize, Capture, ConfirmCapture, Context, Void
from models.domain.effects import Outcome
from models.domain.errors import DomainError
from models.domain.events import Event
from models.domain.hold import Hold
from models.domain.money import fmt_money
from models.domain.states import EventType, HoldStatus
from models.domain.timeutil import iso
from models.service.unit_of_work import UnitOfWork
from models.store import cvc as cvc_secret
from models.store import cvc_budget
from models.store.repository import certificate_view_of, to_domain, to_hold
from models.store.tables import AuthorizationHold


def authorize(cmd: Authorize, ctx: Context) -> dict | None:
    """Check the CVC and place a hold. Wrong CVCs are counted (and may lock) even though refused."""
    settings = get_settings()
    with UnitOfWork(ctx) as uow:
        row, cert, before = uow.certificate(cmd.code)
        cert.ensure_usable(uow.now)
        budget = cvc_budget.CvcBudget.for_client(ctx.actor)
        if not budget.take():
            raise budget.refusal()
        matches = cvc_secret.matches(row.code, cmd.cvc, row.cvc_hash, row.cvc_key_id)
        if matches:
            budget.give_back()
        cert.check_cvc(matches, settings.cvc_max_attempts)
        if not matches:
            uow.save(row, cert, before)
            if budget.exhausted():  # this wrong CVC used up the client's budget: tell the stream
                uow.emit(budget.alert_event(row.code), None)
            return uow.commit_then_refuse(DomainError(
                "CVC_MISMATCH", "CVC does not match",
                attemptsLeft=max(settings.cvc_max_attempts - cert.cvc_failed_attempts, 0)))
        if cvc_secret.needs_reseal(row.cvc_key_id):  # made with a retired key: seal it anew
            for name, value in cvc_secret.reseal(row.code, cmd.cvc, row.cvc_encrypted).items():
                setattr(row, name, value)
        uow.end_holds(row, cert, overdue_only=True)
        hold = Hold("auth-" + uuid.uuid4().hex, cmd.amount,
                    uow.now + dt.timedelta(seconds=settings.hold_ttl_seconds))
        try:
            cert.authorize(hold, uow.now, cmd.currency)
        except DomainError as refused:  # the right CVC still ends a run of wrong ones
            if cert.events or row.cvc_failed_attempts != cert.cvc_failed_attempts:
                uow.save(row, cert, before)
                return uow.commit_then_refuse(refused)
            raise
        uow.add_hold(row, hold, channel=cmd.channel, client_id=ctx.actor, order_id=cmd.order_id)
        uow.save(row, cert, before)
        return {"authorizationId": hold.id, "code": row.code, "amount": fmt_money(hold.amount),
                "currency": row.currency.strip(), "expiresAt": iso(hold.expires_at),
                "available": fmt_money(cert.available), "status": hold.status.value}


def capture(cmd: Capture, ctx: Context) -> dict:
    with UnitOfWork(_with_correlation(ctx, cmd.authorization_id)) as uow:
        hold_row, row = uow.lock_hold(cmd.authorization_id, cmd.channel)
        cert, before, hold = to_domain(row), certificate_view_of(row), to_hold(hold_row)
        captured = cert.capture(hold, uow.now, cmd.amount, cmd.currency)
        uow.save_hold(hold_row, hold)
        uow.save(row, cert, before)
        return {"authorizationId": hold.id, "code": row.code, "captured": fmt_money(captured),
                "remainingBalance": fmt_money(row.remaining_balance), "status": row.status,
                "currency": row.currency.strip()}


def void(cmd: Void, ctx: Context) -> dict:
    with UnitOfWork(_with_correlation(ctx, cmd.authorization_id)) as uow:
        hold_row, row = uow.lock_hold(cmd.authorization_id, cmd.channel)
        cert, before, hold = to_domain(row), certificate_view_of(row), to_hold(hold_row)
        if cmd.expired and not hold.lapsed(uow.now):
            raise DomainError("INVALID_STATE", "authorization has not expired")
        cert.end_hold(hold, HoldStatus.EXPIRED if cmd.expired else HoldStatus.VOIDED)
        uow.save_hold(hold_row, hold)
        uow.save(row, cert, before)
        return {"authorizationId": hold.id, "code": row.code, "status": hold.status.value,
                "amount": fmt_money(hold.amount), "available": fmt_money(cert.available),
                "remainingBalance": fmt_money(row.remaining_balance)}


def _with_correlation(ctx: Context, authorization_id: str) -> Context:
    if ctx.correlation_id:
        return ctx
    order = (AuthorizationHold.select(AuthorizationHold.order_id)
             .where(AuthorizationHold.id == authorization_id).scalar())
    return dataclasses.replace(ctx, correlation_id=order) if order else ctx


def confirm_capture(cmd: ConfirmCapture, ctx: Context) -> dict:
    """Check the API capture an order's tender names against the tender (``outcome`` APPLIED);
    a mismatch raises a ``CAPTURE_MISMATCH`` alert (``outcome`` REFUSED). Debits nothing."""
    with UnitOfWork(ctx) as uow:
        hold = AuthorizationHold.get_or_none(AuthorizationHold.id == cmd.authorization_id)
        seen = None
        if hold is not None:
            hold, row = uow.lock_hold(cmd.authorization_id, None)
            seen = {"code": row.code, "status": hold.status, "captured": hold.captured_amount}
        mismatch = correlation.capture_mismatch(cmd.code, cmd.amount, cmd.authorization_id, seen)
        if mismatch is not None:
            uow.emit(Event(EventType.ALERT, "ALERT", {"code": "CAPTURE_MISMATCH", "message": mismatch,
                                                   "source": cmd.source, "certificateCode": cmd.code,
                                                   "authorizationId": cmd.authorization_id}),
                     None)
            return {"outcome": Outcome.REFUSED, "detail": mismatch}
        hold.confirmed_by, hold.updated_at = ctx.cause, uow.now
        uow.writes.update(hold)
        uow.audit("authorization.confirmed", row, details={
            "authorizationId": hold.id, "amount": fmt_money(cmd.amount), "orderId": ctx.correlation_id})
        return {"outcome": Outcome.APPLIED, "detail": hold.id}
