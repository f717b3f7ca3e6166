"""The scheduler: time-driven changes, run as a Procfile process (not cron).

Every ``SCHEDULER_INTERVAL_MS`` it

- expires authorization holds past ``expiresAt`` (``authorization.expired``),
- releases reservations past ``reservedUntil`` (``release``) unless a payment was seen for the
  order (checked under the order's lock, so a payment being recorded is never overtaken),
- expires issued certificates past ``expiresAt`` (``expire``),
- forgets the ``Idempotency-Key`` answers past their time to live (every minute),
- hands over again the CVC SMS whose send is missing or stuck (``NOTIFY_VIA=sms``),

and on ``NOTIFY gcp_pool_refilled`` (a batch added codes; also every minute as a fallback) it
issues the paid order lines blocked by an empty pool, oldest first. Several schedulers may run:
one holds a PostgreSQL advisory lock and works, the others wait. Each round is a command on the
message bus (:mod:`models.service.handlers.due` finds what is due by the domain's own guards),
and each change goes through its use case, which re-checks the state under the certificate's
lock, so a late or repeated tick changes nothing.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from config import get_settings
from models.domain import commands, locks, timeutil
from models.service import messagebus
from models.store.db import connection, listening_connection, wait_for_notify
from models.store.liveness import Outages
from models.store.outbox import POOL_CHANNEL
from observability import dependency_of
from workers.process import run_process

log = logging.getLogger("gcp.scheduler")
#: Rows handled per kind and tick.
BATCH = 200
#: Blocked issues are retried at least this often even without a NOTIFY (seconds).
BLOCKED_FALLBACK = 60.0
#: Expired idempotency keys are purged this often (seconds).
HOUSEKEEPING_EVERY = 60.0
#: Who the scheduler is in the audit trail and the stream envelope.
SCHEDULER_CONTEXT = commands.Context(actor="scheduler")


@dataclass
class TickResult:
    holds_expired: list[str] = field(default_factory=list)
    reservations_released: list[str] = field(default_factory=list)
    certificates_expired: list[str] = field(default_factory=list)
    blocked_issued: list[str] = field(default_factory=list)
    idempotency_keys_purged: int = 0
    sms_handed_over: int = 0


def _as_scheduler(command) -> dict:
    return messagebus.handle(command, SCHEDULER_CONTEXT)


def tick(blocked: bool = False, housekeeping: bool = False) -> TickResult:
    """One round of every time-driven change (and of blocked issues when ``blocked``, and the
    purge of expired idempotency keys when ``housekeeping``)."""
    result = TickResult()
    with connection():
        now = timeutil.utcnow()
        result.holds_expired = _as_scheduler(commands.ExpireOverdueHolds(now, BATCH))["expired"]
        result.reservations_released = _as_scheduler(commands.ReleaseLapsedReservations(now, BATCH))["released"]
        result.certificates_expired = _as_scheduler(commands.ExpireDueCertificates(now, BATCH))["expired"]
        if blocked:
            result.blocked_issued = _as_scheduler(commands.ResolveBlockedIssues())["issued"]
        if housekeeping:
            result.idempotency_keys_purged = _as_scheduler(commands.PurgeIdempotencyKeys(now))["purged"]
        if get_settings().notify_via == "sms":
            from actors.sms import sweep

            result.sms_handed_over = sweep()
    counts = {k: v if isinstance(v, int) else len(v) for k, v in vars(result).items()}
    if any(counts.values()):
        log.info("tick", extra=counts)
    return result


class Scheduler:
    def __init__(self):
        self.settings = get_settings()
        self.conn = listening_connection("gcp-scheduler", POOL_CHANNEL)
        self.leader = False
        self.outages = Outages("scheduler")

    def try_lead(self) -> bool:
        if not self.leader:
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (locks.SCHEDULER,))
                self.leader = bool(cur.fetchone()[0])
        return self.leader

    def run(self, stop: threading.Event) -> None:
        interval = self.settings.scheduler_interval_ms / 1000.0
        refilled, last_blocked, last_housekeeping = True, 0.0, 0.0
        log.info("scheduler started", extra={"intervalMs": self.settings.scheduler_interval_ms})
        while not stop.is_set():
            started = time.monotonic()
            try:
                if self.try_lead():
                    due = refilled or started - last_blocked >= BLOCKED_FALLBACK
                    housekeeping = started - last_housekeeping >= HOUSEKEEPING_EVERY
                    try:
                        tick(blocked=due, housekeeping=housekeeping)
                        if due:
                            refilled, last_blocked = False, started
                        if housekeeping:
                            last_housekeeping = started
                    except Exception as exc:
                        if dependency_of(exc) is not None:
                            raise
                        log.exception("tick failed")  # a bug in one change: the next tick tries again
                if self._wait(max(0.0, interval - (time.monotonic() - started))):
                    refilled = True
                self.outages.ok()
            except Exception as exc:
                dependency = dependency_of(exc)
                if dependency is None:
                    raise
                stop.wait(self.outages.failed(dependency, exc))
                self._reconnect()
                refilled = True  # a refill may have come meanwhile
        self.conn.close()

    def _reconnect(self) -> None:
        """A lost connection took the leadership (a session lock) with it: connect again (the
        next round, after a backoff, tries again if the database is still away)."""
        self.leader = False
        self.conn.close()
        try:
            self.conn = listening_connection("gcp-scheduler", POOL_CHANNEL)
        except Exception as exc:
            if dependency_of(exc) is None:
                raise

    def _wait(self, timeout: float) -> bool:
        """Sleep until the next tick; True when the pool was refilled meanwhile."""
        return wait_for_notify(self.conn, timeout)


def main() -> None:
    run_process("scheduler", _serve, pool=4)


def _serve(stop: threading.Event) -> None:
    if get_settings().notify_via == "sms":
        import actors  # noqa: F401  (the broker, for the SMS sweeper's hand-over)
    Scheduler().run(stop)


if __name__ == "__main__":
    main()
