"""Marshmallow schemas of the HTTP API: what a request may carry and what each answer holds.

Request schemas refuse unknown fields, wrong types (money is a string, never a number),
control characters and oversized values with 422 ``VALIDATION_ERROR``; the money rule itself is
``models.domain.parse_money``. Response schemas document every success answer exactly, so the
OpenAPI document (and schemathesis) can check what the service sends.
"""
from __future__ import annotations

import datetime as dt

import marshmallow as ma
from marshmallow import validate

from api.errors import ErrorSchema
from models.domain.adjustment import ADJUST_REASONS, ADJUSTMENT_STATUSES, DIRECTIONS
from models.domain.errors import DomainError
from models.domain.money import (
    CODE_PATTERN,
    CURRENCY_PATTERN,
    MONEY_PATTERN,
    POSITIVE_MONEY_PATTERN,
    parse_money,
    positive_money,
)
from models.domain.states import CHANNELS, KINDS, NotificationStatus, Status

#: Printable text without control characters (they never belong in ids or reasons).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]+$"
#: A CVC as presented by a buyer: digits only.
CVC_PATTERN = r"^[0-9]{1,12}$"
#: An authorization id as the service makes them.
AUTHORIZATION_ID_PATTERN = r"^auth-[0-9a-f]{32}$"
#: An adjustment id as the service makes them.
ADJUSTMENT_ID_PATTERN = r"^adj-[0-9a-f]{32}$"
#: A transfer id as the service makes them.
TRANSFER_ID_PATTERN = r"^trf-[0-9a-f]{32}$"
#: The Idempotency-Key header: visible ASCII, 1 to 255 characters.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
#: Largest page size for searches and listings.
MAX_PAGE_SIZE = 100
#: Deepest row a page may reach. PostgreSQL reads and drops every row before the page (OFFSET),
#: so ``?page=10000&page_size=100`` made one request skip a million rows.
MAX_PAGE_DEPTH = 10_000
#: Highest page number: with pages of at most MAX_PAGE_SIZE rows, never past MAX_PAGE_DEPTH.
#: A bound on each parameter, which the OpenAPI document states exactly (a bound on their
#: product it could only describe in words, and generated clients would send what it refuses).
MAX_PAGE = MAX_PAGE_DEPTH // MAX_PAGE_SIZE
PAGE_DEPTH_HELP = (f"page must be at most {MAX_PAGE}: with page_size at most {MAX_PAGE_SIZE}, no request "
                   f"reads past {MAX_PAGE_DEPTH:,} rows; for rows further on, narrow the filters")
STATUSES = [s.value for s in Status]
NOTIFICATION_STATUSES = [s.value for s in NotificationStatus]


class FullMatch(validate.Regexp):
    """``validate.Regexp`` over the whole value: with ``re.match`` a pattern ending in ``$``
    also accepts a trailing newline (``"RUB\\n"``). The pattern still documents the field."""

    def __call__(self, value):
        if not isinstance(value, str) or self.regex.fullmatch(value) is None:
            raise ma.ValidationError(self._format_error(value))
        return value


class Strict(ma.Schema):
    """Request bodies: unknown fields are refused."""

    class Meta:
        unknown = ma.RAISE


# ---- fields --------------------------------------------------------------------------------

class Money(ma.fields.String):
    """The contract's money: a string with two decimals ("1500.00"), loaded as ``Decimal``."""

    def __init__(self, positive: bool = True, **kwargs):
        meta = kwargs.pop("metadata", {})
        meta.setdefault("pattern", POSITIVE_MONEY_PATTERN if positive else MONEY_PATTERN)  # checked on load
        meta.setdefault("example", "1500.00")
        meta.setdefault("description", "money: a string with two decimals" +
                        (", greater than 0.00" if positive else ""))
        super().__init__(metadata=meta, **kwargs)
        self.positive = positive

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):  # a JSON number (float or int) is refused
            raise ma.ValidationError('money must be a string like "1500.00", not a number')
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return positive_money(text, attr or "amount") if self.positive else parse_money(text, attr or "amount")
        except DomainError as exc:
            raise ma.ValidationError(exc.message) from None


