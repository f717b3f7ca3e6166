"""Support's corrections and their four eyes: balance adjustments, transfers that wait for a
second admin, and the rule of when they must."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from models.domain.errors import DomainError
from models.domain.money import ZERO

#: Why support adjusts a balance (contract section 3, ``actions/adjust``).
ADJUST_REASONS = ("SUPPORT_CORRECTION", "COMPLIMENTARY", "DAMAGED_CARD", "FRAUD_RECOVERY", "OTHER")
#: Which way an adjustment moves the balance.
DIRECTIONS = ("CREDIT", "DEBIT")
#: An adjustment's life: applied at once, or pending until a second admin decides (or its
#: time is up).
ADJUSTMENT_STATUSES = ("PENDING_APPROVAL", "APPLIED", "REJECTED", "EXPIRED")



def needs_second_approval(amount: Decimal, limit: Decimal, moved_lately: Decimal = ZERO) -> bool:
    """Four eyes: an adjustment or a transfer waits for a second admin when it, together with
    what the certificate already moved without a second approver within
    ``ADJUST_APPROVAL_WINDOW`` (``moved_lately``, credits and debits alike), is above
    ``ADJUST_APPROVAL_LIMIT``. Splitting a large correction into small ones so gets nowhere."""
    return moved_lately + amount > limit


def same_person(a: str, b: str) -> bool:
    """Whether two admin identities (``ADMIN_IDENTITY_CLAIM``) name one person: compared
    case-insensitively, so "Alice" cannot approve what "alice" asked for. One person holding
    two identities is the identity provider's to prevent."""
    return a.casefold() == b.casefold()


class Approval:
    """The life of a support change that may wait for a second admin (four eyes): pending until
    ``expires_at``; then another person approves it (and only then is it carried out) or
    anyone rejects it. A subclass has ``id``, ``requested_by``, ``expires_at``, ``status`` and
    ``decided_by``; ``KIND`` names it in error codes (``ADJUSTMENT_EXPIRED``...)."""

    KIND = "ADJUSTMENT"
    id: str
    requested_by: str
    expires_at: datetime | None
    status: str
    decided_by: str | None

    def lapsed(self, now: datetime) -> bool:
        """Pending past ``ADJUST_APPROVAL_TTL``: it can no longer be decided."""
        return (self.status == "PENDING_APPROVAL" and self.expires_at is not None
                and self.expires_at <= now)

    def effective_status(self, now: datetime) -> str:
        """The status as support sees it: a pending one past its time is EXPIRED."""
        return "EXPIRED" if self.lapsed(now) else self.status

    def expire(self, now: datetime) -> bool:
        """Mark a lapsed pending one EXPIRED; True when it changed."""
        if self.lapsed(now):
            self.status = "EXPIRED"
            return True
        return False

    def _require_pending(self, now: datetime) -> None:
        name = self.KIND.lower()
        if self.lapsed(now):
            raise DomainError(f"{self.KIND}_EXPIRED", f"the {name} waited longer than "
                              "ADJUST_APPROVAL_TTL and can no longer be approved or rejected",
                              **{f"{name}Status": "EXPIRED"})
        if self.status != "PENDING_APPROVAL":
            raise DomainError(f"{self.KIND}_NOT_PENDING", f"the {name} is {self.status}",
                              **{f"{name}Status": self.status})

    def approve(self, by: str, now: datetime) -> None:
        """A second admin approves (the caller then carries it out)."""
        self._require_pending(now)
        if same_person(by, self.requested_by):
            raise DomainError("SELF_APPROVAL_FORBIDDEN", f"an {self.KIND.lower()} must be approved "
                              "by another admin than the one who asked for it",
                              requestedBy=self.requested_by)
        self.status, self.decided_by = "APPLIED", by

    def reject(self, by: str, now: datetime) -> None:
        """Refuse it (its author may withdraw it too: nothing moves)."""
        self._require_pending(now)
        self.status, self.decided_by = "REJECTED", by


@dataclass
class Adjustment(Approval):
    """A support correction of a certificate's balance, and who asked for and decided it
    (``requested_by`` and ``decided_by``: their identities)."""

    id: str
    direction: str  # CREDIT | DEBIT
    amount: Decimal
    reason: str
    requested_by: str
    expires_at: datetime | None  # None when applied at once
    status: str = "PENDING_APPROVAL"
    decided_by: str | None = None

    @classmethod
    def request(cls, adjustment_id: str, direction: str, amount: Decimal, reason: str, by: str,
                now: datetime, limit: Decimal, ttl: timedelta,
                moved_lately: Decimal = ZERO) -> "Adjustment":
        """A new adjustment: applied at once unless :func:`needs_second_approval`, else
        pending for ``ttl``."""
        if direction not in DIRECTIONS:
            raise DomainError("VALIDATION_ERROR", "direction must be CREDIT or DEBIT", field="direction")
        if reason not in ADJUST_REASONS:
            raise DomainError("VALIDATION_ERROR", "unknown adjustment reason", field="reason")
        if needs_second_approval(amount, limit, moved_lately):
            return cls(adjustment_id, direction, amount, reason, by, now + ttl)
        return cls(adjustment_id, direction, amount, reason, by, None, "APPLIED")

    @property
    def signed_amount(self) -> Decimal:
        return self.amount if self.direction == "CREDIT" else -self.amount


@dataclass
class PendingTransfer(Approval):
    """A transfer that waits for a second admin: the whole balance of the source as it was when
    asked (``amount``), onto ``to_code`` or, with None, the next certificate of the pool."""

    KIND = "TRANSFER"
    id: str
    amount: Decimal
    to_code: str | None
    reason: str
    requested_by: str
    expires_at: datetime | None
    status: str = "PENDING_APPROVAL"
    decided_by: str | None = None


def transfer_expiry(source_expires: datetime | None, target_batch_expires: datetime | None
                    ) -> datetime | None:
    """A transfer never extends validity: the target keeps the source's ``expiresAt``, or its
    own batch's if that is earlier (None when neither has one)."""
    limits = [t for t in (source_expires, target_batch_expires) if t is not None]
    return min(limits) if limits else None

