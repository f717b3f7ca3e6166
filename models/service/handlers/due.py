"""The scheduler's rounds: what has fallen due, found by the domain's own guards, each row run
through its use case.

A round reads the candidates (oldest first, at most ``limit``) without a lock; the use case then
re-checks the row under its lock, so a row changed meanwhile is refused (``DomainError``) and
skipped, and a late or repeated round changes nothing.
"""
from __future__ import annotations

import dataclasses
import logging

from models.domain.commands import (
    Context,
    ExpireCertificate,
    ExpireDueCertificates,
    ExpireOrderReservation,
    ExpireOverdueHolds,
    PurgeIdempotencyKeys,
    ReleaseLapsedReservations,
    Void,
)
from models.domain.errors import DomainError
from models.domain.states import ALLOWED_FROM, HoldStatus
from models.service.handlers.holds import void
from models.service.handlers.orders import expire_order_reservation
from models.service.handlers.pool import expire_certificate
from models.service.unit_of_work import UnitOfWork
from models.store import idempotency
from models.store.tables import AuthorizationHold, GiftCertificate

log = logging.getLogger("gcp.scheduler")


def _statuses(action: str) -> list[str]:
    """The statuses the transition table lets ``action`` start from."""
    return [s.value for s in ALLOWED_FROM[action]]


def expire_overdue_holds(cmd: ExpireOverdueHolds, ctx: Context) -> dict:
    """The holds :meth:`Hold.overdue <models.domain.hold.Hold.overdue>` calls overdue (ACTIVE,
    past ``expiresAt``) are expired; returns their ids (``expired``)."""
    overdue = [h.id for h in AuthorizationHold.select(AuthorizationHold.id)
               .where((AuthorizationHold.status == HoldStatus.ACTIVE.value)
                      & (AuthorizationHold.expires_at <= cmd.now))
               .order_by(AuthorizationHold.expires_at).limit(cmd.limit)]
    done = []
    for hold_id in overdue:
        try:
            void(Void(hold_id, expired=True), ctx)
            done.append(hold_id)
        except DomainError as refused:  # captured or voided meanwhile
            log.debug("hold %s not expired: %s", hold_id, refused.code)
    return {"expired": done}


def release_lapsed_reservations(cmd: ReleaseLapsedReservations, ctx: Context) -> dict:
    """The reservations past ``reservedUntil`` (of a status ``release`` starts from) go back to
    the pool unless their order's payment was seen (:func:`models.domain.policy.reservation_lapsed`,
    checked under the order's lock); returns their codes (``released``)."""
    lapsed = list(GiftCertificate.select(GiftCertificate.code, GiftCertificate.order_id)
                  .where(GiftCertificate.status.in_(_statuses("release"))
                         & (GiftCertificate.reserved_until <= cmd.now))
                  .order_by(GiftCertificate.reserved_until).limit(cmd.limit).tuples())
    done = []
    for code, order_id in lapsed:
        try:
            with UnitOfWork(ctx):
                released = expire_order_reservation(ExpireOrderReservation(code, order_id),
                                                    dataclasses.replace(ctx, correlation_id=order_id))
        except DomainError as refused:
            log.debug("reservation %s kept: %s", code, refused.code)
            continue
        if released is not None:
            done.append(code)
    return {"released": done}


def expire_due_certificates(cmd: ExpireDueCertificates, ctx: Context) -> dict:
    """The certificates past ``expiresAt`` in a status ``expire`` starts from are expired;
    returns their codes (``expired``)."""
    due = [c.code for c in GiftCertificate.select(GiftCertificate.code)
           .where(GiftCertificate.status.in_(_statuses("expire"))
                  & (GiftCertificate.expires_at <= cmd.now))
           .order_by(GiftCertificate.expires_at).limit(cmd.limit)]
    done = []
    for code in due:
        try:
            expire_certificate(ExpireCertificate(code), ctx)
            done.append(code)
        except DomainError as refused:
            log.debug("certificate %s not expired: %s", code, refused.code)
    return {"expired": done}


def purge_idempotency_keys(cmd: PurgeIdempotencyKeys, ctx: Context) -> dict:
    """Returns how many keys were forgotten (``purged``)."""
    return {"purged": idempotency.purge_expired(cmd.now)}
