"""The pool's use cases: reserve a certificate for an order line, release it, sell it (issue),
and expire; with the low-water alert a reservation may raise. Loading the pool is
:mod:`models.service.handlers.batches`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from peewee import IntegrityError

from config import get_settings
from models.domain.certificate import Certificate
from models.domain.commands import Context, ExpireCertificate, ExpireReservation, Issue, Release, Reserve
from models.domain.errors import DomainError
from models.domain.events import Event
from models.domain.money import ZERO, fmt_money
from models.domain.policy import issue_expiry, reservation_lapsed
from models.domain.pool import LowWater, low_water_alert, low_water_change, pool_level, segment_key, with_pool_level
from models.domain.states import EventType, Status
from models.domain.timeutil import iso
from models.service.unit_of_work import UnitOfWork, change_certificate
from models.store import cvc as cvc_secret
from models.store import pool as pool_store
from models.store.repository import certificate_view_of, order_line, payment_seen, pick_available, to_domain
from models.store.tables import GiftCertificate


def reserve(cmd: Reserve, ctx: Context) -> dict:
    """Reserve the next pool certificate (or ``code``) for an order line.

    Returns the reservation with ``created``; the same order line again returns its
    certificate (``created`` false). An empty pool commits an ``issue.blocked`` event, then
    refuses (``POOL_EMPTY``).
    """
    for _ in range(3):
        existing = order_line(cmd.channel, cmd.order_id, cmd.line_id)
        if existing is not None:
            return {**_reservation_view(existing), "created": False}
        try:
            with UnitOfWork(ctx) as uow:
                view = _reserve(uow, cmd)
        except IntegrityError:  # a concurrent call reserved this order line first
            continue
        return {**view, "created": True}
    raise DomainError("ALREADY_RESERVED", "order line is being reserved concurrently")


def _reserve(uow: UnitOfWork, cmd: Reserve) -> dict | None:
    if cmd.code is not None:
        row = pick_available(cmd.nominal, cmd.currency, None, cmd.code)
        if row is None:
            known = GiftCertificate.get_or_none(GiftCertificate.code == cmd.code)
            if known is None:
                raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=cmd.code)
            raise DomainError("ALREADY_RESERVED", "certificate is not available",
                              status=known.status)
    else:
        row = pick_available(cmd.nominal, cmd.currency)
    if row is None:
        uow.emit(Event(EventType.ISSUE_BLOCKED, "ISSUE_BLOCKED", {
            "orderId": cmd.order_id, "lineId": cmd.line_id, "nominal": fmt_money(cmd.nominal),
            "currency": cmd.currency, "reason": "POOL_EMPTY",
            "pool": _level(cmd.currency, "ELECTRONIC", cmd.nominal, None)}), None, key=cmd.order_id)
        return uow.commit_then_refuse(DomainError(
            "POOL_EMPTY", "no certificate available for this nominal",
            nominal=fmt_money(cmd.nominal), currency=cmd.currency))
    before = certificate_view_of(row)
    cert = to_domain(row, ZERO)
    cert.reserve(cmd.nominal, cmd.currency, channel=cmd.channel, order_id=cmd.order_id, line_id=cmd.line_id,
                 now=uow.now, until=uow.now + dt.timedelta(seconds=get_settings().reservation_ttl_seconds))
    _add_level(cert, row, leaving=True)
    uow.save(row, cert, before)
    check_low_water(uow, row)  # one `alert` when this takes the pool below the low-water mark
    return _reservation_view(row)


def _level(currency: str, kind: str, nominal, changing_id: int | None, back: int = 0) -> dict:
    """A segment's level after a change in this transaction (``changing_id`` leaves it, or
    comes ``back`` into it), counted under the segment's lock (contract revision 3)."""
    pool_store.lock_segment(segment_key(currency, kind, nominal))
    left, at = pool_store.segment_level(currency, kind, nominal, changing_id)
    counted = at.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return pool_level(currency, kind, nominal, left + back, counted)


def _add_level(cert: Certificate, row: GiftCertificate, leaving: bool) -> None:
    """Put the level of ``row``'s segment after its reservation (or release) into the event
    just recorded."""
    nominal = None if row.open_value else row.nominal
    level = _level(row.currency.strip(), row.kind, nominal, row.id, back=0 if leaving else 1)
    cert.events[-1] = with_pool_level(cert.events[-1], level)


