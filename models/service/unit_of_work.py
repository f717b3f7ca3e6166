"""The unit of work: one PostgreSQL transaction in which a use case locks its certificate row
(``FOR UPDATE``), applies the domain's rule, and writes the change with its ledger, audit trail
and stream events (the outbox), all together or not at all. The outbox relay is woken by
``NOTIFY`` at commit; the changed certificates' cache generations are bumped after it.
"""
from __future__ import annotations

import contextlib
import contextvars
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

from models.domain.certificate import Certificate
from models.domain.errors import DomainError
from models.domain.events import MONEY_MOVEMENTS, UNSEQUENCED, Event, alert_key
from models.domain.hold import Hold
from models.domain.money import valid_code
from models.domain.states import CHANNELS, SYSTEM, EventType, HoldStatus
from models.domain.timeutil import iso, utcnow
from models.store import cache
from models.store.db import Statements, db, one
from models.store.repository import active_holds_sql, snapshot, to_domain, to_hold
from models.store.tables import AuditLog, AuthorizationHold, GiftCertificate, Operation, OutboxEvent

#: PostgreSQL channel the outbox relay listens on.
OUTBOX_CHANNEL = "gcp_outbox"

#: PostgreSQL channel notified when a batch adds certificates (blocked paid orders wait on it).
POOL_CHANNEL = "gcp_pool_refilled"


@dataclass(frozen=True)
class Context:
    """Who asked and why: carried into the audit trail and the stream envelope."""

    actor: str = SYSTEM               # client id (JWT sub) or SYSTEM
    channel: str | None = None        # the acting channel, if any
    request_id: str | None = None     # HTTP request id
    correlation_id: str | None = None # usually the orderId
    causation_id: str | None = None   # the input eventId or request id that caused this
    identity: str | None = None       # the admin's ADMIN_IDENTITY_CLAIM (four eyes); else actor

    @property
    def cause(self) -> str | None:
        return self.causation_id or self.request_id

    @property
    def person(self) -> str:
        """Who this is for the four-eyes rule: the identity claim, else the client id."""
        return self.identity or self.actor


SYSTEM_CONTEXT = Context()

#: Codes to invalidate when the enclosing :func:`transaction` ends (None outside one).
_PENDING_INVALIDATION: contextvars.ContextVar[set | None] = contextvars.ContextVar(
    "gcp_pending_invalidation", default=None)


#: Writes of the innermost :func:`transaction` that nothing reads back before its end.
_LATER: contextvars.ContextVar[Statements | None] = contextvars.ContextVar("gcp_later", default=None)


@contextlib.contextmanager
def _later_writes():
    """The :func:`later` writes of one block: sent at its end, dropped if it fails."""
    writes = Statements()
    token = _LATER.set(writes)
    try:
        yield
        writes.flush()
    finally:
        _LATER.reset(token)


@contextlib.contextmanager
def transaction():
    """An outer transaction around use cases plus the caller's own writes (e.g. the HTTP
    idempotency record, the inbox row), so all commit together; the units of work inside become
    savepoints and their cache invalidation waits until this transaction has ended (the
    outermost one, when nested). Nested, it is a savepoint. Writes queued with :func:`later`
    go with its last round trip, or roll back with it."""
    if _PENDING_INVALIDATION.get() is not None:  # nested: the outermost one invalidates
        with db.atomic(), _later_writes():
            yield
        return
    pending: set[str] = set()
    token = _PENDING_INVALIDATION.set(pending)
    try:
        with db.atomic(), _later_writes():
            yield
    finally:
        _PENDING_INVALIDATION.reset(token)
        cache.invalidate(pending)  # after commit (or rollback: a harmless extra bump)


def later(sql: str, params: tuple = ()) -> None:
    """A write whose result nothing reads before the end of the innermost :func:`transaction`
    (an effect recorded, an inbox row done): sent then, or dropped with it if it fails; at once
    outside one. Queue it only where that transaction (not a bare ``db.atomic()`` inside it)
    bounds what it records. A reader of such rows calls :func:`flush_later` first."""
    writes = _LATER.get()
    if writes is None:
        db.execute_sql(sql, params)
    else:
        writes.add(sql, params)


def flush_later() -> None:
    """Send the queued :func:`later` writes now (before reading what they write)."""
    writes = _LATER.get()
    if writes is not None:
        writes.flush()


class UnitOfWork:
    """One transaction: state changes, ledger, audit and outbox commit together or not at all.

    After a successful commit, the touched certificates' cache generations are bumped.
    """

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.now = utcnow()
        self.touched: set[str] = set()
        self._rows: dict[int, GiftCertificate] = {}
        self._txn = None
        self._notify = False
        self.writes = Statements()  # ledger, outbox and audit rows, sent with the update at commit

    def __enter__(self) -> "UnitOfWork":
        self._txn = db.atomic()
        self._txn.__enter__()
        return self

    def touch(self, row: GiftCertificate) -> None:
        """Mark a locked certificate row changed: saved at commit, its cache entry invalidated."""
        row.updated_at = self.now
        self._rows[row.id] = row
        self.touched.add(row.code)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                for row in self._rows.values():
                    self.writes.update(row)
                if self._notify:
                    self.writes.add("SELECT pg_notify(%s, '')", (OUTBOX_CHANNEL,))
                self.writes.flush()
            except BaseException as flush_error:
                self._txn.__exit__(type(flush_error), flush_error, flush_error.__traceback__)
                raise
        committed = exc_type is None
        try:
            self._txn.__exit__(exc_type, exc, tb)
        except BaseException:
            committed = False
            raise
        finally:
            if committed:
                pending = _PENDING_INVALIDATION.get()
                if pending is not None:  # inside an outer transaction(): wait for its commit
                    pending.update(self.touched)
                else:
                    cache.invalidate(self.touched)
        return False

    # -- loading
    def lock_certificate(self, code: str) -> GiftCertificate:
        """The certificate row, locked until commit; 404 if unknown."""
        if not valid_code(code):
            raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code)
        row = one(GiftCertificate, "code", code, lock=True)
        if row is None:
            raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code)
        return row

    def certificate(self, code: str, held: Decimal | None = None
                    ) -> tuple[GiftCertificate, Certificate, dict]:
        """The locked row, its aggregate (``held``: the active holds, summed when None) and its
        view before the change (for the audit trail): the start of every certificate use case."""
        row = self.lock_certificate(code)
        return row, to_domain(row, held), snapshot(row)

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
        after = snapshot(row, cert.held)
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
        payload = dict(after or (snapshot(row) if row is not None else {}))
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
        self._notify = True
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
    def body(uow: UnitOfWork) -> dict:
        row, cert, before = uow.certificate(code)
        if end_holds:
            uow.end_holds(row, cert)
        change(uow, cert)
        uow.save(row, cert, before, **extra)
        return snapshot(row, cert.held)
    return run(ctx, body)


class Deferred(Exception):
    """Raised by a handler that must commit (e.g. an ``issue.blocked`` event) and still fail."""

    def __init__(self, error: DomainError):
        super().__init__(error.message)
        self.error = error


def run(ctx: Context, body: Callable[[UnitOfWork], Any]):
    """Run ``body`` in a unit of work; a :class:`Deferred` commits, then raises its error."""
    deferred: DomainError | None = None
    with UnitOfWork(ctx) as uow:
        try:
            result = body(uow)
        except Deferred as d:
            deferred, result = d.error, None
    if deferred is not None:
        raise deferred
    return result
