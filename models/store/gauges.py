"""The gauges of shared state, read at scrape time from PostgreSQL (issue 31).

A gauge set by whichever process last touched the state lies: in multiprocess mode each process
keeps its own value (with a ``pid`` label), and a process that never ran the query says 0. So
what every process shares (the pool by segment, the outbox and inbox backlogs, the messages
dead-lettered, the oldest pending CVC notification, the approvals waiting) is counted here, by
one statement, when ``/metrics`` is scraped: every endpoint scraped (each gunicorn worker, the
bi process's port) says the same, with no ``pid`` label. The count is cached for
:data:`CACHE_SECONDS` per process, so a burst of scrapes costs one statement.

Each process's heartbeat age comes from Redis the same way
(:class:`models.store.liveness.HeartbeatCollector`).
"""
from __future__ import annotations

import logging
import threading
import time

from config import get_settings
from models.store.db import connection, db

log = logging.getLogger("gcp.gauges")

#: How long one count serves the scrapes of a process (seconds).
CACHE_SECONDS = 2.0

#: One round trip: every figure below, from indexed, small sets (partial indexes of the
#: pending rows; the pool by its status index).
_SQL = """
WITH pool AS (
    SELECT currency, kind, coalesce(nominal::text, 'OPEN') AS nominal, count(*) AS n
    FROM gift_certificate WHERE status = 'AVAILABLE' GROUP BY 1, 2, 3
), known AS (
    SELECT split_part(segment, '/', 1) AS currency, split_part(segment, '/', 2) AS kind,
           split_part(segment, '/', 3) AS nominal FROM pool_low_water
)
SELECT
  (SELECT coalesce(json_agg(json_build_array(k.currency, k.kind, k.nominal, coalesce(p.n, 0))), '[]')
     FROM (SELECT currency, kind, nominal FROM pool UNION SELECT currency, kind, nominal FROM known) k
     LEFT JOIN pool p USING (currency, kind, nominal)),
  (SELECT count(*) FROM outbox_event WHERE published_at IS NULL),
  (SELECT extract(epoch FROM now() - min(created_at)) FROM outbox_event WHERE published_at IS NULL),
  (SELECT count(*) FROM inbox_message WHERE status = 'PENDING'),
  (SELECT extract(epoch FROM now() - min(received_at)) FROM inbox_message WHERE status = 'PENDING'),
  (SELECT count(*) FROM inbox_message WHERE status = 'FAILED'),
  (SELECT count(*) FROM gift_certificate WHERE notification_status = 'NOTIFICATION_REQUESTED'),
  (SELECT extract(epoch FROM now() - min(updated_at)) FROM gift_certificate
    WHERE notification_status = 'NOTIFICATION_REQUESTED'),
  (SELECT json_build_array(count(*) FILTER (WHERE expires_at IS NULL OR expires_at > now()),
                           count(*) FILTER (WHERE expires_at <= now() AND expires_at > now() - interval '1 day'))
     FROM balance_adjustment WHERE status = 'PENDING_APPROVAL'),
  (SELECT json_build_array(count(*) FILTER (WHERE expires_at > now()),
                           count(*) FILTER (WHERE expires_at <= now() AND expires_at > now() - interval '1 day'))
     FROM transfer_request WHERE status = 'PENDING_APPROVAL')
"""


def read() -> dict:
    """Every shared figure, counted now: ``pool`` as ``[(currency, kind, nominal, n)]``
    (``nominal`` ``OPEN`` for open value; a segment that ever went low is listed at 0 once
    empty), the backlogs and their oldest ages in seconds (0 when none), the approvals pending
    as ``(within their lifetime, lapsed unapproved within the last day)`` (a lapsed request
    stays ``PENDING_APPROVAL`` in its table and reads as EXPIRED: counted for a day, so the
    alert on it ends)."""
    with connection():
        row = db.execute_sql(_SQL).fetchone()
    pool, outbox, outbox_age, inbox, inbox_age, failed, notif, notif_age, adjust, transfer = row
    return {
        "pool": sorted((c.strip(), k, n, int(v)) for c, k, n, v in pool),
        "outbox": int(outbox), "outbox_age": float(outbox_age or 0),
        "inbox": int(inbox), "inbox_age": float(inbox_age or 0),
        "inbox_failed": int(failed),
        "notifications": int(notif), "notification_age": float(notif_age or 0),
        "approvals": {"adjustment": tuple(adjust), "transfer": tuple(transfer)},
    }


class _Cache:
    def __init__(self):
        self.lock = threading.Lock()
        self.at = -1e9
        self.value: dict | None = None

    def get(self) -> dict | None:
        with self.lock:
            if time.monotonic() - self.at >= CACHE_SECONDS:
                try:
                    self.value = read()
                except Exception as exc:  # PostgreSQL away: no shared gauges, the scrape still works
                    log.warning("shared gauges not read: %s", type(exc).__name__)
                    self.value = None
                self.at = time.monotonic()
            return self.value

    def forget(self) -> None:
        with self.lock:
            self.at = -1e9


_CACHE = _Cache()


def forget() -> None:
    """The next scrape counts again (a batch was just loaded, for example)."""
    _CACHE.forget()


class SharedStateCollector:
    """The gauges of shared state (see the module's docstring); ``gcp_shared_state_up`` is 0
    when PostgreSQL could not be read, and the other families are then left out."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily as G

        value = _CACHE.get()
        yield G("gcp_shared_state_up", "1 when the shared gauges were read from PostgreSQL",
                value=0.0 if value is None else 1.0)
        if value is None:
            return
        pool = G("gcp_pool_available", "Certificates AVAILABLE in a pool segment",
                 labels=["currency", "kind", "nominal"])
        for currency, kind, nominal, n in value["pool"]:
            pool.add_metric([currency, kind, nominal], float(n))
        yield pool
        yield G("gcp_pool_low_water_mark", "The low-water mark of every pool segment (0: none)",
                value=float(get_settings().pool_low_water_mark))
        yield G("gcp_outbox_backlog", "Outbox rows not yet published", value=float(value["outbox"]))
        yield G("gcp_outbox_oldest_seconds", "Age of the oldest outbox row not yet published",
                value=value["outbox_age"])
        yield G("gcp_inbox_backlog", "Input messages in the inbox not yet handled",
                value=float(value["inbox"]))
        yield G("gcp_inbox_oldest_seconds", "Age of the oldest input message not yet handled",
                value=value["inbox_age"])
        yield G("gcp_inbox_failed", "Input messages that failed every retry (sent to the DLQ, "
                "not replayed)", value=float(value["inbox_failed"]))
        yield G("gcp_notifications_pending", "CVC notifications requested, not yet sent",
                value=float(value["notifications"]))
        yield G("gcp_notification_oldest_pending_seconds",
                "Age of the oldest CVC notification requested and not yet sent",
                value=value["notification_age"])
        approvals = G("gcp_approvals_pending", "Adjustments and transfers waiting for a second admin "
                      "(state past_lifetime: lapsed unapproved within the last day)",
                      labels=["kind", "state"])
        for kind, (live, lapsed) in sorted(value["approvals"].items()):
            approvals.add_metric([kind, "within_lifetime"], float(live))
            approvals.add_metric([kind, "past_lifetime"], float(lapsed))
        yield approvals
