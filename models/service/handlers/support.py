"""Support's corrections of a sold certificate: balance adjustments and the transfer of a whole
balance onto another certificate (a damaged card replaced at a POS, or the next one from the
pool), each with a second approver when it would take what the certificate moved without one
within ``ADJUST_APPROVAL_WINDOW`` above ``ADJUST_APPROVAL_LIMIT``.

The rules are the domain's (:class:`models.domain.Approval` and its ``Adjustment`` and
``PendingTransfer``, ``needs_second_approval``, ``Certificate.adjust``, ``transfer_out`` and
``transfer_in``); these handlers load and lock the rows, call them, and
write the change, its ledger rows, its audit rows and its stream events in one unit of work.
:data:`models.service.messagebus.COMMAND_HANDLERS` maps their commands to them.
"""
from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from config import get_settings
from models.domain.adjustment import Adjustment, Approval, needs_second_approval, transfer_expiry
from models.domain.commands import (
    Adjust,
    ApproveAdjustment,
    ApproveTransfer,
    Cancel,
    Context,
    Lock,
    RejectAdjustment,
    RejectTransfer,
    Transfer,
    Unlock,
)
from models.domain.errors import DomainError
from models.domain.money import ZERO, fmt_money, valid_code
from models.domain.timeutil import iso
from models.service.handlers.pool import check_low_water, sale_cvc
from models.service.unit_of_work import UnitOfWork, change_certificate
from models.store.db import row_by
from models.store.queries import adjustment_view, transfer_request_view
from models.store.repository import (
    adjustment_from,
    certificate_view_of,
    moved_without_second_approval,
    pending_transfer_from,
    pick_available,
    to_domain,
)
from models.store.tables import BalanceAdjustment, CertificateTransfer, GiftCertificate, TransferRequest


def lock(cmd: Lock, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, cert: cert.lock(cmd.reason))


def unlock(cmd: Unlock, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, cert: cert.unlock())


def cancel(cmd: Cancel, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, cert: cert.cancel(cmd.reason), end_holds=True,
                              cancel_reason=cmd.reason)


#: Kind of the certificate a transfer takes from the pool (a printed card is named with ``to``).
POOL_KIND = "ELECTRONIC"


def _result(record: BalanceAdjustment, row: GiftCertificate, now: dt.datetime, available: Decimal) -> dict:
    view = adjustment_view(record, row.code, now)
    view.update(remainingBalance=fmt_money(row.remaining_balance), available=fmt_money(available),
                certificateStatus=row.status)
    return view


def _moved_lately(uow: UnitOfWork, row: GiftCertificate) -> Decimal:
    """What ``row`` moved without a second approver within ``ADJUST_APPROVAL_WINDOW`` (read
    under the certificate's lock, so two requests at once cannot both pass under the limit)."""
    window = dt.timedelta(seconds=get_settings().adjust_approval_window_seconds)
    return moved_without_second_approval(row.id, uow.now - window)


def adjust(cmd: Adjust, ctx: Context) -> dict:
    """Applied at once while it keeps the certificate's moves within the approval limit
    (``adjust`` event), else recorded as PENDING_APPROVAL (audited; nothing moves until a
    second admin approves)."""
    settings = get_settings()

    with UnitOfWork(ctx) as uow:
        row, cert, before = uow.certificate(cmd.code)
        uow.end_holds(row, cert, overdue_only=True)
        cert.check_adjustment(cmd.direction, cmd.amount, uow.now)
        adjustment = Adjustment.request(
            "adj-" + uuid.uuid4().hex, cmd.direction, cmd.amount, cmd.reason, ctx.person, uow.now,
            settings.adjust_approval_limit, dt.timedelta(seconds=settings.adjust_approval_ttl_seconds),
            _moved_lately(uow, row))
        pending = adjustment.status == "PENDING_APPROVAL"
        record = BalanceAdjustment.create(
            id=adjustment.id, certificate=row.id, direction=adjustment.direction,
            amount=adjustment.amount, currency=row.currency, reason=adjustment.reason,
            comment=cmd.comment, needs_approval=pending, status=adjustment.status,
            requested_by=ctx.actor, requested_identity=ctx.person, request_id=ctx.request_id,
            requested_at=uow.now, expires_at=adjustment.expires_at,
            decided_at=None if pending else uow.now)
        if not pending:
            cert.adjust(adjustment, uow.now)
        uow.save(row, cert, before)
        if pending:
            uow.audit("adjust.requested", row, before=before, after=before, details={
                "adjustmentId": adjustment.id, "direction": adjustment.direction,
                "amount": fmt_money(adjustment.amount), "reason": adjustment.reason,
                "expiresAt": iso(adjustment.expires_at)})
        return _result(record, row, uow.now, cert.available)


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


