"""Read-only queries: certificate search, the balance ledger, the audit trail.

Nothing here changes a row; pages come from Peewee's ``paginate`` (LIMIT/OFFSET in SQL).
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

from peewee import fn

from models.domain.errors import DomainError
from models.domain.money import ZERO, fmt_money, valid_code
from models.domain.states import HoldStatus, Status
from models.domain.timeutil import iso, utcnow
from models.store import cache
from models.store.repository import active_held, adjustment_from, pending_transfer_from, snapshot
from models.store.tables import (
    AuditLog,
    AuthorizationHold,
    BalanceAdjustment,
    GiftCertificate,
    Operation,
    TransferRequest,
)


def _certificate(code: str) -> GiftCertificate:
    row = GiftCertificate.get_or_none(GiftCertificate.code == code) if valid_code(code) else None
    if row is None:
        raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code if valid_code(code) else None)
    return row


def _held(ids: list[int]) -> dict[int, Decimal]:
    if not ids:
        return {}
    rows = (AuthorizationHold.select(AuthorizationHold.certificate, fn.SUM(AuthorizationHold.amount))
            .where(AuthorizationHold.certificate.in_(ids) & (AuthorizationHold.status == HoldStatus.ACTIVE.value))
            .group_by(AuthorizationHold.certificate).tuples())
    return {cid: Decimal(total) for cid, total in rows}


def search_certificates(status: str | None = None, channel: str | None = None,
                        order_id: str | None = None, issued_from: dt.datetime | None = None,
                        issued_to: dt.datetime | None = None, page: int = 1,
                        page_size: int = 20) -> dict:
    """Certificates matching every given filter, newest first, one page of them.

    Returns ``{"items": [...], "page", "pageSize", "total"}``; items are the certificate views.
    """
    C = GiftCertificate
    q = C.select()
    if status:
        q = q.where(C.status == Status(status).value)
    if channel:
        q = q.where(C.channel == channel)
    if order_id:
        q = q.where(C.order_id == order_id)
    if issued_from:
        q = q.where(C.issued_at >= issued_from)
    if issued_to:
        q = q.where(C.issued_at < issued_to)
    total = q.count()
    rows = list(q.order_by(C.id.desc()).paginate(page, page_size))
    held = _held([r.id for r in rows])
    items = [snapshot(r, held.get(r.id, ZERO)) for r in rows]
    return {"items": items, "page": page, "pageSize": page_size, "total": total}


def operations(code: str, page: int = 1, page_size: int = 100) -> dict:
    """The certificate's balance ledger, oldest first."""
    row = _certificate(code)
    q = Operation.select().where(Operation.certificate == row.id)
    total = q.count()
    items = [{"id": op.id, "kind": op.kind, "amount": fmt_money(op.amount),
              "balanceAfter": fmt_money(op.balance_after), "currency": op.currency.strip(),
              "authorizationId": op.authorization_id, "adjustmentId": op.adjustment_id,
              "transferId": op.transfer_id, "orderId": op.order_id,
              "channel": op.channel, "createdAt": iso(op.created_at)}
             for op in q.order_by(Operation.id).paginate(page, page_size)]
    return {"code": row.code, "items": items, "page": page, "pageSize": page_size, "total": total}


def ledger_sum(code: str) -> Decimal:
    """The sum of the certificate's ledger rows (equals its remainingBalance)."""
    row = _certificate(code)
    total = (Operation.select(fn.COALESCE(fn.SUM(Operation.amount), 0))
             .where(Operation.certificate == row.id).scalar())
    return Decimal(total).quantize(Decimal("0.01"))


def audit_trail(code: str, page: int = 1, page_size: int = 100) -> dict:
    """Every recorded change and CVC disclosure of the certificate, oldest first."""
    row = _certificate(code)
    q = AuditLog.select().where(AuditLog.certificate == row.id)
    total = q.count()
    items = [{"id": a.id, "action": a.action, "actor": a.actor, "channel": a.channel,
              "requestId": a.request_id, "correlationId": a.correlation_id, "before": a.before,
              "after": a.after, "details": a.details, "at": iso(a.created_at)}
             for a in q.order_by(AuditLog.id).paginate(page, page_size)]
    return {"code": row.code, "items": items, "page": page, "pageSize": page_size, "total": total}


