"""The one entry to the use cases: ``handle(command, ctx)``.

The HTTP views, the actors and the workers build a command (:mod:`models.domain.commands`) and call
:func:`handle`; :data:`COMMAND_HANDLERS` names the handler of each, explicitly (a new command
is a new line here). Every handler runs in a unit of work and raises
:class:`~models.domain.DomainError` when the domain refuses.

One return convention: a handler returns a ``dict`` in the contract's terms (camelCase keys,
money as strings), the view of what it changed or decided, or ``None`` when there is nothing to
tell. Turning that into an answer (the status code, the headers, which fields) is ``api/``'s job.
"""
from __future__ import annotations

from typing import Any, Callable

from models.domain import commands as c
from models.service.handlers import balance, holds, notifications, orders, pool, support
from models.service.unit_of_work import SYSTEM_CONTEXT, Context

COMMAND_HANDLERS: dict[type, Callable[[Any, Context], Any]] = {
    # the pool
    c.LoadBatch: pool.load_batch,
    c.Reserve: pool.reserve,
    c.Release: pool.release,
    c.ExpireReservation: pool.expire_reservation,
    c.Issue: pool.issue,
    c.ExpireCertificate: pool.expire_certificate,
    # authorization holds
    c.Authorize: holds.authorize,
    c.Capture: holds.capture,
    c.Void: holds.void,
    # balance changes reported on Kafka
    c.Redeem: balance.redeem,
    c.RefundToCertificate: balance.refund_to_certificate,
    c.RequestPurchaseRefund: balance.request_purchase_refund,
    c.PurchaseRefundNeedsDetails: balance.purchase_refund_needs_details,
    c.ConfirmPurchaseRefund: balance.confirm_purchase_refund,
    # support
    c.Lock: support.lock,
    c.Unlock: support.unlock,
    c.Cancel: support.cancel,
    c.Adjust: support.adjust,
    c.ApproveAdjustment: support.approve_adjustment,
    c.RejectAdjustment: support.reject_adjustment,
    c.Transfer: support.transfer,
    c.ApproveTransfer: support.approve_transfer,
    c.RejectTransfer: support.reject_transfer,
    # the CVC notification and alerts
    c.DiscloseCvc: notifications.disclose_cvc,
    c.RequestNotification: notifications.request_notification,
    c.NotificationResult: notifications.notification_result,
    c.RaiseAlert: notifications.raise_alert,
    c.TakeSmsLease: notifications.take_sms_lease,
    c.SmsAttemptFailed: notifications.sms_attempt_failed,
    c.RecordSmsOutcome: notifications.record_sms_outcome,
    # the channels' messages
    c.OrderMessage: orders.on_order_message,
    c.PaymentMessage: orders.on_payment_message,
    c.ClientMessage: orders.on_client_message,
    c.ConfirmCapture: orders.confirm_capture,
    c.ExpireOrderReservation: orders.expire_order_reservation,
    c.ResolveBlockedIssues: orders.resolve_blocked_issues,
}


def handle(command, ctx: Context = SYSTEM_CONTEXT):
    """Run the use case for ``command``. Raises :class:`~models.domain.DomainError` when refused."""
    try:
        handler = COMMAND_HANDLERS[type(command)]
    except KeyError:  # pragma: no cover - a programming error
        raise TypeError(f"no handler for {type(command).__name__}") from None
    return handler(command, ctx)
