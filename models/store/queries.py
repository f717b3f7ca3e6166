"""Read-only queries: certificate search, the balance ledger, the audit trail, support's lists,
the pool (and its gauge), and what the health checks and ``/metrics`` read from Redis.

Nothing here changes a row; pages come from Peewee's ``paginate`` (LIMIT/OFFSET in SQL).
"""
from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

from peewee import fn

from config import get_settings
from models.domain.errors import DomainError
from models.domain.money import ZERO, fmt_money, valid_code
from models.domain.states import HoldStatus, Status
from models.domain.timeutil import iso, utcnow
from models.store import cache, gauges, liveness
from models.store.db import db
from models.store.repository import active_held, adjustment_from, certificate_view_of, pending_transfer_from
from models.store.tables import (
    AuditLog,
    AuthorizationHold,
    BalanceAdjustment,
    GiftCertificate,
    Operation,
    TransferRequest,
)

log = logging.getLogger("gcp.queries")


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
    query = GiftCertificate.select()
    if status:
        query = query.where(GiftCertificate.status == Status(status).value)
    if channel:
        query = query.where(GiftCertificate.channel == channel)
    if order_id:
        query = query.where(GiftCertificate.order_id == order_id)
    if issued_from:
        query = query.where(GiftCertificate.issued_at >= issued_from)
    if issued_to:
        query = query.where(GiftCertificate.issued_at < issued_to)
    total = query.count()
    rows = list(query.order_by(GiftCertificate.id.desc()).paginate(page, page_size))
    held = _held([row.id for row in rows])
    items = [certificate_view_of(row, held.get(row.id, ZERO)) for row in rows]
    return {"items": items, "page": page, "pageSize": page_size, "total": total}


def operations(code: str, page: int = 1, page_size: int = 100) -> dict:
    """The certificate's balance ledger, oldest first."""
    row = _certificate(code)
    query = Operation.select().where(Operation.certificate == row.id)
    total = query.count()
    items = [{"id": op.id, "kind": op.kind, "amount": fmt_money(op.amount),
              "balanceAfter": fmt_money(op.balance_after), "currency": op.currency.strip(),
              "authorizationId": op.authorization_id, "adjustmentId": op.adjustment_id,
              "transferId": op.transfer_id, "orderId": op.order_id,
              "channel": op.channel, "createdAt": iso(op.created_at)}
             for op in query.order_by(Operation.id).paginate(page, page_size)]
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
    query = AuditLog.select().where(AuditLog.certificate == row.id)
    total = query.count()
    items = [{"id": entry.id, "action": entry.action, "actor": entry.actor, "channel": entry.channel,
              "requestId": entry.request_id, "correlationId": entry.correlation_id,
              "before": entry.before, "after": entry.after, "details": entry.details,
              "at": iso(entry.created_at)}
             for entry in query.order_by(AuditLog.id).paginate(page, page_size)]
    return {"code": row.code, "items": items, "page": page, "pageSize": page_size, "total": total}


def adjustments(status: str | None = None, code: str | None = None, page: int = 1,
                page_size: int = 20, now: dt.datetime | None = None) -> dict:
    """Balance adjustments, newest first, for support. A pending one past its time is listed
    (and filtered) as EXPIRED, whether or not anyone tried to decide it since."""
    now = now or utcnow()
    query = _approvals(BalanceAdjustment, BalanceAdjustment.certificate, status, code, now)
    total = query.count()
    rows = (query.order_by(BalanceAdjustment.requested_at.desc(), BalanceAdjustment.id.desc())
            .paginate(page, page_size))
    items = [adjustment_view(record, record.certificate.code, now) for record in rows]
    return {"items": items, "page": page, "pageSize": page_size, "total": total}


def transfers(status: str | None = None, code: str | None = None, page: int = 1,
              page_size: int = 20, now: dt.datetime | None = None) -> dict:
    """Transfers that needed a second admin, newest first, for support (a pending one past
    its time is listed, and filtered, as EXPIRED)."""
    now = now or utcnow()
    query = _approvals(TransferRequest, TransferRequest.from_certificate, status, code, now)
    total = query.count()
    rows = (query.order_by(TransferRequest.requested_at.desc(), TransferRequest.id.desc())
            .paginate(page, page_size))
    items = [transfer_request_view(record, record.from_certificate.code, now) for record in rows]
    return {"items": items, "page": page, "pageSize": page_size, "total": total}


def _approvals(table, certificate, status: str | None, code: str | None, now: dt.datetime):
    """The rows of ``table`` (adjustments or transfers) with their certificate's code, by
    ``status`` (a pending one past its ``expires_at`` counts as EXPIRED) and ``code``."""
    query = (table.select(table, GiftCertificate.code)
             .join(GiftCertificate, on=(certificate == GiftCertificate.id)))
    pending = table.status == "PENDING_APPROVAL"
    if status == "PENDING_APPROVAL":
        query = query.where(pending & (table.expires_at > now))
    elif status == "EXPIRED":
        query = query.where((table.status == "EXPIRED") | (pending & (table.expires_at <= now)))
    elif status:
        query = query.where(table.status == status)
    if code:
        query = query.where(GiftCertificate.code == code)
    return query


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
        return None if row is None else certificate_view_of(row, active_held(row.id))
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
    segments = [{"nominal": fmt_money(nominal), "currency": currency.strip(), "kind": kind,
                 "available": count} for nominal, currency, kind, count in rows]
    return {"available": sum(segment["available"] for segment in segments), "byNominal": segments}


def any_certificate() -> bool:
    """Whether any certificate was ever loaded (``make run`` seeds a demo pool when none was)."""
    return GiftCertificate.select().exists()


def pool_view() -> dict:
    """``GET /pool``: the AVAILABLE certificates by nominal, currency and kind, and the
    low-water mark (``gcp_pool_available`` on /metrics counts the same at scrape time)."""
    summary = pool_summary()
    return {**summary, "lowWaterMark": get_settings().pool_low_water_mark}


def refresh_pool_gauge(max_age: float = 0.0) -> None:
    """The pool changed (a batch was loaded): the next scrape counts ``gcp_pool_available``
    again instead of serving its cached count (``max_age`` is kept for the callers; unused)."""
    gauges.forget()


def ping_redis() -> None:
    """Readiness: Redis answers (raises when it does not)."""
    cache.client().ping()


def process_heartbeats() -> dict[str, dict]:
    """Readiness: per long-running process, the age of its newest heartbeat, its live instances
    and whether it counts as up (read from Redis; see :mod:`models.store.liveness`)."""
    return liveness.heartbeats()


def metrics_text() -> tuple[bytes, str]:
    """``/metrics``: this process's metrics, and every process's heartbeat age and outages read
    from Redis, with their content type."""
    return liveness.metrics_payload(gauges.SharedStateCollector())
