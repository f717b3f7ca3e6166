"""The time rules of a certificate's life: what may enter the pool, when a reservation lapses,
when a sold certificate expires, who is sent its CVC."""
from __future__ import annotations

from datetime import datetime, timedelta


def loadable_expiry(expires_at: datetime | None, now: datetime) -> bool:
    """A code goes into the pool with no ``expiresAt`` or one still ahead, never already expired."""
    return expires_at is None or expires_at > now


def reservation_lapsed(reserved_until: datetime | None, now: datetime, payment_seen: bool) -> bool:
    """A reservation goes back to the pool once its time is up, never after a payment was seen."""
    return reserved_until is not None and reserved_until <= now and not payment_seen


def issue_expiry(batch_expires_at: datetime | None, now: datetime, validity_days: int | None
                 ) -> datetime | None:
    """Where a sold certificate's ``expiresAt`` comes from: its batch's date, else
    ``CERTIFICATE_VALIDITY_DAYS`` from the sale (none: it never expires)."""
    if batch_expires_at is not None:
        return batch_expires_at
    return now + timedelta(days=validity_days) if validity_days else None


def notifies_buyer(kind: str, notify: bool = True) -> bool:
    """Only an electronic certificate's CVC is sent to the buyer; a physical card has it
    printed under its scratch panel."""
    return notify and kind == "ELECTRONIC"

