"""Loading the domain's objects from their rows, and the view of a certificate the channels see.

Reads only: the unit of work writes (``models.service.unit_of_work``).
"""
from __future__ import annotations

import datetime as dt
import functools
from decimal import Decimal

from models.domain import correlation
from models.domain.adjustment import Adjustment, PendingTransfer
from models.domain.certificate import Certificate
from models.domain.hold import Hold
from models.domain.money import available_of, fmt_money
from models.domain.order import Payment
from models.domain.states import HoldStatus, NotificationStatus, Status
from models.domain.timeutil import iso
from models.store.db import db, row_by
from models.store.tables import (
    AuthorizationHold,
    BalanceAdjustment,
    ClientProfile,
    GiftCertificate,
    OrderPayment,
    SalesOrder,
    TransferRequest,
)


def certificate_view_of(row: GiftCertificate, held: Decimal | None = None) -> dict:
    """The certificate as channels see it (never the CVC); with ``held`` (its active holds),
    its ``available`` too."""
    view = {
        "code": row.code,
        "status": row.status,
        "nominal": fmt_money(row.nominal),
        "remainingBalance": fmt_money(row.remaining_balance),
        "currency": row.currency,
        "kind": row.kind,
        "channel": row.channel,
        "orderId": row.order_id,
        "issuedAt": iso(row.issued_at),
        "expiresAt": iso(row.expires_at),
        "lockReason": row.lock_reason,
        "notificationStatus": row.notification_status,
    }
    if held is not None:
        view["available"] = fmt_money(available_of(row.remaining_balance, held))
    return view


#: The reads of a certificate's holds on every authorize, capture, void and balance read, built
#: once: Peewee's query builder cost more of the web's CPU than the statements themselves (18%
#: of the web's samples during authorize).
_HELD_SQL = ('SELECT COALESCE(SUM("amount"), 0) FROM "authorization_hold"'
             ' WHERE "certificate_id" = %s AND "status" = \'ACTIVE\'')


def active_held(certificate_id: int) -> Decimal:
    total = db.execute_sql(_HELD_SQL, (certificate_id,)).fetchone()[0]
    return Decimal(total).quantize(Decimal("0.01"))


