"""Time as the contract writes it: RFC 3339, UTC. The one parser and formatter of the service.

Pure: standard library only.
"""
from __future__ import annotations

import datetime as dt
import re

#: RFC 3339 date-time; without an offset it is read as UTC.
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})?$")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(ts: dt.datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-22T10:00:00.123Z``."""
    if ts is None:
        return None
    ts = ts.astimezone(dt.timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_time(value: str) -> dt.datetime:
    """An RFC 3339 time (``...Z``, an offset, or none: UTC) as an aware UTC datetime.
    Raises ValueError for anything else."""
    if not isinstance(value, str) or not TIME_RE.fullmatch(value):
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    try:
        moment = dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except OverflowError as exc:
        raise ValueError(str(exc)) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def parse_time_or_none(value: str | None) -> dt.datetime | None:
    """:func:`parse_time`, with None for an absent or unreadable value (the channels' optional
    ``occurredAt``, already validated by their schema)."""
    try:
        return parse_time(value) if value else None
    except ValueError:
        return None