def adjustments(status: str | None = None, code: str | None = None, page: int = 1,
                page_size: int = 20, now: dt.datetime | None = None) -> dict:
    """Balance adjustments, newest first, for support. A pending one past its time is listed
    (and filtered) as EXPIRED, whether or not anyone tried to decide it since."""
    now = now or utcnow()
    A = BalanceAdjustment
    q = A.select(A, GiftCertificate.code).join(GiftCertificate, on=(A.certificate == GiftCertificate.id))
    lapsed = (A.status == "PENDING_APPROVAL") & (A.expires_at <= now)
    if status == "PENDING_APPROVAL":
        q = q.where((A.status == "PENDING_APPROVAL") & (A.expires_at > now))
    elif status == "EXPIRED":
        q = q.where((A.status == "EXPIRED") | lapsed)
    elif status:
        q = q.where(A.status == status)
    if code:
        q = q.where(GiftCertificate.code == code)
    total = q.count()
    rows = q.order_by(A.requested_at.desc(), A.id.desc()).paginate(page, page_size)
    items = [adjustment_view(r, r.certificate.code, now) for r in rows]
    return {"items": items, "page": page, "pageSize": page_size, "total": total}


def transfers(status: str | None = None, code: str | None = None, page: int = 1,
              page_size: int = 20, now: dt.datetime | None = None) -> dict:
    """Transfers that needed a second admin, newest first, for support (a pending one past
    its time is listed, and filtered, as EXPIRED)."""
    now = now or utcnow()
    T = TransferRequest
    q = T.select(T, GiftCertificate.code).join(GiftCertificate, on=(T.from_certificate == GiftCertificate.id))
    lapsed = (T.status == "PENDING_APPROVAL") & (T.expires_at <= now)
    if status == "PENDING_APPROVAL":
        q = q.where((T.status == "PENDING_APPROVAL") & (T.expires_at > now))
    elif status == "EXPIRED":
        q = q.where((T.status == "EXPIRED") | lapsed)
    elif status:
        q = q.where(T.status == status)
    if code:
        q = q.where(GiftCertificate.code == code)
    total = q.count()
    rows = q.order_by(T.requested_at.desc(), T.id.desc()).paginate(page, page_size)
    items = [transfer_request_view(r, r.from_certificate.code, now) for r in rows]
    return {"items": items, "page": page, "pageSize": page_size, "total": total}


def transfer_request_view(record: TransferRequest, code: str, now: dt.datetime) -> dict:
    """A transfer that needed a second admin, as support sees it."""
    return {
        "transferId": record.id, "status": pending_transfer_from(record).effective_status(now),
        "fromCode": code, "to": record.to_code, "amount": fmt_money(record.amount),
        "currency": record.currency.strip(), "reason": record.reason,
        "requestedBy": record.requested_by, "requestedAt": iso(record.requested_at),
        "expiresAt": iso(record.expires_at), "decidedBy": record.decided_by,
        "decidedAt": iso(record.decided_at), "decisionComment": record.decision_comment,
    }


def adjustment_view(record: BalanceAdjustment, code: str, now: dt.datetime) -> dict:
    """An adjustment as support sees it (a pending one past its time shows EXPIRED)."""
    return {
        "adjustmentId": record.id, "code": code, "direction": record.direction,
        "amount": fmt_money(record.amount), "currency": record.currency.strip(),
        "reason": record.reason, "comment": record.comment,
        "status": adjustment_from(record).effective_status(now),
        "requestedBy": record.requested_by, "requestedAt": iso(record.requested_at),
        "expiresAt": iso(record.expires_at), "decidedBy": record.decided_by,
        "decidedAt": iso(record.decided_at), "decisionComment": record.decision_comment,
    }


def certificate_view(code: str) -> dict:
    """The certificate as ``GET /certificates/{code}`` returns it (cached, never stale)."""
    if not valid_code(code):
        raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code)

    def load() -> dict | None:
        row = GiftCertificate.get_or_none(GiftCertificate.code == code)
        return None if row is None else snapshot(row, active_held(row.id))
    view = cache.get_or_load(code, load)
    if view is None:
        raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code)
    return view


def pool_summary() -> dict:
    rows = (GiftCertificate.select(GiftCertificate.nominal, GiftCertificate.currency,
                                   GiftCertificate.kind, fn.COUNT(GiftCertificate.id).alias("n"))
            .where(GiftCertificate.status == Status.AVAILABLE.value)
            .group_by(GiftCertificate.nominal, GiftCertificate.currency, GiftCertificate.kind)
            .order_by(GiftCertificate.currency, GiftCertificate.kind, GiftCertificate.nominal.asc(nulls="LAST"))
            .tuples())
    by = [{"nominal": fmt_money(n), "currency": c.strip(), "kind": k, "available": cnt}
          for n, c, k, cnt in rows]
    return {"available": sum(b["available"] for b in by), "byNominal": by}
