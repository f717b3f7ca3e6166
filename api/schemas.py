"""Marshmallow schemas of the HTTP API: what a request may carry and what each answer holds.

Request schemas refuse unknown fields, wrong types (money is a string, never a number),
control characters and oversized values with 422 ``VALIDATION_ERROR`` (their fields are
:mod:`api.fields`). Response schemas document every success answer exactly, so the OpenAPI
document (and schemathesis) can check what the service sends.
"""
from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from api.fields import (
    ADJUSTMENT_ID_PATTERN,
    AUTHORIZATION_ID_PATTERN,
    CVC_PATTERN,
    MAX_PAGE_SIZE,
    NOTIFICATION_STATUSES,
    STATUSES,
    TRANSFER_ID_PATTERN,
    FullMatch,
    Money,
    Paged,
    Query,
    Strict,
    UtcDateTime,
    channel_field,
    code_field,
    currency,
    out_money,
    page_size_field,
    stamp,
    text,
)
from models.domain.adjustment import ADJUST_REASONS, ADJUSTMENT_STATUSES, DIRECTIONS
from models.domain.states import KINDS


# ---- requests --------------------------------------------------------------------------------

class ReserveRequest(Strict):
    """Reserve a certificate for an order line (the next one from the pool, or ``code``)."""

    channel = channel_field(required=True)
    orderId = text(required=True, metadata={"example": "order-42"})
    lineId = text(required=True, metadata={"example": "1"})
    nominal = Money(required=True)
    currency = currency(load_default=None, metadata={
        "description": "ISO 4217; default: the certificate's for `code`, else DEFAULT_CURRENCY (RUB)"})
    code = code_field(load_default=None, metadata={
        "description": "a physical card scanned at POS: reserve this code (any kind)"})



class ReserveQuery(Query, ReserveRequest):
    """The deprecated query-string form of the reservation."""

    class Meta:
        unknown = ma.EXCLUDE


class SearchQuery(Paged):
    status = ma.fields.String(validate=validate.OneOf(STATUSES), load_default=None)
    channel = channel_field(load_default=None)
    orderId = text(load_default=None)
    issuedFrom = UtcDateTime(load_default=None, metadata={"description": "issuedAt >= this (RFC 3339)"})
    issuedTo = UtcDateTime(load_default=None, metadata={"description": "issuedAt < this (RFC 3339)"})
    page_size = page_size_field(20)


class PageQuery(Paged):
    page_size = page_size_field(MAX_PAGE_SIZE)


class AuthorizeRequest(Strict):
    channel = channel_field(required=True)
    orderId = text(required=True, metadata={"example": "order-43"})
    amount = Money(required=True)
    cvc = ma.fields.String(required=True, validate=FullMatch(CVC_PATTERN),
                           metadata={"example": "123456", "description": "the secret printed or sent "
                                     "with the code; 5 wrong in a row lock the certificate"})
    currency = currency(load_default=None, metadata={"description": "default: the certificate's"})


class CaptureRequest(Strict):
    amount = Money(load_default=None, metadata={"description": "default: the whole hold; "
                                                "less releases the rest"})
    currency = currency(load_default=None, metadata={"description": "default: the certificate's"})


class ReasonRequest(Strict):
    reason = text(max_length=500, required=True, metadata={"example": "FRAUD_SUSPECTED"})


class EmptyRequest(Strict):
    """No fields (an empty body or ``{}``)."""


class AdjustRequest(Strict):
    direction = ma.fields.String(required=True, validate=validate.OneOf(DIRECTIONS), metadata={
        "description": "CREDIT adds to the balance (never above nominal), DEBIT takes from it "
                       "(never more than `available`)"})
    amount = Money(required=True, metadata={"example": "100.00"})
    reason = ma.fields.String(required=True, validate=validate.OneOf(ADJUST_REASONS))
    comment = text(max_length=500, load_default=None, metadata={
        "description": "free text for the approver and the audit (never a card's CVC)"})


class DecisionRequest(Strict):
    comment = text(max_length=500, load_default=None)


class TransferRequest(Strict):
    to = code_field(load_default=None, metadata={
        "description": "an AVAILABLE code of the same currency (a new card handed over at a "
                       "POS); default: the next electronic certificate from the pool"})
    reason = text(max_length=500, required=True, metadata={"example": "DAMAGED_CARD"})


class AdjustmentQuery(Paged):
    status = ma.fields.String(validate=validate.OneOf(ADJUSTMENT_STATUSES), load_default=None)
    code = code_field(load_default=None, metadata={"description": "only this certificate's"})
    page_size = page_size_field(20)


