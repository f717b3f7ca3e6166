"""Support's corrections of a sold certificate: balance adjustments, with a second approver
above ``ADJUST_APPROVAL_LIMIT``, and the transfer of a whole balance onto another certificate
(a damaged card replaced at a POS, or the next one from the pool).

The rules are the domain's (:class:`models.domain.Adjustment`, ``Certificate.adjust``,
``transfer_out`` and ``transfer_in``); these handlers load and lock the rows, call them, and
write the change, its ledger rows, its audit rows and its stream events in one unit of work.
:data:`models.messagebus.COMMAND_HANDLERS` maps their commands to them.
"""
from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from config import get_settings
from models.commands import Adjust, ApproveAdjustment, Cancel, Lock, RejectAdjustment, Transfer, Unlock
from models.db import one
from models.domain import ZERO, Adjustment, DomainError, fmt_money, transfer_expiry, valid_code
from models.handlers.pool import check_low_water, sale_cvc
from models.queries import adjustment_view
from models.repository import adjustment_from, pick_available, snapshot, to_domain
from models.tables import BalanceAdjustment, CertificateTransfer, GiftCertificate
from models.timeutil import iso
from models.unit_of_work import Context, Deferred, UnitOfWork, change_certificate, run


def lock(cmd: Lock, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, c: c.lock(cmd.reason))


def unlock(cmd: Unlock, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, c: c.unlock())


def cancel(cmd: Cancel, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, c: c.cancel(cmd.reason), end_holds=True,
                              cancel_reason=cmd.reason)


#: Kind of the certificate a transfer takes from the pool (a printed card is named with ``to``).
POOL_KIND = "ELECTRONIC"


def _result(record: BalanceAdjustment, row: GiftCertificate, now: dt.datetime, held: Decimal) -> dict:
    view = adjustment_view(record, row.code, now)
    view.update(remainingBalance=fmt_money(row.remaining_balance),
                available=fmt_money(max(row.remaining_balance - held, ZERO)),
                certificateStatus=row.status)
    return view


def adjust(cmd: Adjust, ctx: Context) -> dict:
    """Applied at once up to the approval limit (``adjust`` event), else recorded as
    PENDING_APPROVAL (audited; nothing moves until a second admin approves)."""
    settings = get_settings()

    def body(uow: UnitOfWork) -> dict:
        row, cert, before = uow.certificate(cmd.code)
        uow.end_holds(row, cert, overdue_only=True)
        cert.check_adjustment(cmd.direction, cmd.amount, uow.now)
        adjustment = Adjustment.request(
            "adj-" + uuid.uuid4().hex, cmd.direction, cmd.amount, cmd.reason, ctx.actor, uow.now,
            settings.adjust_approval_limit, dt.timedelta(seconds=settings.adjust_approval_ttl_seconds))
        pending = adjustment.status == "PENDING_APPROVAL"
        record = BalanceAdjustment.create(
            id=adjustment.id, certificate=row.id, direction=adjustment.direction,
            amount=adjustment.amount, currency=row.currency, reason=adjustment.reason,
            comment=cmd.comment, needs_approval=pending, status=adjustment.status,
            requested_by=ctx.actor, request_id=ctx.request_id, requested_at=uow.now,
            expires_at=adjustment.expires_at, decided_at=None if pending else uow.now)
        if not pending:
            cert.adjust(adjustment, uow.now)
        uow.save(row, cert, before)
        if pending:
            uow.audit("adjust.requested", row, before=before, after=before, details={
                "adjustmentId": adjustment.id, "direction": adjustment.direction,
                "amount": fmt_money(adjustment.amount), "reason": adjustment.reason,
                "expiresAt": iso(adjustment.expires_at)})
        return _result(record, row, uow.now, cert.held)
    return run(ctx, body)


def _lock_adjustment(uow: UnitOfWork, adjustment_id: str) -> tuple[BalanceAdjustment, GiftCertificate]:
    """The adjustment and its certificate, locked: the certificate first, then the adjustment
    (the order every use case locks a certificate and what hangs on it)."""
    code = (GiftCertificate.select(GiftCertificate.code)
            .join(BalanceAdjustment, on=(BalanceAdjustment.certificate == GiftCertificate.id))
            .where(BalanceAdjustment.id == adjustment_id).scalar())
    if code is None:
        raise DomainError("ADJUSTMENT_NOT_FOUND", "no such adjustment", adjustmentId=adjustment_id)
    row = uow.lock_certificate(code)
    record = BalanceAdjustment.select().where(BalanceAdjustment.id == adjustment_id).for_update().get()
    return record, row


def _decide(uow: UnitOfWork, record: BalanceAdjustment, row: GiftCertificate, decide) -> Adjustment:
    """Run the domain decision; one found past its time is recorded EXPIRED (and refused)."""
    adjustment = adjustment_from(record)
    try:
        decide(adjustment)
    except DomainError as refused:
        if refused.code == "ADJUSTMENT_EXPIRED" and adjustment.expire(uow.now):
            record.status, record.decided_at = adjustment.status, uow.now
            record.save()
            uow.audit("adjust.expired", row, details={"adjustmentId": record.id,
                                                      "expiresAt": iso(record.expires_at)})
            raise Deferred(refused) from None
        raise
    return adjustment


