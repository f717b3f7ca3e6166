"""The building blocks of the HTTP API's schemas: the patterns, the fields (money as a string,
RFC 3339 times, codes, text without control characters), and the base schemas of request bodies
(:class:`Strict`) and query strings (:class:`Query`, :class:`Paged`).

Every request field refuses what it cannot hold with 422 ``VALIDATION_ERROR``; the money rule
itself is the domain's (``models.domain.money.parse_money``).
"""
from __future__ import annotations

import datetime as dt

import marshmallow as ma
from marshmallow import validate

from models.domain.errors import DomainError
from models.domain.money import (
    CODE_PATTERN,
    CURRENCY_PATTERN,
    MONEY_PATTERN,
    POSITIVE_MONEY_PATTERN,
    parse_money,
    positive_money,
)
from models.domain.states import CHANNELS, NotificationStatus, Status

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
STATUSES = [status.value for status in Status]
NOTIFICATION_STATUSES = [status.value for status in NotificationStatus]


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


# ---- query strings ---------------------------------------------------------------------------

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
