"""The one entry to the use cases: ``handle(command, ctx)``.

The HTTP views, the actors and the workers build a command (:mod:`models.domain.commands`) and call
:func:`handle`; :data:`COMMAND_HANDLERS` names the handler of each, explicitly (a new command
is a new line here). Every handler runs in a unit of work
(:class:`~models.service.unit_of_work.UnitOfWork`) and raises
:class:`~models.domain.DomainError` when the domain refuses.

One return convention: a handler returns a ``dict`` in the contract's terms (camelCase keys,
money as strings), the view of what it changed or decided, or ``None`` when there is nothing to
tell. Turning that into an answer (the status code, the headers, which fields) is ``api/``'s job.
"""
from __future__ import annotations

from typing import Any, Callable

from models.domain import commands
from models.domain.commands import SYSTEM_CONTEXT, Context
from models.service import inbox
from models.service.handlers import balance, batches, due, holds, notifications, orders, pool, support
from models.service.unit_of_work import UnitOfWork

__all__ = ["COMMAND_HANDLERS", "handle", "transaction"]

COMMAND_HANDLERS: dict[type, Callable[[Any, Context], Any]] = {
    # the pool
    commands.LoadBatch: batches.load_batch,
    commands.Reserve: pool.reserve,
    commands.Release: pool.release,
    commands.ExpireReservation: pool.expire_reservation,
    commands.Issue: pool.issue,
    commands.ExpireCertificate: pool.expire_certificate,
    # authorization holds
    commands.Authorize: holds.authorize,
    commands.Capture: holds.capture,
    commands.Void: holds.void,
    commands.ConfirmCapture: holds.confirm_capture,
    # balance changes reported on Kafka
    commands.Redeem: balance.redeem,
    commands.RefundToCertificate: balance.refund_to_certificate,
    commands.RequestPurchaseRefund: balance.request_purchase_refund,
    commands.PurchaseRefundNeedsDetails: balance.purchase_refund_needs_details,
    commands.ConfirmPurchaseRefund: balance.confirm_purchase_refund,
    # support
    commands.Lock: support.lock,
    commands.Unlock: support.unlock,
    commands.Cancel: support.cancel,
    commands.Adjust: support.adjust,
    commands.ApproveAdjustment: support.approve_adjustment,
    commands.RejectAdjustment: support.reject_adjustment,
    commands.Transfer: support.transfer,
    commands.ApproveTransfer: support.approve_transfer,
    commands.RejectTransfer: support.reject_transfer,
    # the CVC notification and alerts
    commands.DiscloseCvc: notifications.disclose_cvc,
    commands.RequestNotification: notifications.request_notification,
    commands.NotificationResult: notifications.notification_result,
    commands.RaiseAlert: notifications.raise_alert,
    commands.TakeSmsLease: notifications.take_sms_lease,
    commands.SmsAttemptFailed: notifications.sms_attempt_failed,
    commands.RecordSmsOutcome: notifications.record_sms_outcome,
    # the channels' messages
    commands.ProcessInboxMessage: inbox.process_message,
    commands.RecordInboxFailure: inbox.record_failure,
    commands.OrderMessage: orders.on_order_message,
    commands.PaymentMessage: orders.on_payment_message,
    commands.ClientMessage: orders.on_client_message,
    commands.ExpireOrderReservation: orders.expire_order_reservation,
    commands.ResolveBlockedIssues: orders.resolve_blocked_issues,
    # the scheduler's rounds
    commands.ExpireOverdueHolds: due.expire_overdue_holds,
    commands.ReleaseLapsedReservations: due.release_lapsed_reservations,
    commands.ExpireDueCertificates: due.expire_due_certificates,
    commands.PurgeIdempotencyKeys: due.purge_idempotency_keys,
}


def transaction() -> UnitOfWork:
    """One transaction around the use cases run inside it and the caller's own writes (the HTTP
    idempotency record, the inbox row): all commit together, or none. Nested, a savepoint.

    ``with messagebus.transaction():``; the use cases inside become its savepoints, and their
    cache invalidation waits until the outermost transaction has ended."""
    return UnitOfWork(SYSTEM_CONTEXT)


def handle(command, ctx: Context = SYSTEM_CONTEXT):
    """Run the use case for ``command``. Raises :class:`~models.domain.DomainError` when refused."""
    try:
        handler = COMMAND_HANDLERS[type(command)]
    except KeyError:  # pragma: no cover - a programming error
        raise TypeError(f"no handler for {type(command).__name__}") from None
    return handler(command, ctx)