@functools.lru_cache(maxsize=None)
def active_holds_sql(overdue: bool) -> str:
    """A certificate's active holds (``overdue``: past a time), oldest id first, locked; built
    once. Parameters: the certificate id, then (``overdue``) the time."""
    query = AuthorizationHold.select().where((AuthorizationHold.certificate == -1)
                                             & (AuthorizationHold.status == HoldStatus.ACTIVE.value))
    if overdue:
        query = query.where(AuthorizationHold.expires_at <= dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
    sql, params = query.order_by(AuthorizationHold.id).for_update().sql()
    if params[:2] != [-1, HoldStatus.ACTIVE.value]:  # pragma: no cover - the order end_holds passes
        raise RuntimeError(f"unexpected parameters of the holds query: {params}")
    return sql


def to_domain(row: GiftCertificate, held: Decimal | None = None) -> Certificate:
    return Certificate(
        code=row.code, status=Status(row.status), currency=row.currency.strip(),
        open_value=row.open_value, nominal=row.nominal, balance=row.remaining_balance,
        held=active_held(row.id) if held is None else held,
        status_before_lock=Status(row.status_before_lock) if row.status_before_lock else None,
        lock_reason=row.lock_reason, expires_at=row.expires_at,
        cvc_failed_attempts=row.cvc_failed_attempts, kind=row.kind,
        notification=NotificationStatus(row.notification_status) if row.notification_status else None,
        notification_channel=row.notification_channel, cvc_copy=row.cvc_encrypted is not None,
        cvc_disclosable=row.cvc_disclosable, channel=row.channel, order_id=row.order_id,
        line_id=row.line_id, reserved_at=row.reserved_at, reserved_until=row.reserved_until)


def to_hold(h: AuthorizationHold) -> Hold:
    return Hold(h.id, h.amount, h.expires_at, HoldStatus(h.status), h.captured_amount, h.channel)


def order_line(channel: str, order_id: str, line_id: str) -> GiftCertificate | None:
    return (GiftCertificate.select()
            .where((GiftCertificate.channel == channel) & (GiftCertificate.order_id == order_id)
                   & (GiftCertificate.line_id == line_id)).first())


def pick_available(nominal: Decimal, currency: str, kind: str | None = "ELECTRONIC",
                   code: str | None = None) -> GiftCertificate | None:
    """The next pool certificate for ``nominal``, locked, skipping rows others hold."""
    q = GiftCertificate.select().where(GiftCertificate.status == Status.AVAILABLE.value)
    if code is not None:
        return q.where(GiftCertificate.code == code).limit(1).for_update(skip_locked=True).first()
    q = q.where(GiftCertificate.currency == currency)
    if kind:
        q = q.where(GiftCertificate.kind == kind)
    # A certificate printed for this nominal first, then open-value ones (no nominal while in
    # the pool: constraint open_value_unpriced_in_pool), oldest first. Two queries, each the
    # first entries of one index (gift_certificate_pool_idx, gift_certificate_pool_open_idx);
    # one query with "nominal = x OR open_value" read and sorted the whole pool (671 ms at
    # 1,000,000 rows). Loading order is (created_at, id), not id: by id the planner walks the
    # primary key past every certificate sold so far (migration 0007).
    for which in ((GiftCertificate.nominal == nominal) & ~GiftCertificate.open_value,
                  GiftCertificate.nominal.is_null() & GiftCertificate.open_value):
        row = (q.where(which).order_by(GiftCertificate.created_at, GiftCertificate.id).limit(1)
               .for_update(skip_locked=True).first())
        if row is not None:
            return row
    return None


def payment_seen(order_id: str | None, channel: str | None) -> bool:
    """Payments reported money for this order on this channel (the rule:
    ``correlation.payment_seen``); another channel's payment never pins a reservation."""
    if not order_id:
        return False
    rows = (OrderPayment.select(OrderPayment.event_id, OrderPayment.payment_id, OrderPayment.event_type,
                                OrderPayment.amount, OrderPayment.currency)
            .where((OrderPayment.order_id == order_id) & (OrderPayment.channel == channel)).tuples())
    return correlation.payment_seen([Payment(*r) for r in rows])


def adjustment_from(record: BalanceAdjustment) -> Adjustment:
    return Adjustment(record.id, record.direction, record.amount, record.reason,
                      record.requested_identity, record.expires_at, record.status,
                      record.decided_identity)


def pending_transfer_from(record: TransferRequest) -> PendingTransfer:
    return PendingTransfer(record.id, record.amount, record.to_code, record.reason,
                           record.requested_identity, record.expires_at, record.status,
                           record.decided_identity)


_MOVED_LATELY = """
SELECT coalesce(sum(amount), 0) FROM (
    SELECT amount FROM balance_adjustment
    WHERE certificate_id = %(id)s AND NOT needs_approval AND requested_at > %(since)s
    UNION ALL
    SELECT amount FROM certificate_transfer
    WHERE from_certificate_id = %(id)s AND approved_by IS NULL AND created_at > %(since)s
    UNION ALL
    SELECT amount FROM certificate_transfer
    WHERE to_certificate_id = %(id)s AND approved_by IS NULL AND created_at > %(since)s) moved"""


def moved_without_second_approval(certificate_id: int, since) -> Decimal:
    """What support moved on the certificate since ``since`` without a second approver:
    adjustments applied at once (credits and debits alike) and transfers in or out applied at
    once. The four-eyes limit counts it (``ADJUST_APPROVAL_WINDOW``)."""
    return db.execute_sql(_MOVED_LATELY, {"id": certificate_id, "since": since}).fetchone()[0]


def phone_for(certificate) -> str | None:
    """The buyer's phone: the order's customer phone, else the CRM profile's."""
    if not certificate.order_id:
        return None
    order = row_by(SalesOrder, "order_id", certificate.order_id)
    customer = (order.customer or {}) if order is not None else {}
    if customer.get("phone"):
        return customer["phone"]
    if customer.get("clientId"):
        profile = ClientProfile.get_or_none(ClientProfile.client_id == customer["clientId"])
        if profile is not None:
            return profile.phone
    return None
