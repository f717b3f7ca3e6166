"""Balance changes the channels report on Kafka: redemption, refunds onto a certificate, purchase refunds."""
from __future__ import annotations

from models.domain.commands import (
    ConfirmPurchaseRefund,
    PurchaseRefundNeedsDetails,
    Redeem,
    RefundToCertificate,
    RequestPurchaseRefund,
)
from models.service.unit_of_work import Context, change_certificate


def redeem(cmd: Redeem, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, c: c.redeem(cmd.amount, uow.now, cmd.currency))


def refund_to_certificate(cmd: RefundToCertificate, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, c: c.refund_credit(cmd.amount, cmd.currency))


def request_purchase_refund(cmd: RequestPurchaseRefund, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, c: c.request_purchase_refund(cmd.amount), end_holds=True)


def purchase_refund_needs_details(cmd: PurchaseRefundNeedsDetails, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, c: c.refund_needs_details(cmd.reason))


def confirm_purchase_refund(cmd: ConfirmPurchaseRefund, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, c: c.confirm_purchase_refund())
