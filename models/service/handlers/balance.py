"""Balance changes the channels report on Kafka: redemption, refunds onto a certificate, purchase refunds."""
from __future__ import annotations

from models.domain.commands import (
    ConfirmPurchaseRefund,
    Context,
    PurchaseRefundNeedsDetails,
    Redeem,
    RefundToCertificate,
    RequestPurchaseRefund,
)
from models.service.unit_of_work import change_certificate


def redeem(cmd: Redeem, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, cert: cert.redeem(cmd.amount, uow.now, cmd.currency))


def refund_to_certificate(cmd: RefundToCertificate, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, cert: cert.refund_credit(cmd.amount, cmd.currency))


def request_purchase_refund(cmd: RequestPurchaseRefund, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, cert: cert.request_purchase_refund(cmd.amount), end_holds=True)


def purchase_refund_needs_details(cmd: PurchaseRefundNeedsDetails, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, cert: cert.refund_needs_details(cmd.reason))


def confirm_purchase_refund(cmd: ConfirmPurchaseRefund, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, cert: cert.confirm_purchase_refund())
