"""Authorization holds: authorize (CVC checked), capture, void, and their expiry."""
from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from config import get_settings
from models.domain.commands import Authorize, Capture, Void
from models.domain.errors import DomainError
from models.domain.hold import Hold
from models.domain.money import fmt_money
from models.domain.states import HoldStatus
from models.domain.timeutil import iso
from models.service.unit_of_work import Context, Deferred, UnitOfWork, run
from models.store import cvc as cvc_secret
from models.store import cvc_budget
from models.store.repository import snapshot, to_domain, to_hold
from models.store.tables import AuthorizationHold


def authorize(cmd: Authorize, ctx: Context) -> dict:
    """Check the CVC and place a hold. Wrong CVCs are counted (and may lock) even though refused."""
    settings = get_settings()

    def body(uow: UnitOfWork) -> dict:
        row, cert, before = uow.certificate(cmd.code)
        cert.ensure_usable(uow.now)
        budget = cvc_budget.CvcBudget.for_client(ctx.actor)
        if not budget.take():
            raise budget.refusal()
        ok = cvc_secret.matches(row.code, cmd.cvc, row.cvc_hash, row.cvc_key_id)
        if ok:
            budget.give_back()
        cert.check_cvc(ok, settings.cvc_max_attempts)
        if not ok:
            uow.save(row, cert, before)
            if budget.exhausted():  # this wrong CVC used up the client's budget: tell the stream
                uow.emit(budget.alert_event(row.code), None)
            raise Deferred(DomainError("CVC_MISMATCH", "CVC does not match",
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
                raise Deferred(refused) from None
            raise
        uow.add_hold(row, hold, channel=cmd.channel, client_id=ctx.actor, order_id=cmd.order_id)
        uow.save(row, cert, before)
        return {"authorizationId": hold.id, "code": row.code, "amount": fmt_money(hold.amount),
                "currency": row.currency.strip(), "expiresAt": iso(hold.expires_at),
                "available": fmt_money(cert.available), "status": hold.status.value}
    return run(ctx, body)


def capture(cmd: Capture, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        hold_row, row = uow.lock_hold(cmd.authorization_id, cmd.channel)
        cert, before, hold = to_domain(row), snapshot(row), to_hold(hold_row)
        captured = cert.capture(hold, uow.now, cmd.amount, cmd.currency)
        uow.save_hold(hold_row, hold)
        uow.save(row, cert, before)
        return {"authorizationId": hold.id, "code": row.code, "captured": fmt_money(captured),
                "remainingBalance": fmt_money(row.remaining_balance), "status": row.status,
                "currency": row.currency.strip()}
    return run(_with_correlation(ctx, cmd.authorization_id), body)


def void(cmd: Void, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        hold_row, row = uow.lock_hold(cmd.authorization_id, cmd.channel)
        cert, before, hold = to_domain(row), snapshot(row), to_hold(hold_row)
        if cmd.expired and not hold.lapsed(uow.now):
            raise DomainError("INVALID_STATE", "authorization has not expired")
        cert.end_hold(hold, HoldStatus.EXPIRED if cmd.expired else HoldStatus.VOIDED)
        uow.save_hold(hold_row, hold)
        uow.save(row, cert, before)
        return {"authorizationId": hold.id, "code": row.code, "status": hold.status.value,
                "amount": fmt_money(hold.amount), "available": fmt_money(cert.available),
                "remainingBalance": fmt_money(row.remaining_balance)}
    return run(_with_correlation(ctx, cmd.authorization_id), body)


def _with_correlation(ctx: Context, authorization_id: str) -> Context:
    if ctx.correlation_id:
        return ctx
    order = (AuthorizationHold.select(AuthorizationHold.order_id)
             .where(AuthorizationHold.id == authorization_id).scalar())
    return dataclasses.replace(ctx, correlation_id=order) if order else ctx
