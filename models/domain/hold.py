"""A two-phase authorization hold on part of a certificate's balance."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from models.domain.money import ZERO
from models.domain.states import HoldStatus


@dataclass
class Hold:
    """A two-phase authorization hold on part of a certificate's balance."""

    id: str
    amount: Decimal
    expires_at: datetime
    status: HoldStatus = HoldStatus.ACTIVE
    captured_amount: Decimal = ZERO
    channel: str | None = None  # the channel that placed it

    def lapsed(self, now: datetime) -> bool:
        """Its time is up (whatever its status)."""
        return self.expires_at <= now

    def overdue(self, now: datetime) -> bool:
        """An active hold past its ``expires_at`` no longer reserves money: it is to be expired."""
        return self.status == HoldStatus.ACTIVE and self.lapsed(now)

    def visible_to(self, channel: str | None) -> bool:
        """A channel sees (captures, voids) only its own holds; support and the system see all."""
        return channel is None or self.channel == channel