def approve_adjustment(cmd: ApproveAdjustment, ctx: Context) -> dict:
    """Four eyes: never by its author; the bounds are checked again against today's balance
    (a refusal leaves it pending, to be rejected or approved later)."""
    def body(uow: UnitOfWork) -> dict:
        record, row = _lock_adjustment(uow, cmd.adjustment_id)
        adjustment = _decide(uow, record, row, lambda a: a.approve(ctx.actor, uow.now))
        before = snapshot(row)
        cert = to_domain(row)
        uow.end_holds(row, cert, overdue_only=True)
        cert.adjust(adjustment, uow.now)
        record.status, record.decided_by, record.decided_at = (adjustment.status,
                                                               adjustment.decided_by, uow.now)
        record.decision_comment = cmd.comment
        record.save()
        uow.save(row, cert, before)
        return _result(record, row, uow.now, cert.held)
    return run(ctx, body)


def reject_adjustment(cmd: RejectAdjustment, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        record, row = _lock_adjustment(uow, cmd.adjustment_id)
        adjustment = _decide(uow, record, row, lambda a: a.reject(ctx.actor, uow.now))
        record.status, record.decided_by, record.decided_at = (adjustment.status,
                                                               adjustment.decided_by, uow.now)
        record.decision_comment = cmd.comment
        record.save()
        view = snapshot(row)
        uow.audit("adjust.rejected", row, before=view, after=view, details={
            "adjustmentId": record.id, "requestedBy": record.requested_by})
        return _result(record, row, uow.now, to_domain(row).held)
    return run(ctx, body)


def _certificate_id(code: str, role: str) -> int:
    found = (GiftCertificate.select(GiftCertificate.id).where(GiftCertificate.code == code).scalar()
             if valid_code(code) else None)
    if found is None:
        raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code, role=role)
    return found


def _lock_by_id(certificate_id: int) -> GiftCertificate:
    row = one(GiftCertificate, "id", certificate_id, lock=True)
    if row is None:  # an id this transaction just read: gone only if the schema's rules broke
        raise LookupError(f"certificate {certificate_id} vanished")
    return row


def _lock_pair(source_id: int, target_id: int) -> tuple[GiftCertificate, GiftCertificate]:
    """Both rows, locked in primary-key order (two transfers never wait on each other in a cycle)."""
    locked = {cid: _lock_by_id(cid) for cid in sorted((source_id, target_id))}
    return locked[source_id], locked[target_id]


def transfer(cmd: Transfer, ctx: Context) -> dict:
    """One transaction: the source gives its whole balance (CANCELLED, lockReason TRANSFERRED),
    the target takes it (ISSUED, nominal = balance = the amount), one ``transfer`` event each,
    a ledger row each under one transfer id, and the target's CVC goes out as for a sale.

    With ``to``, both rows are locked in primary-key order. From the pool, the source is
    locked first and the target is then taken with ``SKIP LOCKED``, which never waits, so no
    lock cycle can form either way.
    """
    def body(uow: UnitOfWork) -> dict:
        source_id = _certificate_id(cmd.code, "from")
        if cmd.to == cmd.code:  # a valid request about a certificate that exists: a conflict
            raise DomainError("TARGET_NOT_AVAILABLE", "a certificate cannot be transferred onto itself",
                              to=cmd.to)
        if cmd.to is not None:
            source, target = _lock_pair(source_id, _certificate_id(cmd.to, "to"))
        else:
            source, target = _lock_by_id(source_id), None
        source_before = snapshot(source)
        cert = to_domain(source)
        uow.end_holds(source, cert, overdue_only=True)
        amount = cert.transferable(uow.now)  # refusals about the source come first
        if target is None:
            target = pick_available(amount, cert.currency, POOL_KIND)
            if target is None:
                raise DomainError("POOL_EMPTY", "no certificate available to transfer onto",
                                  nominal=fmt_money(amount), currency=cert.currency)
        target_before = snapshot(target)
        received = to_domain(target, ZERO)
        transfer_id = "trf-" + uuid.uuid4().hex
        received.transfer_in(source.code, cert.currency, amount, cmd.reason, transfer_id,
                             transfer_expiry(cert.expires_at, target.batch_expires_at), uow.now)
        cert.transfer_out(target.code, cmd.reason, transfer_id, uow.now)
        CertificateTransfer.create(
            id=transfer_id, from_certificate=source.id, to_certificate=target.id, amount=amount,
            currency=source.currency, reason=cmd.reason, actor=ctx.actor, request_id=ctx.request_id,
            created_at=uow.now)
        uow.save(source, cert, source_before, cancel_reason=cmd.reason)
        # the buyer keeps the sale: the target answers to the source's order (and its phone)
        uow.save(target, received, target_before, issued_at=uow.now, channel=source.channel,
                 order_id=source.order_id, line_id=None, reserved_at=None, reserved_until=None,
                 **sale_cvc(target, received))
        target_view = snapshot(target)
        check_low_water(uow, target)  # the target left the pool, as a reservation would
        return {"transferId": transfer_id, "fromCode": source.code, "toCode": target.code,
                "amount": fmt_money(amount), "currency": source.currency.strip(),
                "reason": cmd.reason, "source": snapshot(source, ZERO),
                "target": dict(target_view, available=target_view["remainingBalance"])}
    return run(ctx, body)
