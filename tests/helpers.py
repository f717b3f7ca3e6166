"""Small helpers shared by tests: unique ids and loading certificates through the use cases."""
from __future__ import annotations

import uuid
from decimal import Decimal

from models import services as svc
from models.db import db


def uid(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:12]


def unique_code(prefix: str = "T") -> str:
    return (prefix + uuid.uuid4().hex[:14]).upper()


def unique_currency() -> str:
    """A currency nobody else uses in this run: isolates pool tests without truncating."""
    import random
    import string

    return "X" + "".join(random.choice(string.ascii_uppercase) for _ in range(2))


def load(n: int = 1, nominal: str | None = "1000.00", currency: str = "RUB",
         kind: str = "ELECTRONIC", ctx: svc.Context | None = None) -> list[str]:
    codes = [unique_code() for _ in range(n)]
    items = tuple({"code": c, "nominal": Decimal(nominal) if nominal else None} for c in codes)
    with db.connection_context():
        svc.handle(svc.LoadBatch(uid("batch-"), kind, currency, items), ctx or svc.Context(actor="loader"))
    return codes


def issued(nominal: str = "1000.00", currency: str = "RUB", channel: str = "ONLINE_STORE") -> str:
    """A certificate reserved and issued for a fresh order; returns its code."""
    code = load(1, nominal, currency)[0]
    with db.connection_context():
        svc.handle(svc.Reserve(channel, uid("order-"), "1", Decimal(nominal), currency, code=code))
        svc.handle(svc.Issue(code))
    return code