class TransferQuery(AdjustmentQuery):
    code = code_field(load_default=None, metadata={"description": "only transfers from this certificate"})


# ---- answers ----------------------------------------------------------------------------------

class ReservationSchema(ma.Schema):
    code = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(STATUSES),
                              metadata={"example": "RESERVED"})
    nominal = out_money(required=True)
    currency = ma.fields.String(required=True)
    reservedUntil = stamp(required=True, allow_none=True,
                          metadata={"description": "null once the certificate was issued"})
    channel = ma.fields.String(required=True)
    orderId = ma.fields.String(required=True)
    lineId = ma.fields.String(required=True)


class CertificateSchema(ma.Schema):
    code = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(STATUSES))
    kind = ma.fields.String(required=True, validate=validate.OneOf(KINDS))
    nominal = out_money(required=True, allow_none=True)
    remainingBalance = out_money(required=True)
    available = out_money(required=True, metadata={"description": "remainingBalance minus active holds"})
    currency = ma.fields.String(required=True)
    channel = ma.fields.String(required=True, allow_none=True)
    orderId = ma.fields.String(required=True, allow_none=True)
    issuedAt = stamp(required=True, allow_none=True)
    expiresAt = stamp(required=True, allow_none=True)
    lockReason = ma.fields.String(required=True, allow_none=True)
    notificationStatus = ma.fields.String(required=True, allow_none=True,
                                          validate=validate.OneOf(NOTIFICATION_STATUSES))


class CertificatePageSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(CertificateSchema), required=True)
    page = ma.fields.Integer(required=True)
    pageSize = ma.fields.Integer(required=True)
    total = ma.fields.Integer(required=True)


class OperationSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    kind = ma.fields.String(required=True, metadata={
        "description": "ISSUE, REDEEM, REFUND_CREDIT, PURCHASE_REFUND, ADJUST_CREDIT, "
                       "ADJUST_DEBIT, TRANSFER_IN or TRANSFER_OUT"})
    amount = out_money(required=True, metadata={"description": "credits positive, debits negative"})
    balanceAfter = out_money(required=True)
    currency = ma.fields.String(required=True)
    authorizationId = ma.fields.String(required=True, allow_none=True)
    adjustmentId = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "the adjustment of an ADJUST_* row (its reason, author and approver)"})
    transferId = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "the transfer of a TRANSFER_* row (the same id on both certificates)"})
    orderId = ma.fields.String(required=True, allow_none=True)
    channel = ma.fields.String(required=True, allow_none=True)
    createdAt = stamp(required=True)


class OperationPageSchema(ma.Schema):
    code = ma.fields.String(required=True)
    items = ma.fields.List(ma.fields.Nested(OperationSchema), required=True)
    page = ma.fields.Integer(required=True)
    pageSize = ma.fields.Integer(required=True)
    total = ma.fields.Integer(required=True)


class AuditEntrySchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    action = ma.fields.String(required=True)
    actor = ma.fields.String(required=True)
    channel = ma.fields.String(required=True, allow_none=True)
    requestId = ma.fields.String(required=True, allow_none=True)
    correlationId = ma.fields.String(required=True, allow_none=True)
    before = ma.fields.Dict(required=True, allow_none=True)
    after = ma.fields.Dict(required=True, allow_none=True)
    details = ma.fields.Dict(required=True, allow_none=True)
    at = stamp(required=True)


class AuditPageSchema(OperationPageSchema):
    items = ma.fields.List(ma.fields.Nested(AuditEntrySchema), required=True)


class CvcSchema(ma.Schema):
    code = ma.fields.String(required=True)
    cvc = ma.fields.String(required=True, metadata={"example": "123456"})


class AuthorizationSchema(ma.Schema):
    authorizationId = ma.fields.String(required=True, metadata={"pattern": AUTHORIZATION_ID_PATTERN})
    code = ma.fields.String(required=True)
    amount = out_money(required=True)
    currency = ma.fields.String(required=True)
    expiresAt = stamp(required=True)
    available = out_money(required=True)
    status = ma.fields.String(required=True, metadata={"example": "ACTIVE"})


class CaptureSchema(ma.Schema):
    authorizationId = ma.fields.String(required=True)
    code = ma.fields.String(required=True)
    captured = out_money(required=True)
    remainingBalance = out_money(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(STATUSES))
    currency = ma.fields.String(required=True)


