"""Every PostgreSQL advisory lock key of the service, in one place.

Session locks (``pg_advisory_lock(bigint)``) elect one leader among processes; transaction
locks (``pg_advisory_xact_lock``) serialize work on one thing until commit. The bigint keys
share the prefix ``0x6763`` ("gc"); the text keys are hashed with ``hashtextextended(key, 0)``.
"""
from __future__ import annotations

#: ``app.py migrate``: one migrator at a time (session lock).
MIGRATION = 0x6763_7001
#: The outbox relay's leadership (session lock, held while it publishes).
RELAY = 0x6763_7002
#: The scheduler's leadership (session lock).
SCHEDULER = 0x6763_7003
#: With ``hashtext(segment)``: the low-water count of one pool segment (transaction lock).
LOW_WATER = 0x6763_7004
#: The BI mart's schema creation (transaction lock).
BI_SCHEMA = 0x6763_7013
#: The BI mart's day closing: exclusive to close, shared to write (transaction lock).
BI_CLOSE = 0x6763_7014

#: The parts of the text keys (transaction locks); every key is built by :func:`order_key` or
#: :func:`client_key`, and nowhere else.
NAMESPACE, ORDER, CLIENT = "gcp-", "order:", "client:"


def order_key(order_id: str) -> str:
    """The key that serializes everything about one order (its messages, its reservations'
    expiry, its blocked issues)."""
    return NAMESPACE + ORDER + order_id


def client_key(client_id: str) -> str:
    """The key that serializes the messages of one CRM client."""
    return NAMESPACE + CLIENT + client_id
