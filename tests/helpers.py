"""Small helpers shared by tests: unique ids and loading certificates through the use cases."""
from __future__ import annotations

import string
import uuid
from decimal import Decimal

from models.domain import commands
from models.service import messagebus
from models.store.db import db


def uid(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:12]


def unique_code(prefix: str = "T") -> str:
    return (prefix + uuid.uuid4().hex[:14]).upper()


_CURRENCIES = iter(["X" + a + b for a in string.ascii_uppercase for b in string.ascii_uppercase])


def unique_currency() -> str:
    """A currency no other test of this run uses: isolates pool tests without truncating.

    Each xdist worker has a database of its own, so a sequence per process never repeats
    (random picks from 676 codes collided: two tests then shared one pool).
    """
    return next(_CURRENCIES)


def load(n: int = 1, nominal: str | None = "1000.00", currency: str = "RUB",
         kind: str = "ELECTRONIC", ctx: commands.Context | None = None) -> list[str]:
    codes = [unique_code() for _ in range(n)]
    items = tuple({"code": c, "nominal": Decimal(nominal) if nominal else None} for c in codes)
    with db.connection_context():
        messagebus.handle(commands.LoadBatch(uid("batch-"), kind, currency, items), ctx or commands.Context(actor="loader"))
    return codes


def issued(nominal: str = "1000.00", currency: str = "RUB", channel: str = "ONLINE_STORE") -> str:
    """A certificate reserved and issued for a fresh order; returns its code."""
    code = load(1, nominal, currency)[0]
    with db.connection_context():
        messagebus.handle(commands.Reserve(channel, uid("order-"), "1", Decimal(nominal), currency, code=code))
        messagebus.handle(commands.Issue(code))
    return code


def allow_large_messages(*topics: str) -> None:
    """Apache Kafka refuses a record over a topic's ``max.message.bytes`` (1 MB by default):
    raise it to 10 MiB for these topics, as a platform team would for input topics that take big
    orders, so that the service's own limit (``KAFKA_MAX_MESSAGE_BYTES``) is what is tested.
    Tansu has no such limit, nor these configs."""
    import os

    if os.environ.get("KAFKA_EMBEDDED") != "apache":
        return
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from workers.kafka import admin

    client = admin()  # kept referenced until the futures resolve
    resources = [ConfigResource("TOPIC", topic, incremental_configs=[
        ConfigEntry("max.message.bytes", "10485760", incremental_operation=AlterConfigOpType.SET)])
        for topic in topics]
    for future in client.incremental_alter_configs(resources).values():
        future.result(15)
