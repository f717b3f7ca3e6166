"""Use cases of the Kafka side: the channels' orders, payments and CRM results; and the order
side of the scheduler (a lapsed reservation, the lines waiting for the pool).

Each message becomes a command handled through ``models.service.messagebus.handle``. A handler
records what the message says about its order (``sales_order``, ``order_payment``), then
applies what the pure rules of :mod:`models.domain.correlation` still call for
(:func:`~models.service.handlers.order_effects.correlate`), all under a transaction lock on the
``orderId`` (so one order is correlated by one worker at a time, whatever the arrival order) and
inside the caller's unit of work (the inbox marks its row done in the same commit).
"""
from __future__ import annotations

import dataclasses

from models.domain.commands import (
    CLIENTS,
    PAYMENTS,
    SALES_ORDER,
    ClientMessage,
    Context,
    ExpireOrderReservation,
    ExpireReservation,
    Issue,
    NotificationResult,
    OrderMessage,
    PaymentMessage,
    RaiseAlert,
    Reserve,
    ResolveBlockedIssues,
)
from models.domain.errors import DomainError
from models.domain.order import GC, SNAPSHOT_TYPES
from models.domain.states import CHANNELS, Status
from models.domain.timeutil import parse_time_or_none, utcnow
from models.service.handlers.notifications import notification_result, raise_alert
from models.service.handlers.order_effects import correlate
from models.service.handlers.pool import expire_reservation, issue, reserve
from models.service.unit_of_work import UnitOfWork
from models.store.tables import BlockedIssue, ClientProfile, SalesOrder


def message_outcome(order_id: str | None, effects: list[tuple[str, str]] | None = None,
                    note: str | None = None) -> dict:
    """What handling one message did: the effects applied, in order, with their outcome."""
    return {"orderId": order_id, "effects": effects or [], "note": note}


def message_context(msg: dict, source: str) -> Context:
    """The context of an input message: its channel, its order, and its eventId as the cause."""
    channel = msg.get("channel")
    return Context(actor=source, channel=channel if channel in CHANNELS else None,
                   correlation_id=msg.get("orderId"), causation_id=msg["eventId"])


def concerns_certificates(msg: dict) -> bool:
    """An order message with a certificate line or a certificate tender."""
    return any(x.get("type") == GC for x in (msg.get("lines") or []) + (msg.get("tenders") or []))


def on_order_message(cmd: OrderMessage, ctx: Context) -> dict:
    msg = cmd.message
    with UnitOfWork(ctx, savepoint=False) as uow:
        uow.lock_order(msg["orderId"])
        if (msg["eventType"] in SNAPSHOT_TYPES and not concerns_certificates(msg)
                and not uow.orders.exists(msg["orderId"])):
            return message_outcome(msg["orderId"], note="no gift certificate in this order")
        new = uow.orders.record_order_message(msg, utcnow())
        return message_outcome(msg["orderId"], correlate(uow, msg["orderId"], ctx, SALES_ORDER, recorded=new))


def on_payment_message(cmd: PaymentMessage, ctx: Context) -> dict:
    msg = cmd.message
    with UnitOfWork(ctx, savepoint=False) as uow:
        uow.lock_order(msg["orderId"])
        if not uow.orders.record_payment_message(msg, utcnow()):
            return message_outcome(msg["orderId"], note="duplicate payment event")
        return message_outcome(msg["orderId"], correlate(uow, msg["orderId"], ctx, PAYMENTS))


def on_client_message(cmd: ClientMessage, ctx: Context) -> dict:
    """A CRM profile (its phone and e-mail, the latest by ``occurredAt``) or a notification's
    result; a refused result is said on the stream (an ``error`` event)."""
    msg = cmd.message
    occurred = parse_time_or_none(msg.get("occurredAt")) or utcnow()
    with UnitOfWork(ctx):
        if msg.get("phone") or msg.get("email"):
            _record_profile(msg, occurred)
        note = msg["eventType"]
        if msg["eventType"] == "NOTIFICATION_RESULT":
            result = msg["notification"]
            code = result["certificateCode"]
            try:
                notification_result(NotificationResult(code, result["status"] == "DELIVERED",
                                                       result.get("reason")), ctx)
                note = f"notification {result['status']}"
            except DomainError as refused:
                raise_alert(RaiseAlert("error", refused.code, refused.message, CLIENTS,
                                       certificate_code=code), ctx)
                note = f"refused: {refused.code}"
        return message_outcome(None, note=note)