def _decide(uow: UnitOfWork, record, row: GiftCertificate, approval: Approval, decide) -> bool:
    """Run the domain's decision on ``approval`` (an adjustment or a pending transfer, loaded
    from ``record``) and record who decided. One found past its time is recorded EXPIRED and
    refused once that is committed: returns False, and the use case returns at once."""
    action = "adjust" if approval.KIND == "ADJUSTMENT" else "transfer"
    try:
        decide(approval)
    except DomainError as refused:
        if refused.code == f"{approval.KIND}_EXPIRED" and approval.expire(uow.now):
            record.status, record.decided_at = approval.status, uow.now
            record.save()
            uow.audit(f"{action}.expired", row, details={f"{action}Id": record.id,
                                                         "expiresAt": iso(record.expires_at)})
            uow.commit_then_refuse(refused)
            return False
        raise
    record.status, record.decided_at = approval.status, uow.now
    record.decided_by, record.decided_identity = uow.ctx.actor, uow.ctx.person
    return True


def approve_adjustment(cmd: ApproveAdjustment, ctx: Context) -> dict:
    """Four eyes: never by its author; the bounds are checked again against today's balance
    (a refusal leaves it pending, to be rejected or approved later)."""
    with UnitOfWork(ctx) as uow:
        record, row = _lock_adjustment(uow, cmd.adjustment_id)
        adjustment = adjustment_from(record)
        if not _decide(uow, record, row, adjustment, lambda pending: pending.approve(ctx.person, uow.now)):
            return None
        before = certificate_view_of(row)
        cert = to_domain(row)
        uow.end_holds(row, cert, overdue_only=True)
        cert.adjust(adjustment, uow.now)
        record.decision_comment = cmd.comment
        record.save()
        uow.save(row, cert, before)
        return _result(record, row, uow.now, cert.available)


def reject_adjustment(cmd: RejectAdjustment, ctx: Context) -> dict:
    with UnitOfWork(ctx) as uow:
        record, row = _lock_adjustment(uow, cmd.adjustment_id)
        if not _decide(uow, record, row, adjustment_from(record),
                       lambda pending: pending.reject(ctx.person, uow.now)):
            return None
        record.decision_comment = cmd.comment
        record.save()
        view = certificate_view_of(row)
        uow.audit("adjust.rejected", row, before=view, after=view, details={
            "adjustmentId": record.id, "requestedBy": record.requested_by})
        return _result(record, row, uow.now, to_domain(row).available)


def _certificate_id(code: str, role: str) -> int:
    found = (GiftCertificate.select(GiftCertificate.id).where(GiftCertificate.code == code).scalar()
             if valid_code(code) else None)
    if found is None:
        raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code, role=role)
    return found


def _lock_by_id(certificate_id: int) -> GiftCertificate:
    row = row_by(GiftCertificate, "id", certificate_id, lock=True)
    if row is None:  # an id this transaction just read: gone only if the schema's rules broke
        raise LookupError(f"certificate {certificate_id} vanished")
    return row


def _lock_transfer(source_id: int, target_code: str | None
                   ) -> tuple[GiftCertificate, GiftCertificate | None]:
    """The source and the named target, locked in primary-key order (two transfers never wait
    on each other in a cycle). With no target named, only the source: the pool's is then taken
    with ``SKIP LOCKED``, which never waits, so no lock cycle can form either way."""
    if target_code is None:
        return _lock_by_id(source_id), None
    target_id = _certificate_id(target_code, "to")
    locked = {cid: _lock_by_id(cid) for cid in sorted((source_id, target_id))}
    return locked[source_id], locked[target_id]


def transfer(cmd: Transfer, ctx: Context) -> dict:
    """Move the whole balance onto another certificate (:func:`_carry_out`) at once, unless it
    needs a second admin: then it waits as a PENDING_APPROVAL ``transfer_request``."""
    settings = get_settings()

    with UnitOfWork(ctx) as uow:
        source_id = _certificate_id(cmd.code, "from")
        if cmd.to == cmd.code:  # a valid request about a certificate that exists: a conflict
            raise DomainError("TARGET_NOT_AVAILABLE", "a certificate cannot be transferred onto itself",
                              to=cmd.to)
        source, target = _lock_transfer(source_id, cmd.to)
        source_before = certificate_view_of(source)
        cert = to_domain(source)
        uow.end_holds(source, cert, overdue_only=True)
        amount = cert.transferable(uow.now)  # refusals about the source come first
        if not needs_second_approval(amount, settings.adjust_approval_limit, _moved_lately(uow, source)):
            return _carry_out(uow, source, cert, source_before, target, amount, cmd.reason,
                              "trf-" + uuid.uuid4().hex, approved_by=None)
        if target is not None:  # say now what would refuse the approval later
            to_domain(target, ZERO).check_transfer_in(
                cert.currency, amount, transfer_expiry(cert.expires_at, target.batch_expires_at), uow.now)
        uow.save(source, cert, source_before)  # holds found overdue on the way ended
        record = TransferRequest.create(
            id="trf-" + uuid.uuid4().hex, from_certificate=source.id, to_code=cmd.to, amount=amount,
            currency=source.currency, reason=cmd.reason, status="PENDING_APPROVAL",
            requested_by=ctx.actor, requested_identity=ctx.person, request_id=ctx.request_id,
            requested_at=uow.now,
            expires_at=uow.now + dt.timedelta(seconds=settings.adjust_approval_ttl_seconds))
        view = certificate_view_of(source)
        uow.audit("transfer.requested", source, before=view, after=view, details={
            "transferId": record.id, "to": cmd.to, "amount": fmt_money(amount), "reason": cmd.reason,
            "expiresAt": iso(record.expires_at)})
        return transfer_request_view(record, source.code, uow.now)