def _reservation_view(row: GiftCertificate) -> dict:
    return {"code": row.code, "status": row.status, "nominal": fmt_money(row.nominal),
            "currency": row.currency.strip(), "reservedUntil": iso(row.reserved_until),
            "orderId": row.order_id, "lineId": row.line_id, "channel": row.channel}


def check_low_water(uow: UnitOfWork, row: GiftCertificate) -> None:
    """After ``row`` left the pool (same transaction): raise one ``alert`` when its segment
    (currency, kind, nominal or open value, as in ``GET /pool``) falls below the low-water mark
    (the rule: :func:`models.domain.pool.low_water_change`).

    The count stops at the mark. It runs under a per-segment transaction lock, so of concurrent
    reservations each counts after the previous ones committed, and the last one sees the
    final count: a crossing is never missed. ``pool_low_water`` remembers that the alert was
    raised; the segment is armed again once a reservation sees it at or above the mark.
    """
    mark = get_settings().pool_low_water_mark
    if mark <= 0:  # no mark: not even a count
        return
    nominal = None if row.open_value else row.nominal
    currency = row.currency.strip()
    segment = segment_key(currency, row.kind, nominal)
    pool_store.lock_segment(segment)
    left = pool_store.available_up_to(currency, row.kind, nominal, row.id, mark)
    change = low_water_change(left, mark, pool_store.is_low(segment))
    if change == LowWater.CROSSED and pool_store.mark_low(segment, uow.now):
        uow.emit(low_water_alert(currency, row.kind, nominal, left, mark), None, key=f"pool:{segment}")
    elif change == LowWater.REARMED:
        pool_store.rearm(segment, uow.now)


def release(cmd: Release, ctx: Context) -> dict:
    with UnitOfWork(ctx) as uow:
        row, cert, before = uow.certificate(cmd.code, ZERO)
        cert.release(cmd.reason)
        _add_level(cert, row, leaving=False)
        uow.save(row, cert, before)
        return certificate_view_of(row)


def expire_reservation(cmd: ExpireReservation, ctx: Context) -> dict | None:
    """Give a lapsed reservation back to the pool, unless a payment was seen (then keep it for
    the issue). Returns the released certificate, or None when it stays as it is."""
    with UnitOfWork(ctx) as uow:
        row = uow.lock_certificate(cmd.code)
        if row.status != Status.RESERVED.value:
            return None
        if not reservation_lapsed(row.reserved_until, uow.now, payment_seen(row.order_id, row.channel)):
            return None
        uow.ctx = dataclasses.replace(uow.ctx, correlation_id=uow.ctx.correlation_id or row.order_id)
        before = certificate_view_of(row)
        cert = to_domain(row, ZERO)
        cert.release("RESERVATION_EXPIRED")
        _add_level(cert, row, leaving=False)
        uow.save(row, cert, before)
        return certificate_view_of(row)


def issue(cmd: Issue, ctx: Context) -> dict:
    """Sell a reserved certificate: CVC, balance, expiry, and the notification request."""
    with UnitOfWork(ctx) as uow:
        row = uow.lock_certificate(cmd.code)
        before = certificate_view_of(row)
        cert = to_domain(row, ZERO)
        cert.issue(issue_expiry(row.batch_expires_at, uow.now, get_settings().certificate_validity_days),
                   cmd.notify)
        uow.save(row, cert, before, issued_at=uow.now, **sale_cvc(row, cert))
        return certificate_view_of(row)


def sale_cvc(row: GiftCertificate, cert: Certificate) -> dict:
    """The CVC columns of a certificate being sold (or receiving a transfer): a physical card
    keeps the CVC printed under its scratch panel; any other gets a fresh CVC, and a sealed
    copy of it when the domain requested its notification to the buyer. Never logged."""
    extra: dict = {}
    if row.kind == "PHYSICAL" and row.cvc_hash:
        secret = None  # printed under the scratch panel: its hash came with the batch
    else:  # generated once, here (a physical card of a batch loaded without CVCs: unknowable)
        secret = cvc_secret.generate()
        extra.update(cvc_secret.hashed(row.code, secret))
    if cert.cvc_copy:
        extra.update(cvc_secret.sealed(row.code, secret))
    return extra


def expire_certificate(cmd: ExpireCertificate, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, cert: cert.expire(uow.now), end_holds=True)