def _record_profile(msg: dict, occurred) -> None:
    profile = (ClientProfile.select().where(ClientProfile.client_id == msg["clientId"])
               .for_update().first())
    if profile is None:
        ClientProfile.insert(client_id=msg["clientId"], phone=msg.get("phone"),
                             email=msg.get("email"), occurred_at=occurred,
                             updated_at=utcnow()).on_conflict_ignore().execute()
    elif occurred >= profile.occurred_at:
        profile.phone = msg.get("phone") or profile.phone
        profile.email = msg.get("email") or profile.email
        profile.occurred_at, profile.updated_at = occurred, utcnow()
        profile.save()


def expire_order_reservation(cmd: ExpireOrderReservation, ctx: Context) -> dict | None:
    """Release a lapsed reservation unless its order's payment was seen (checked under the
    order's lock, so a payment being recorded right now is never overtaken)."""
    with UnitOfWork(ctx) as uow:
        if cmd.order_id:
            uow.lock_order(cmd.order_id)
        return expire_reservation(ExpireReservation(cmd.code), ctx)


def resolve_blocked_issues(cmd: ResolveBlockedIssues, ctx: Context) -> dict:
    """Issue blocked paid order lines, oldest first, each in a transaction of its own; returns
    the codes issued (``issued``).

    A line whose nominal the pool still cannot serve stays blocked (no new ``issue.blocked``
    event: the first one stands), and younger lines of the same nominal wait behind it.
    """
    issued: list[str] = []
    exhausted: set[tuple] = set()
    waiting = list(BlockedIssue.select(BlockedIssue.id).where(BlockedIssue.status == "BLOCKED")
                   .order_by(BlockedIssue.id).limit(cmd.limit).tuples())
    for (blocked_id,) in waiting:
        with UnitOfWork(ctx) as uow:
            code = _resolve_blocked_line(uow, blocked_id, ctx, exhausted)
        if code is not None:
            issued.append(code)
    return {"issued": issued}


def _resolve_blocked_line(uow: UnitOfWork, blocked_id: int, ctx: Context, exhausted: set[tuple]) -> str | None:
    """One blocked line: cancelled with its order, or reserved and issued (returns the code
    issued), or left waiting when the pool still cannot serve its nominal (``exhausted``)."""
    row = BlockedIssue.get_by_id(blocked_id)
    want = (row.currency.strip(), row.nominal, row.kind)
    if want in exhausted:
        return None
    uow.lock_order(row.order_id)
    row = BlockedIssue.select().where(BlockedIssue.id == blocked_id).for_update().get()
    if row.status != "BLOCKED":
        return None
    order = SalesOrder.get_or_none(SalesOrder.order_id == row.order_id)
    line_ctx = dataclasses.replace(ctx, channel=row.channel, correlation_id=row.order_id,
                                   causation_id=row.causation_id)
    if order is not None and order.cancelled_event_id:
        row.status, row.resolved_at = "CANCELLED", utcnow()
        row.save()
        return None
    reserved = uow.orders.line_certificate(row.channel, row.order_id, row.line_id)
    if reserved is None:
        try:
            with UnitOfWork(line_ctx):  # a savepoint: it drops the repeated issue.blocked
                reserve(Reserve(row.channel, row.order_id, row.line_id, row.nominal, row.currency.strip()),
                        line_ctx)
        except DomainError as refused:
            if refused.code != "POOL_EMPTY":
                raise
            exhausted.add(want)
            return None
        reserved = uow.orders.line_certificate(row.channel, row.order_id, row.line_id)
    sold = None
    if reserved.status == Status.RESERVED.value:
        issue(Issue(reserved.code), line_ctx)
        sold = reserved.code
    row.status, row.code, row.resolved_at = "ISSUED", reserved.code, utcnow()
    row.save()
    return sold
