"""The unit of work: the one way a use case opens a transaction.

``with UnitOfWork(ctx) as uow:`` is one PostgreSQL transaction in which a use case locks its rows
(``FOR UPDATE``, advisory locks), applies the domain's rule, and writes the change with its
ledger, audit trail and stream events (the outbox), all together or not at all. Nested, it is a
savepoint: it succeeds or fails on its own, inside the enclosing one (``savepoint=False`` joins
the enclosing one instead, and fails with it). Entry points that add their own writes to the
use cases' (the HTTP idempotency record, the inbox row) open it as
``models.service.messagebus.transaction()``.

What it guarantees:

- Writes that nothing reads back at once (ledger, outbox, audit rows, the certificate's update,
  the effects of an order, the inbox row done: :meth:`UnitOfWork.queue`) are sent together at
  its end, in one round trip, or dropped with it; a read it serves (:meth:`UnitOfWork.execute`)
  takes them along first, so it sees them.
- ``NOTIFY`` wakes the outbox relay at commit; the changed certificates' cache generations are
  bumped once the outermost transaction has ended.
- A transaction lock (:meth:`UnitOfWork.lock`) is taken once per transaction, however many use
  cases ask for it; one taken in a savepoint that failed is gone with it, and taken again.
- A use case that must keep what it did and still refuse says so:
  ``return uow.commit_then_refuse(error)``.
"""
from __future__ import annotations

import contextvars
import functools
import uuid
from decimal import Decimal
from typing import Any, Callable

from models.domain import locks
from models.domain.certificate import Certificate
from models.domain.commands import SYSTEM_CONTEXT, Context
from models.domain.errors import DomainError
from models.domain.events import MONEY_MOVEMENTS, UNSEQUENCED, Event, alert_key
from models.domain.hold import Hold
from models.domain.money import valid_code
from models.domain.states import CHANNELS, SYSTEM, EventType, HoldStatus
from models.domain.timeutil import iso, utcnow
from models.store import cache
from models.store.db import Statements, db, row_by
from models.store.orders import OrderRepository
from models.store.outbox import OUTBOX_CHANNEL
from models.store.repository import active_holds_sql, certificate_view_of, to_domain, to_hold
from models.store.tables import AuditLog, AuthorizationHold, GiftCertificate, Operation, OutboxEvent

#: The innermost unit of work of this thread (None outside one).
_CURRENT: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar("gcp_unit_of_work", default=None)
_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"


class _Scope:
    """What one transaction or savepoint collects until it ends."""

    def __init__(self, parent: _Scope | None):
        self.parent = parent
        self.writes = Statements()                     # sent at its end, before RELEASE/COMMIT
        self.rows: dict[int, GiftCertificate] = {}     # certificates changed: updated at its end
        self.touched: set[str] = set()                 # their codes, for the cache
        self.notify = False                            # outbox rows written: wake the relay
        self.locks: set[str] = set()                   # transaction locks taken in it
        #: codes whose savepoint succeeded: invalidated when the outermost transaction ends
        self.invalidate: set[str] = parent.invalidate if parent is not None else set()

    def holds(self, key: str) -> bool:
        scope = self
        while scope is not None:
            if key in scope.locks:
                return True
            scope = scope.parent
        return False

    def end_writes(self) -> None:
        """Send what it collected (its last round trip before RELEASE or COMMIT)."""
        for row in self.rows.values():
            self.writes.update(row)
        if self.notify:
            self.writes.add("SELECT pg_notify(%s, '')", (OUTBOX_CHANNEL,))
        self.writes.flush()

    def succeeded(self) -> None:
        """Its savepoint was released: the enclosing one keeps its locks and cache codes."""
        self.invalidate.update(self.touched)
        if self.parent is not None:
            self.parent.locks.update(self.locks)