def _carry_out(uow: UnitOfWork, source: GiftCertificate, cert, source_before: dict,
               target: GiftCertificate | None, amount: Decimal, reason: str, transfer_id: str,
               approved_by: str | None) -> dict:
    """One transaction: the source gives its whole balance (CANCELLED, lockReason TRANSFERRED),
    the target takes it (ISSUED, nominal = balance = the amount), one ``transfer`` event each,
    a ledger row each under one transfer id, and the target's CVC goes out as for a sale."""
    if target is None:
        target = pick_available(amount, cert.currency, POOL_KIND)
        if target is None:
            raise DomainError("POOL_EMPTY", "no certificate available to transfer onto",
                              nominal=fmt_money(amount), currency=cert.currency)
    target_before = certificate_view_of(target)
    received = to_domain(target, ZERO)
    received.transfer_in(source.code, cert.currency, amount, reason, transfer_id,
                         transfer_expiry(cert.expires_at, target.batch_expires_at), uow.now)
    cert.transfer_out(target.code, reason, transfer_id, uow.now)
    CertificateTransfer.create(
        id=transfer_id, from_certificate=source.id, to_certificate=target.id, amount=amount,
        currency=source.currency, reason=reason, actor=uow.ctx.actor, request_id=uow.ctx.request_id,
        created_at=uow.now, approved_by=approved_by)
    uow.save(source, cert, source_before, cancel_reason=reason)
    # the buyer keeps the sale: the target answers to the source's order (and its phone)
    uow.save(target, received, target_before, issued_at=uow.now, channel=source.channel,
             order_id=source.order_id, line_id=None, reserved_at=None, reserved_until=None,
             **sale_cvc(target, received))
    target_view = certificate_view_of(target)
    check_low_water(uow, target)  # the target left the pool, as a reservation would
    return {"transferId": transfer_id, "status": "APPLIED", "fromCode": source.code,
            "toCode": target.code, "amount": fmt_money(amount), "currency": source.currency.strip(),
            "reason": reason, "approvedBy": approved_by, "source": certificate_view_of(source, ZERO),
            "target": dict(target_view, available=target_view["remainingBalance"])}


def _lock_transfer_request(transfer_id: str) -> tuple[TransferRequest, GiftCertificate, GiftCertificate | None]:
    """The pending transfer with its certificates locked first, then itself (as adjustments)."""
    found = TransferRequest.get_or_none(TransferRequest.id == transfer_id)
    if found is None:
        raise DomainError("TRANSFER_NOT_FOUND", "no such transfer", transferId=transfer_id)
    source, target = _lock_transfer(found.from_certificate_id, found.to_code)
    record = TransferRequest.select().where(TransferRequest.id == transfer_id).for_update().get()
    return record, source, target


def approve_transfer(cmd: ApproveTransfer, ctx: Context) -> dict:
    """Four eyes: another admin than its author carries the transfer out, if the source's
    balance is still the amount asked for (a refusal leaves it pending)."""
    with UnitOfWork(ctx) as uow:
        record, source, target = _lock_transfer_request(cmd.transfer_id)
        if not _decide(uow, record, source, pending_transfer_from(record),
                       lambda pending: pending.approve(ctx.person, uow.now)):
            return None
        source_before = certificate_view_of(source)
        cert = to_domain(source)
        uow.end_holds(source, cert, overdue_only=True)
        amount = cert.transferable(uow.now, approved=record.amount)
        result = _carry_out(uow, source, cert, source_before, target, amount, record.reason,
                            record.id, approved_by=ctx.actor)
        record.decision_comment = cmd.comment
        record.save()
        return dict(result, requestedBy=record.requested_by)


def reject_transfer(cmd: RejectTransfer, ctx: Context) -> dict:
    with UnitOfWork(ctx) as uow:
        record, source, _target = _lock_transfer_request(cmd.transfer_id)
        if not _decide(uow, record, source, pending_transfer_from(record),
                       lambda pending: pending.reject(ctx.person, uow.now)):
            return None
        record.decision_comment = cmd.comment
        record.save()
        view = certificate_view_of(source)
        uow.audit("transfer.rejected", source, before=view, after=view, details={
            "transferId": record.id, "requestedBy": record.requested_by})
        return transfer_request_view(record, source.code, uow.now)
