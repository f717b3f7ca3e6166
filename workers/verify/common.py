"""What a check reports (:class:`Violation`) and looks at (:class:`Scope`), and the helpers of
the checks' SQL."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

#: Default slack on top of the scheduler's and the sweeper's intervals (milliseconds).
DEFAULT_GRACE_MS = 10_000


@dataclass(frozen=True)
class Violation:
    """One broken invariant: the rule, what it is about, and the figures that show it."""

    rule: str
    subject: str  # a certificate code, "order X line Y", a hold, inbox row or transfer id
    figures: str

    def __str__(self) -> str:
        return f"{self.rule} {self.subject}: {self.figures}"


@dataclass(frozen=True)
class Scope:
    """Restrict the checks to these rows (None: a kind of row not looked at)."""

    codes: frozenset | None = None
    orders: frozenset | None = None
    inbox: frozenset | None = None  # inbox event ids

    @classmethod
    def of(cls, codes=None, orders=None, inbox=None) -> "Scope":
        as_set = lambda v: None if v is None else frozenset(v)  # noqa: E731
        return cls(as_set(codes), as_set(orders), as_set(inbox))


def _m(value) -> str:
    return "none" if value is None else f"{Decimal(value):.2f}"


def _where(scope: Scope | None, codes: tuple[str, ...] = (), orders: tuple[str, ...] = (),
           inbox: tuple[str, ...] = ()) -> tuple[str, list]:
    """The SQL condition restricting a check to ``scope`` (``true`` without one)."""
    if scope is None:
        return "true", []
    parts, params = [], []
    for columns, values in ((codes, scope.codes), (orders, scope.orders), (inbox, scope.inbox)):
        if values is None:
            continue
        for column in columns:
            parts.append(f"{column} = ANY(%s)")
            params.append(sorted(values))
    return ("(" + " OR ".join(parts) + ")") if parts else "false", params


def _rows(cur, sql: str, params=()) -> list[tuple]:
    cur.execute(sql, params)
    return cur.fetchall()