class VoidSchema(ma.Schema):
    authorizationId = ma.fields.String(required=True)
    code = ma.fields.String(required=True)
    status = ma.fields.String(required=True, metadata={"example": "VOIDED"})
    amount = out_money(required=True)
    available = out_money(required=True)
    remainingBalance = out_money(required=True)


class AdjustmentSchema(ma.Schema):
    adjustmentId = ma.fields.String(required=True, metadata={"pattern": ADJUSTMENT_ID_PATTERN})
    code = ma.fields.String(required=True)
    direction = ma.fields.String(required=True, validate=validate.OneOf(DIRECTIONS))
    amount = out_money(required=True)
    currency = ma.fields.String(required=True)
    reason = ma.fields.String(required=True, validate=validate.OneOf(ADJUST_REASONS))
    comment = ma.fields.String(required=True, allow_none=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(ADJUSTMENT_STATUSES), metadata={
        "description": "APPLIED at once up to ADJUST_APPROVAL_LIMIT (counting what the certificate "
                       "moved without a second approver within ADJUST_APPROVAL_WINDOW), else "
                       "PENDING_APPROVAL until a "
                       "second admin approves (APPLIED) or rejects (REJECTED) it, or "
                       "ADJUST_APPROVAL_TTL passes (EXPIRED)"})
    requestedBy = ma.fields.String(required=True, metadata={"description": "the author's client id"})
    requestedAt = stamp(required=True)
    expiresAt = stamp(required=True, allow_none=True, metadata={
        "description": "until when a pending adjustment can be approved; null if applied at once"})
    decidedBy = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "who approved or rejected it"})
    decidedAt = stamp(required=True, allow_none=True)
    decisionComment = ma.fields.String(required=True, allow_none=True)


class AdjustmentResultSchema(AdjustmentSchema):
    remainingBalance = out_money(required=True, metadata={"description": "the certificate's, now"})
    available = out_money(required=True)
    certificateStatus = ma.fields.String(required=True, validate=validate.OneOf(STATUSES))


class AdjustmentPageSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(AdjustmentSchema), required=True)
    page = ma.fields.Integer(required=True)
    pageSize = ma.fields.Integer(required=True)
    total = ma.fields.Integer(required=True)


class TransferSchema(ma.Schema):
    transferId = ma.fields.String(required=True, metadata={"pattern": TRANSFER_ID_PATTERN})
    status = ma.fields.String(required=True, validate=validate.OneOf(["APPLIED"]))
    fromCode = ma.fields.String(required=True)
    toCode = ma.fields.String(required=True)
    amount = out_money(required=True, metadata={"description": "the whole balance moved"})
    currency = ma.fields.String(required=True)
    reason = ma.fields.String(required=True)
    approvedBy = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "the second admin's client id; null when it was applied at once"})
    source = ma.fields.Nested(CertificateSchema, required=True, metadata={
        "description": "now CANCELLED, lockReason TRANSFERRED, balance 0.00"})
    target = ma.fields.Nested(CertificateSchema, required=True, metadata={
        "description": "now ISSUED with nominal = balance = amount"})


class PendingTransferSchema(ma.Schema):
    """A transfer that needed a second admin (202 PENDING_APPROVAL, the list, a rejection)."""
    transferId = ma.fields.String(required=True, metadata={"pattern": TRANSFER_ID_PATTERN})
    status = ma.fields.String(required=True, validate=validate.OneOf(ADJUSTMENT_STATUSES), metadata={
        "description": "PENDING_APPROVAL until a second admin approves (APPLIED: carried out) or "
                       "rejects (REJECTED) it, or ADJUST_APPROVAL_TTL passes (EXPIRED)"})
    fromCode = ma.fields.String(required=True)
    to = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "the AVAILABLE code named; null: the next certificate of the pool"})
    amount = out_money(required=True, metadata={"description": "the balance when it was asked for"})
    currency = ma.fields.String(required=True)
    reason = ma.fields.String(required=True)
    requestedBy = ma.fields.String(required=True, metadata={"description": "the author's client id"})
    requestedAt = stamp(required=True)
    expiresAt = stamp(required=True, metadata={"description": "until when it can be approved"})
    decidedBy = ma.fields.String(required=True, allow_none=True)
    decidedAt = stamp(required=True, allow_none=True)
    decisionComment = ma.fields.String(required=True, allow_none=True)


class PendingTransferPageSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(PendingTransferSchema), required=True)
    page = ma.fields.Integer(required=True)
    pageSize = ma.fields.Integer(required=True)
    total = ma.fields.Integer(required=True)