class UtcDateTime(ma.fields.AwareDateTime):
    """An RFC 3339 time (UTC when no offset is given), loaded in UTC."""

    def __init__(self, **kwargs):
        super().__init__(default_timezone=dt.timezone.utc, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(dt.timezone.utc)
        except (OverflowError, ValueError):
            raise ma.ValidationError("time out of range") from None


def text(max_length: int = 128, **kwargs) -> ma.fields.String:
    """An identifier or free text: 1..max_length characters, no control characters."""
    return ma.fields.String(validate=[validate.Length(1, max_length), FullMatch(TEXT_PATTERN)],
                            **kwargs)


def currency(**kwargs) -> ma.fields.String:
    meta = {"example": "RUB", "description": "ISO 4217 code", **kwargs.pop("metadata", {})}
    return ma.fields.String(validate=FullMatch(CURRENCY_PATTERN), metadata=meta, **kwargs)


def code_field(**kwargs) -> ma.fields.String:
    return ma.fields.String(validate=FullMatch(CODE_PATTERN), **kwargs)


def channel_field(**kwargs) -> ma.fields.String:
    return ma.fields.String(validate=validate.OneOf(CHANNELS), **kwargs)


def stamp(**kwargs) -> ma.fields.String:
    """An RFC 3339 UTC time in an answer (already formatted by the use case)."""
    meta = {"format": "date-time", "example": "2026-11-22T10:00:00.000Z", **kwargs.pop("metadata", {})}
    return ma.fields.String(metadata=meta, **kwargs)


def out_money(**kwargs) -> ma.fields.String:
    meta = {"example": "1500.00", "pattern": r"^-?[0-9]+\.[0-9]{2}$", **kwargs.pop("metadata", {})}
    return ma.fields.String(metadata=meta, **kwargs)


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


class Query(ma.Schema):
    """Query strings: unknown parameters are ignored, and an empty one (``?status=``) counts as
    not given (the contract writes its filters as ``?status=&channel=...``)."""

    class Meta:
        unknown = ma.EXCLUDE

    @ma.pre_load
    def _blank_is_absent(self, data, **kwargs):
        return {key: data[key] for key in data if data[key] != ""}


class Paged(Query):
    """``page`` and ``page_size``, never deeper than :data:`MAX_PAGE_DEPTH` rows (422 past it)."""

    page = ma.fields.Integer(load_default=1, validate=validate.Range(1, MAX_PAGE, error=PAGE_DEPTH_HELP),
                             metadata={"description": f"1-based page number; {PAGE_DEPTH_HELP}"})


def page_size_field(default: int) -> ma.fields.Integer:
    """``page_size`` of a :class:`Paged` query, documenting the depth limit."""
    return ma.fields.Integer(load_default=default, validate=validate.Range(1, MAX_PAGE_SIZE),
                             metadata={"description": f"rows per page (at most {MAX_PAGE_SIZE}); "
                                                      + PAGE_DEPTH_HELP})


def empty_means_absent(self, field, ret, **kwargs) -> dict:
    """OpenAPI: an optional query parameter of a :class:`Query` may be sent empty, and then
    counts as not given (``allowEmptyValue``)."""
    if ret.get("in") == "query" and not field.required and isinstance(field.parent, Query):
        return {"allowEmptyValue": True}
    return {}


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


# ---- documented errors --------------------------------------------------------------------

#: Error codes per HTTP status, for the OpenAPI descriptions.
COMMON_ERRORS = {401: ["UNAUTHORIZED"], 403: ["FORBIDDEN"], 429: ["RATE_LIMITED"]}


def errors(blp, spec: dict[int, list[str]], *, body: bool = False):
    """Decorator documenting a route's error answers (always 401, 403, 429; 400/413/415/422 for
    a route with a body) in the contract's error model."""
    merged: dict[int, list[str]] = {k: list(v) for k, v in COMMON_ERRORS.items()}
    if body:
        for status, code in ((400, "BAD_REQUEST"), (413, "PAYLOAD_TOO_LARGE"),
                             (415, "UNSUPPORTED_MEDIA_TYPE"), (422, "VALIDATION_ERROR")):
            merged.setdefault(status, []).append(code)
    for status, codes in spec.items():
        merged.setdefault(status, [])
        merged[status] += [c for c in codes if c not in merged[status]]

    def decorate(func):
        for status in sorted(merged, reverse=True):
            func = blp.alt_response(status, schema=ErrorSchema,
                                    description="error codes: " + ", ".join(merged[status]))(func)
        return func
    return decorate