class UnitOfWork:
    """One transaction (nested: a savepoint): state changes, ledger, audit and outbox commit
    together or not at all. ``ctx`` says who asked (audit rows, stream envelopes)."""

    def __init__(self, ctx: Context = SYSTEM_CONTEXT, *, savepoint: bool = True):
        self.ctx = ctx
        self.now = utcnow()
        self._savepoint = savepoint
        self._scope: _Scope | None = None
        self._atomic = None
        self._token = None
        self._refusal: DomainError | None = None

    def __enter__(self) -> UnitOfWork:
        enclosing = _CURRENT.get()
        if enclosing is not None and not self._savepoint:
            self._scope = enclosing._scope  # joined: the enclosing unit sends and ends it all
        else:
            self._atomic = db.atomic()
            self._atomic.__enter__()
            self._scope = _Scope(enclosing._scope if enclosing is not None else None)
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        _CURRENT.reset(self._token)
        if self._atomic is None:
            if exc_type is None and self._refusal is not None:
                raise self._refusal
            return False
        scope = self._scope
        if exc_type is None:
            try:
                scope.end_writes()
            except BaseException as error:
                self._atomic.__exit__(type(error), error, error.__traceback__)
                self._ended(scope)
                raise
        try:
            self._atomic.__exit__(exc_type, exc, tb)
            if exc_type is None:
                scope.succeeded()
        finally:
            self._ended(scope)
        if exc_type is None and self._refusal is not None:
            raise self._refusal
        return False

    @staticmethod
    def _ended(scope: _Scope) -> None:
        if scope.parent is None:  # the outermost: committed, or rolled back (a harmless bump)
            cache.invalidate(scope.invalidate)

    def commit_then_refuse(self, error: DomainError) -> None:
        """Keep what this unit did (commit it, or release its savepoint), then raise ``error``
        from its end: an ``issue.blocked`` event, a wrong CVC counted. The use case returns
        right after (``return uow.commit_then_refuse(...)``)."""
        self._refusal = error

    # -- the database, through the unit
    def execute(self, sql: str, params: tuple | dict = (), *, lock: str | None = None):
        """Send ``sql`` now, after the writes this unit queued (so a read sees them) and, with
        ``lock``, after taking that transaction lock: one round trip. Returns the cursor."""
        scope = self._scope
        current = _CURRENT.get()
        if current is None or current._scope is not scope:  # it would land in another savepoint
            raise RuntimeError("a statement through a unit of work that is not the innermost open one")
        taking = lock is not None and not scope.holds(lock)
        if taking:
            scope.writes.add(_LOCK_SQL, (lock,))
        cursor = scope.writes.send(sql, params)
        if taking:
            scope.locks.add(lock)
        return cursor

    def queue(self, sql: str, params: tuple | dict = ()) -> None:
        """A write whose result nothing needs at once: sent at this unit's end (or with the next
        statement it executes), dropped if it fails."""
        self._scope.writes.add(sql, params)

    @property
    def writes(self) -> Statements:
        """The queued writes (:meth:`queue`), to add rows by model (``insert``, ``update``)."""
        return self._scope.writes

    def lock(self, key: str) -> None:
        """A transaction lock on ``key`` (from :mod:`models.domain.locks`), until commit."""
        if not self._scope.holds(key):
            self.execute(_LOCK_SQL, (key,))
            self._scope.locks.add(key)

    def lock_order(self, order_id: str) -> None:
        """Serialize everything about one order until the end of the transaction."""
        self.lock(locks.order_key(order_id))

    @functools.cached_property
    def orders(self) -> OrderRepository:
        """The channels' orders, read and written through this unit."""
        return OrderRepository(self.execute, self.queue)

    # -- loading
    def lock_certificate(self, code: str) -> GiftCertificate:
        """The certificate row, locked until commit; 404 if unknown."""
        if not valid_code(code):
            raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code)
        row = row_by(GiftCertificate, "code", code, lock=True)
        if row is None:
            raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code)
        return row

    def certificate(self, code: str, held: Decimal | None = None
                    ) -> tuple[GiftCertificate, Certificate, dict]:
        """The locked row, its aggregate (``held``: the active holds, summed when None) and its
        view before the change (for the audit trail): the start of every certificate use case."""
        row = self.lock_certificate(code)
        return row, to_domain(row, held), certificate_view_of(row)

    def lock_hold(self, authorization_id: str, channel: str | None
                  ) -> tuple[AuthorizationHold, GiftCertificate]:
        """A hold the channel may see and its certificate, both locked (certificate first)."""
        hold = AuthorizationHold.get_or_none(AuthorizationHold.id == authorization_id)
        if hold is None or not to_hold(hold).visible_to(channel):
            raise DomainError("AUTHORIZATION_NOT_FOUND", "no such authorization",
                              authorizationId=authorization_id)
        row = self.lock_certificate(hold.certificate.code)
        hold = AuthorizationHold.select().where(AuthorizationHold.id == authorization_id).for_update().get()
        return hold, row

    # -- saving
    def touch(self, row: GiftCertificate) -> None:
        """Mark a locked certificate row changed: saved at the end, its cache entry invalidated."""
        row.updated_at = self.now
        self._scope.rows[row.id] = row
        self._scope.touched.add(row.code)

    def add_hold(self, row: GiftCertificate, hold: Hold, **columns: Any) -> None:
        """A new hold of the locked certificate (``channel``, ``client_id``, ``order_id``)."""
        self.writes.insert(AuthorizationHold, id=hold.id, certificate=row.id, amount=hold.amount,
                           currency=row.currency, status=hold.status.value, expires_at=hold.expires_at,
                           captured_amount=hold.captured_amount,
                           created_at=self.now, updated_at=self.now, **columns)

    def save_hold(self, hold_row: AuthorizationHold, hold: Hold) -> None:
        hold_row.status, hold_row.captured_amount, hold_row.updated_at = (
            hold.status.value, hold.captured_amount, self.now)
        self.writes.update(hold_row)

    def end_holds(self, row: GiftCertificate, cert: Certificate, *, overdue_only: bool = False) -> None:
        """End the locked certificate's active holds: every one voided (before cancel, a refund
        request, expiry), or, ``overdue_only``, those past ``expires_at`` expired (the scheduler
        may be behind)."""
        params = (row.id, HoldStatus.ACTIVE.value) + ((self.now,) if overdue_only else ())
        for hold_row in AuthorizationHold.raw(active_holds_sql(overdue_only), *params):
            hold = to_hold(hold_row)
            if overdue_only and not hold.overdue(self.now):
                continue
            cert.end_hold(hold, HoldStatus.EXPIRED if overdue_only else HoldStatus.VOIDED)
            self.save_hold(hold_row, hold)

    def save(self, row: GiftCertificate, cert: Certificate, before: dict, **extra: Any) -> None:
        """Write the aggregate back, then its ledger entries, audit rows and stream events."""
        row.status = cert.status.value
        row.nominal = cert.nominal
        row.remaining_balance = cert.balance
        row.status_before_lock = cert.status_before_lock.value if cert.status_before_lock else None
        row.lock_reason = cert.lock_reason
        row.expires_at = cert.expires_at
        row.cvc_failed_attempts = cert.cvc_failed_attempts
        row.notification_status = cert.notification.value if cert.notification else None
        row.notification_channel = cert.notification_channel
        row.cvc_disclosable = cert.cvc_disclosable
        row.channel, row.order_id, row.line_id = cert.channel, cert.order_id, cert.line_id
        row.reserved_at, row.reserved_until = cert.reserved_at, cert.reserved_until
        if not cert.cvc_copy:
            row.cvc_encrypted = None  # delivered, or the certificate ended: no copy is kept
        for name, value in extra.items():
            setattr(row, name, value)
        self.touch(row)
        for entry in cert.ledger:
            references = {}
            if entry.adjustment_id or entry.transfer_id:  # support corrections (migration 0005)
                references = dict(adjustment=entry.adjustment_id, transfer=entry.transfer_id)
            self.writes.insert(
                Operation, certificate=row.id, kind=entry.kind, amount=entry.amount,
                balance_after=entry.balance_after, currency=row.currency,
                authorization=entry.authorization_id, order_id=self.ctx.correlation_id,
                channel=self.ctx.channel, op_key=self.op_key(entry.kind, row.code, entry),
                causation_id=self.ctx.cause, created_at=self.now, **references)
        cert.ledger.clear()
        after = certificate_view_of(row, cert.held)
        for event in cert.events:
            self.emit(event, row, before=before, after=after)
        cert.events.clear()

    def op_key(self, kind: str, code: str, entry) -> str:
        """A ledger row's identity: the same input event applies the same movement once, ever.

        Only a causing *event* id makes it deterministic; HTTP retries are deduplicated by the
        Idempotency-Key instead (a client-chosen request id must never collide two operations).
        """
        cause = self.ctx.causation_id or uuid.uuid4().hex
        ref = entry.authorization_id or entry.adjustment_id or entry.transfer_id or ""
        return f"{kind}:{code}:{cause}:{ref}"

    def emit(self, event: Event, row: GiftCertificate | None, *, before: dict | None = None,
             after: dict | None = None, key: str | None = None, audit: bool = True) -> dict:
        """Queue a stream event in the outbox (and its audit row); returns the envelope.

        The record's key is ``row``'s code (``key`` for an unsequenced one such as
        ``issue.blocked``); an ``error`` or ``alert`` is keyed by :func:`~models.domain.alert_key`,
        with ``key`` as its subject when it names no certificate and no order."""
        sequenced = row is not None and event.type not in UNSEQUENCED
        if sequenced:
            row.stream_sequence += 1
            self.touch(row)
        payload = dict(after or (certificate_view_of(row) if row is not None else {}))
        payload.update({k: v for k, v in event.payload.items() if v is not None})
        if event.type in MONEY_MOVEMENTS and self.ctx.correlation_id:
            payload["orderId"] = self.ctx.correlation_id  # the operation's order, not the sale's
        if event.type in (EventType.ERROR, EventType.ALERT):
            payload = dict(event.payload)
            payload.setdefault("source", self.ctx.actor if self.ctx.actor != SYSTEM else "GCP")
            key = alert_key(payload, key or (row.code if row is not None else None))
        channel = self.ctx.channel if self.ctx.channel in CHANNELS else None
        channel = channel or (row.channel if row is not None and row.channel else SYSTEM)
        envelope = {
            "eventId": str(uuid.uuid4()),
            "eventType": event.type,
            "occurredAt": iso(self.now),
            "channel": channel,
            "status": event.status,
            "correlationId": (event.correlation_id or self.ctx.correlation_id
                              or (row.order_id if row is not None else None)),
            "causationId": self.ctx.cause,
            "payload": payload,
        }
        if sequenced:
            envelope["sequence"] = row.stream_sequence
        self.writes.insert(
            OutboxEvent, event_id=envelope["eventId"], message_key=key or (row.code if row is not None else ""),
            event_type=event.type, channel=channel,
            certificate=row.id if sequenced else None,
            sequence=row.stream_sequence if sequenced else None,
            envelope=envelope, created_at=self.now)
        self._scope.notify = True
        if audit:
            self.audit(event.type, row, before=before, after=after, details=event.payload or None)
        return envelope

    def audit(self, action: str, row: GiftCertificate | None, *, before: dict | None = None,
              after: dict | None = None, details: dict | None = None, code: str | None = None) -> None:
        self.writes.insert(
            AuditLog, certificate=row.id if row is not None else None,
            code=row.code if row is not None else code, action=action, actor=self.ctx.actor,
            channel=self.ctx.channel, request_id=self.ctx.request_id,
            correlation_id=self.ctx.correlation_id, before=before, after=after,
            details=details, created_at=self.now)


def change_certificate(code: str, ctx: Context, change: Callable[[UnitOfWork, Certificate], Any],
                       end_holds: bool = False, **extra) -> dict:
    """The use case that only asks the aggregate for one change: lock, (void its active holds,)
    ``change(uow, cert)``, save; returns the certificate's view."""
    with UnitOfWork(ctx) as uow:
        row, cert, before = uow.certificate(code)
        if end_holds:
            uow.end_holds(row, cert)
        change(uow, cert)
        uow.save(row, cert, before, **extra)
        return certificate_view_of(row, cert.held)
