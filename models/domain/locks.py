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

#: Text keys: ``NAMESPACE + ORDER + orderId`` serializes everything about one order,
#: ``NAMESPACE + CLIENT + clientId`` one CRM client (transaction locks; actors.inbox takes the
#: same locks in SQL from these constants).
NAMESPACE, ORDER, CLIENT = "gcp-", "order:", "client:"
