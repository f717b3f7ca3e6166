"""The pool's rules: its segments, and the low-water alert.

A segment is what ``GET /pool`` counts apart: a currency, a kind, and a nominal (or open value).
When a segment falls below ``POOL_LOW_WATER_MARK`` one ``alert`` (``POOL_LOW_WATER``) is
raised; the segment is armed again once it is seen at or above the mark (after a refill, or
releases), so the next fall alerts again.
"""
from __future__ import annotations

import enum
from decimal import Decimal

from models.domain.events import Event
from models.domain.money import fmt_money
from models.domain.states import EventType

#: The alert raised when a pool segment falls below the low-water mark.
LOW_WATER_ALERT = "POOL_LOW_WATER"


def segment_key(currency: str, kind: str, nominal: Decimal | None) -> str:
    """A pool segment as ``RUB/ELECTRONIC/1500.00`` (``.../OPEN`` for open-value codes)."""
    return f"{currency}/{kind}/{fmt_money(nominal) if nominal is not None else 'OPEN'}"


class LowWater(enum.Enum):
    """What a count of a segment calls for."""

    CROSSED = "crossed"   # it fell below the mark: say so, once
    REARMED = "rearmed"   # it is at or above the mark again: the next fall is said again


def low_water_change(left: int, mark: int, low: bool) -> LowWater | None:
    """``left`` certificates in a segment (counted up to ``mark``), which was ``low`` already or
    not: whether it crossed the mark, was armed again, or neither. A mark of 0 is no mark."""
    if mark <= 0:
        return None
    if left < mark and not low:
        return LowWater.CROSSED
    if left >= mark and low:
        return LowWater.REARMED
    return None


def low_water_alert(currency: str, kind: str, nominal: Decimal | None, left: int, mark: int) -> Event:
    """The ``alert`` of a segment that fell below the mark (keyed ``pool:<segment>``)."""
    label = f"{fmt_money(nominal) or 'open value'} {currency} {kind}"
    return Event(EventType.ALERT, "ALERT", {
        "code": LOW_WATER_ALERT, "source": "GCP",
        "message": f"{left} certificate(s) left in the pool for {label}, below the low-water mark {mark}",
        "currency": currency, "kind": kind, "nominal": fmt_money(nominal),
        "available": left, "lowWaterMark": mark})


def pool_level(currency: str, kind: str, nominal: Decimal | None, available: int,
               counted_at: str | None = None) -> dict:
    """The ``pool`` of a ``reserve``, ``release`` or ``issue.blocked`` payload (contract revision
    3): the segment and its level after the change (``nominal`` None for open value).
    ``countedAt``, an addition, is when the level was counted under the segment's lock: the
    order of the counts of one segment, whatever the partitions their events travel on."""
    level = {"kind": kind, "currency": currency, "nominal": fmt_money(nominal), "available": available}
    if counted_at is not None:
        level["countedAt"] = counted_at
    return level


def with_pool_level(event: Event, level: dict) -> Event:
    """``event`` with its segment's level in the payload."""
    return Event(event.type, event.status, {**event.payload, "pool": level}, event.correlation_id)
