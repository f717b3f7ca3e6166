"""A difference ``reconcile`` reports, and the query helper its checks share."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Difference:
    """One figure on which the mart and its source disagree."""

    check: str
    channel: str
    currency: str
    mart: Decimal
    source: Decimal
    detail: str = ""

    @property
    def delta(self) -> Decimal:
        return self.mart - self.source

    def __str__(self) -> str:
        fmt = (lambda v: f"{v:.2f}") if isinstance(self.mart, Decimal) or isinstance(self.source, Decimal) else str
        detail = f" ({self.detail})" if self.detail else ""
        return (f"{self.check} {self.channel} {self.currency}{detail}: mart {fmt(self.mart)}, "
                f"source {fmt(self.source)}, difference {fmt(self.delta)}")


def _q(conn, sql: str, params=()) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()
