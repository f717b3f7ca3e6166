"""Use cases: one small handler per command, found through :func:`handle`.

The HTTP views and the actors only build a command and call ``handle(command, ctx)``. Every
handler runs in a :class:`UnitOfWork`: one PostgreSQL transaction that locks the certificate
row (``FOR UPDATE``), applies the domain rule, and writes the ledger, the audit trail and the
stream events (outbox) together; the outbox relay is woken by ``NOTIFY`` at commit.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

from peewee import IntegrityError, fn

from config import get_settings
from models import cache, cvc as cvc_secret, cvc_budget
from models.db import Statements, db, locking_select_sql
from models.domain import (CHANNELS, SYSTEM, Certificate, DomainError, Event, Hold, Status,
                           fmt_money, hold_overdue, reservation_lapsed,
                           valid_code, ZERO)
from models.tables import (AuditLog, AuthorizationHold, GiftCertificate,
                           Operation, OrderPayment, OutboxEvent)

log = logging.getLogger("gcp.services")
#: Events that are not about one certificate's life and carry no ``sequence``.
UNSEQUENCED = frozenset({"issue.blocked", "error", "alert"})
#: Events that move money: their payload's ``orderId`` is the operation's order and ``amount``
#: the operation's amount (contract section 4, example 21).
MONEY_MOVEMENTS = frozenset({"redeem.partial", "redeem.full", "refund", "authorization.created",
                             "authorization.captured", "authorization.voided",
                             "authorization.expired", "adjust"})
#: PostgreSQL channel the outbox relay listens on.
OUTBOX_CHANNEL = "gcp_outbox"
#: PostgreSQL channel notified when a batch adds certificates (blocked paid orders wait on it).
POOL_CHANNEL = "gcp_pool_refilled"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(ts: dt.datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-22T10:00:00.123Z``."""
    if ts is None:
        return None
    ts = ts.astimezone(dt.timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


# ---- who is acting -------------------------------------------------------------------------

@dataclass(frozen=True)
class Context:
    """Who asked and why: carried into the audit trail and the stream envelope."""

    actor: str = SYSTEM               # client id (JWT sub) or SYSTEM
    channel: str | None = None        # the acting channel, if any
    request_id: str | None = None     # HTTP request id
    correlation_id: str | None = None # usually the orderId
    causation_id: str | None = None   # the input eventId or request id that caused this

    @property
    def cause(self) -> str | None:
        return self.causation_id or self.request_id


SYSTEM_CONTEXT = Context()


# ---- unit of work ---------------------------------------------------------------------------

def snapshot(row: GiftCertificate, held: Decimal | None = None) -> dict:
    """The certificate as channels see it (never the CVC)."""
    view = {
        "code": row.code,
        "status": row.status,
        "nominal": fmt_money(row.nominal),
        "remainingBalance": fmt_money(row.remaining_balance),
        "currency": row.currency,
        "kind": row.kind,
        "channel": row.channel,
        "orderId": row.order_id,
        "issuedAt": iso(row.issued_at),
        "expiresAt": iso(row.expires_at),
        "lockReason": row.lock_reason,
        "notificationStatus": row.notification_status,
    }
    if held is not None:
        view["available"] = fmt_money(max(row.remaining_balance - held, ZERO))
    return view


# The two reads of a certificate's holds on every authorize, capture, void and balance read,
# built once: Peewee's query builder cost more of the web's CPU than the statements themselves
# (18% of the web's samples during authorize).
_HELD_SQL = ('SELECT COALESCE(SUM("amount"), 0) FROM "authorization_hold"'
             ' WHERE "certificate_id" = %s AND "status" = \'ACTIVE\'')


@functools.lru_cache(maxsize=None)
def _overdue_holds_sql() -> str:
    """The active holds of a certificate past a time, oldest id first, locked (built once)."""
    sentinel = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    sql, params = (AuthorizationHold.select()
                   .where((AuthorizationHold.certificate == -1) & (AuthorizationHold.status == "ACTIVE")
                          & (AuthorizationHold.expires_at <= sentinel))
                   .order_by(AuthorizationHold.id).for_update().sql())
    if list(params) != [-1, "ACTIVE", sentinel]:  # pragma: no cover - the order expire_overdue_holds passes
        raise RuntimeError(f"unexpected parameters of the overdue holds query: {params}")
    return sql


def active_held(certificate_id: int) -> Decimal:
    total = db.execute_sql(_HELD_SQL, (certificate_id,)).fetchone()[0]
    return Decimal(total).quantize(Decimal("0.01"))


def to_domain(row: GiftCertificate, held: Decimal | None = None) -> Certificate:
    return Certificate(
        code=row.code, status=Status(row.status), currency=row.currency.strip(),
        open_value=row.open_value, nominal=row.nominal, balance=row.remaining_balance,
        held=active_held(row.id) if held is None else held,
        status_before_lock=Status(row.status_before_lock) if row.status_before_lock else None,
        lock_reason=row.lock_reason, expires_at=row.expires_at,
        cvc_failed_attempts=row.cvc_failed_attempts)


#: Codes to invalidate when the enclosing :func:`transaction` ends (None outside one).
_PENDING_INVALIDATION: contextvars.ContextVar[set | None] = contextvars.ContextVar(
    "gcp_pending_invalidation", default=None)


@contextlib.contextmanager
def transaction():
    """An outer transaction around use cases plus the caller's own writes (e.g. the HTTP
    idempotency record), so both commit together; the units of work inside become savepoints
    and their cache invalidation waits until this transaction has ended (the outermost one,
    when nested)."""
    if _PENDING_INVALIDATION.get() is not None:  # nested: the outermost one invalidates
        with db.atomic():
            yield
        return
    pending: set[str] = set()
    token = _PENDING_INVALIDATION.set(pending)
    try:
        with db.atomic():
            yield
    finally:
        _PENDING_INVALIDATION.reset(token)
        cache.invalidate(pending)  # after commit (or rollback: a harmless extra bump)


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
        row = next(iter(GiftCertificate.raw(locking_select_sql(GiftCertificate, "code"), code)), None)
        if row is None:
            raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code)
        return row

    # -- saving
    def save(self, row: GiftCertificate, cert: Certificate, before: dict, **extra: Any) -> None:
        """Write the aggregate back, then its ledger entries, audit rows and stream events."""
        row.status = cert.status.value
        row.nominal = cert.nominal
        row.remaining_balance = cert.balance
        row.status_before_lock = cert.status_before_lock.value if cert.status_before_lock else None
        row.lock_reason = cert.lock_reason
        row.expires_at = cert.expires_at
        row.cvc_failed_attempts = cert.cvc_failed_attempts
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
        """Queue a stream event in the outbox (and its audit row); returns the envelope."""
        sequenced = row is not None and event.type not in UNSEQUENCED
        if sequenced:
            row.stream_sequence += 1
            self.touch(row)
        payload = dict(after or (snapshot(row) if row is not None else {}))
        payload.update({k: v for k, v in event.payload.items() if v is not None})
        if event.type in MONEY_MOVEMENTS and self.ctx.correlation_id:
            payload["orderId"] = self.ctx.correlation_id  # the operation's order, not the sale's
        if event.type in ("error", "alert"):
            payload = dict(event.payload)
            payload.setdefault("source", self.ctx.actor if self.ctx.actor != SYSTEM else "GCP")
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


# ---- commands and their handlers ---------------------------------------------------------

_HANDLERS: dict[type, Callable] = {}


def handler(command_type: type):
    def register(fn_):
        _HANDLERS[command_type] = fn_
        return fn_
    return register


def handle(command, ctx: Context = SYSTEM_CONTEXT):
    """Run the use case for ``command``. Raises :class:`DomainError` when refused."""
    try:
        fn_ = _HANDLERS[type(command)]
    except KeyError:  # pragma: no cover - a programming error
        raise TypeError(f"no handler for {type(command).__name__}") from None
    return fn_(command, ctx)


class Deferred(Exception):
    """Raised by a handler that must commit (e.g. an ``issue.blocked`` event) and still fail."""

    def __init__(self, error: DomainError):
        super().__init__(error.message)
        self.error = error


def _run(ctx: Context, body: Callable[[UnitOfWork], Any]):
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


# -- batches -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadBatch:
    batch_id: str
    kind: str
    currency: str
    certificates: tuple  # of {"code", "nominal"?, "expiresAt"?, "cvc"?} dicts, already validated
    dry_run: bool = False


@dataclass
class BatchResult:
    batch_id: str
    accepted: int
    already_loaded: int
    rejected: list[dict]
    created: bool


# The LoadBatch handler, the low-water alert and the pool gauge live in models/batches.py
# (imported at the end of this module, which registers the handler).


# -- reservation ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Reserve:
    channel: str
    order_id: str
    line_id: str
    nominal: Decimal
    currency: str
    code: str | None = None


def _order_line(channel: str, order_id: str, line_id: str) -> GiftCertificate | None:
    return (GiftCertificate.select()
            .where((GiftCertificate.channel == channel) & (GiftCertificate.order_id == order_id)
                   & (GiftCertificate.line_id == line_id)).first())


def pick_available(nominal: Decimal, currency: str, kind: str | None = "ELECTRONIC",
                   code: str | None = None) -> GiftCertificate | None:
    """The next pool certificate for ``nominal``, locked, skipping rows others hold."""
    q = GiftCertificate.select().where(GiftCertificate.status == Status.AVAILABLE.value)
    if code is not None:
        return q.where(GiftCertificate.code == code).limit(1).for_update(skip_locked=True).first()
    q = q.where(GiftCertificate.currency == currency)
    if kind:
        q = q.where(GiftCertificate.kind == kind)
    # A certificate printed for this nominal first, then open-value ones (no nominal while in
    # the pool: constraint open_value_unpriced_in_pool), oldest first. Two queries, each the
    # first entries of one range of gift_certificate_pool_idx; one query with
    # "nominal = x OR open_value" read and sorted the whole pool (70 ms at 100,000 rows).
    for which in ((GiftCertificate.nominal == nominal) & ~GiftCertificate.open_value,
                  GiftCertificate.nominal.is_null() & GiftCertificate.open_value):
        row = q.where(which).order_by(GiftCertificate.id).limit(1).for_update(skip_locked=True).first()
        if row is not None:
            return row
    return None


@handler(Reserve)
def reserve(cmd: Reserve, ctx: Context) -> tuple[dict, bool]:
    """Reserve the next pool certificate (or ``code``) for an order line.

    Returns ``(view, created)``; the same order line again returns its certificate (created=False).
    """
    for _ in range(3):
        existing = _order_line(cmd.channel, cmd.order_id, cmd.line_id)
        if existing is not None:
            return _reservation_view(existing), False
        try:
            return _run(ctx, lambda uow: _reserve(uow, cmd)), True
        except IntegrityError:  # a concurrent call reserved this order line first
            continue
    raise DomainError("ALREADY_RESERVED", "order line is being reserved concurrently")


def _reserve(uow: UnitOfWork, cmd: Reserve) -> dict:
    if cmd.code is not None:
        row = pick_available(cmd.nominal, cmd.currency, None, cmd.code)
        if row is None:
            known = GiftCertificate.get_or_none(GiftCertificate.code == cmd.code)
            if known is None:
                raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=cmd.code)
            raise DomainError("ALREADY_RESERVED", "certificate is not available",
                              status=known.status)
    else:
        row = pick_available(cmd.nominal, cmd.currency)
    if row is None:
        uow.emit(Event("issue.blocked", "ISSUE_BLOCKED", {
            "orderId": cmd.order_id, "lineId": cmd.line_id, "nominal": fmt_money(cmd.nominal),
            "currency": cmd.currency, "reason": "POOL_EMPTY"}), None, key=cmd.order_id)
        raise Deferred(DomainError("POOL_EMPTY", "no certificate available for this nominal",
                                   nominal=fmt_money(cmd.nominal), currency=cmd.currency))
    before = snapshot(row)
    cert = to_domain(row, ZERO)
    cert.reserve(cmd.nominal, cmd.currency)
    until = uow.now + dt.timedelta(seconds=get_settings().reservation_ttl_seconds)
    uow.save(row, cert, before, channel=cmd.channel, order_id=cmd.order_id, line_id=cmd.line_id,
             reserved_at=uow.now, reserved_until=until)
    _pool.check_low_water(uow, row)  # one `alert` when this takes the pool below the low-water mark
    return _reservation_view(row)


def _reservation_view(row: GiftCertificate) -> dict:
    return {"code": row.code, "status": row.status, "nominal": fmt_money(row.nominal),
            "currency": row.currency.strip(), "reservedUntil": iso(row.reserved_until),
            "orderId": row.order_id, "lineId": row.line_id, "channel": row.channel}


@dataclass(frozen=True)
class Release:
    code: str
    reason: str  # ORDER_CANCELLED | RESERVATION_EXPIRED | ...


@handler(Release)
def release(cmd: Release, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(cmd.code)
        before = snapshot(row)
        cert = to_domain(row, ZERO)
        cert.release(cmd.reason)
        uow.save(row, cert, before, channel=None, order_id=None, line_id=None, reserved_at=None,
                 reserved_until=None)
        return snapshot(row)
    return _run(ctx, body)


@dataclass(frozen=True)
class ExpireReservation:
    """The scheduler's call for a reservation past ``reservedUntil``."""
    code: str


def payment_seen(order_id: str | None, channel: str | None) -> bool:
    """Payments reported money for this order on this channel (the rule:
    ``correlation.payment_seen``); another channel's payment never pins a reservation."""
    from models import correlation  # pure rules of the order correlation

    if not order_id:
        return False
    rows = (OrderPayment.select(OrderPayment.event_id, OrderPayment.payment_id, OrderPayment.event_type,
                                OrderPayment.amount, OrderPayment.currency)
            .where((OrderPayment.order_id == order_id) & (OrderPayment.channel == channel)).tuples())
    return correlation.payment_seen([correlation.Payment(*r) for r in rows])


@handler(ExpireReservation)
def expire_reservation(cmd: ExpireReservation, ctx: Context) -> dict | None:
    """Give a lapsed reservation back to the pool, unless a payment was seen (then keep it for
    the issue). Returns the released certificate, or None when it stays as it is."""
    def body(uow: UnitOfWork) -> dict | None:
        row = uow.lock_certificate(cmd.code)
        if row.status != Status.RESERVED.value:
            return None
        if not reservation_lapsed(row.reserved_until, uow.now, payment_seen(row.order_id, row.channel)):
            return None
        uow.ctx = dataclasses.replace(uow.ctx, correlation_id=uow.ctx.correlation_id or row.order_id)
        before = snapshot(row)
        cert = to_domain(row, ZERO)
        cert.release("RESERVATION_EXPIRED")
        uow.save(row, cert, before, channel=None, order_id=None, line_id=None, reserved_at=None,
                 reserved_until=None)
        return snapshot(row)
    return _run(ctx, body)


# -- issue -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Issue:
    """Sell a reserved certificate: its order is paid in full."""
    code: str
    notify: bool = True


@handler(Issue)
def issue(cmd: Issue, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(cmd.code)
        return issue_locked(uow, row, notify=cmd.notify)
    return _run(ctx, body)


def issue_locked(uow: UnitOfWork, row: GiftCertificate, notify: bool = True) -> dict:
    """Issue an already locked, reserved row: CVC, balance, expiry, and the notification request."""
    settings = get_settings()
    before = snapshot(row)
    cert = to_domain(row, ZERO)
    expires = row.batch_expires_at
    if expires is None and settings.certificate_validity_days:
        expires = uow.now + dt.timedelta(days=settings.certificate_validity_days)
    cert.issue(expires)
    extra = dict(issued_at=uow.now, reserved_until=None, cvc_failed_attempts=0)
    extra.update(sale_cvc(row, notify))
    uow.save(row, cert, before, **extra)
    return request_cvc_notification(uow, row, before, notify)


def sale_cvc(row: GiftCertificate, notify: bool = True) -> dict:
    """The CVC columns of a certificate being sold (or receiving a transfer): a physical card
    keeps the CVC printed under its scratch panel; an electronic one gets a fresh CVC, kept
    sealed for its notification to the buyer. Never logged."""
    extra: dict = {}
    if row.kind == "PHYSICAL" and row.cvc_hash:
        secret = None  # printed under the scratch panel: its hash came with the batch
    else:  # generated once, here (a physical card of a batch loaded without CVCs: unknowable)
        secret = cvc_secret.generate()
        extra.update(cvc_secret.hashed(row.code, secret))
    if notify and row.kind == "ELECTRONIC":
        extra.update(cvc_secret.sealed(row.code, secret), cvc_disclosable=True,
                     notification_status="NOTIFICATION_REQUESTED", notification_channel="SMS")
    return extra


def request_cvc_notification(uow: UnitOfWork, row: GiftCertificate, before: dict,
                             notify: bool = True) -> dict:
    """After :func:`sale_cvc` was saved: the ``notification.requested`` event of an electronic
    certificate (CRM or the SMS actor sends its CVC). Returns the certificate's view."""
    after = snapshot(row)
    if notify and row.kind == "ELECTRONIC":
        uow.emit(Event("notification.requested", "NOTIFICATION_REQUESTED",
                       {"notificationChannel": "SMS"}), row, before=before, after=after)
    return after


# -- authorization holds --------------------------------------------------------------------

@dataclass(frozen=True)
class Authorize:
    code: str
    channel: str
    order_id: str
    amount: Decimal
    cvc: str
    currency: str | None = None


def _to_hold(h: AuthorizationHold) -> Hold:
    return Hold(h.id, h.amount, h.expires_at, h.status, h.captured_amount)


@handler(Authorize)
def authorize(cmd: Authorize, ctx: Context) -> dict:
    """Check the CVC and place a hold. Wrong CVCs are counted (and may lock) even though refused."""
    settings = get_settings()

    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(cmd.code)
        before = snapshot(row)
        cert = to_domain(row)
        cert.ensure_usable(uow.now)
        budget = cvc_budget.CvcBudget.for_client(ctx.actor)
        if not budget.take():
            raise budget.refusal()
        ok = cvc_secret.matches(row.code, cmd.cvc, row.cvc_hash, row.cvc_key_id)
        if ok:
            budget.give_back()
        cert.check_cvc(ok, settings.cvc_max_attempts)
        if not ok:
            uow.save(row, cert, before)
            if budget.exhausted():  # this wrong CVC used up the client's budget: tell the stream
                uow.emit(budget.alert_event(), None, key=row.code)
            raise Deferred(DomainError("CVC_MISMATCH", "CVC does not match",
                                       attemptsLeft=max(settings.cvc_max_attempts - cert.cvc_failed_attempts, 0)))
        if cvc_secret.needs_reseal(row.cvc_key_id):  # made with a retired key: seal it anew
            for name, value in cvc_secret.reseal(row.code, cmd.cvc, row.cvc_encrypted).items():
                setattr(row, name, value)
        expire_overdue_holds(uow, row, cert)
        hold = Hold("auth-" + uuid.uuid4().hex, cmd.amount,
                    uow.now + dt.timedelta(seconds=settings.hold_ttl_seconds))
        try:
            cert.authorize(hold, uow.now, cmd.currency)
        except DomainError as refused:  # the right CVC still ends a run of wrong ones
            if cert.events or row.cvc_failed_attempts != cert.cvc_failed_attempts:
                uow.save(row, cert, before)
                raise Deferred(refused) from None
            raise
        # sent with the certificate update, outbox and audit rows at commit (its id is ours and
        # nothing reads it back in this transaction): one round trip fewer per authorization
        uow.writes.insert(
            AuthorizationHold, id=hold.id, certificate=row.id, channel=cmd.channel, client_id=ctx.actor,
            order_id=cmd.order_id, amount=hold.amount, captured_amount=ZERO, currency=row.currency,
            status="ACTIVE", expires_at=hold.expires_at, created_at=uow.now, updated_at=uow.now)
        uow.save(row, cert, before)
        return {"authorizationId": hold.id, "code": row.code, "amount": fmt_money(hold.amount),
                "currency": row.currency.strip(), "expiresAt": iso(hold.expires_at),
                "available": fmt_money(cert.available), "status": "ACTIVE"}
    return _run(ctx, body)


@dataclass(frozen=True)
class Capture:
    authorization_id: str
    amount: Decimal | None = None
    channel: str | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Void:
    authorization_id: str
    channel: str | None = None
    expired: bool = False  # the scheduler ends holds past expiresAt


def _lock_hold(uow: UnitOfWork, authorization_id: str, channel: str | None
               ) -> tuple[AuthorizationHold, GiftCertificate]:
    hold = AuthorizationHold.get_or_none(AuthorizationHold.id == authorization_id)
    if hold is None or (channel is not None and hold.channel != channel):
        raise DomainError("AUTHORIZATION_NOT_FOUND", "no such authorization",
                          authorizationId=authorization_id)
    row = uow.lock_certificate(hold.certificate.code)  # certificate first, then its hold
    hold = AuthorizationHold.select().where(AuthorizationHold.id == authorization_id).for_update().get()
    return hold, row


@handler(Capture)
def capture(cmd: Capture, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        hold_row, row = _lock_hold(uow, cmd.authorization_id, cmd.channel)
        before = snapshot(row)
        cert = to_domain(row)
        hold = _to_hold(hold_row)
        captured = cert.capture(hold, uow.now, cmd.amount, cmd.currency)
        hold_row.status, hold_row.captured_amount, hold_row.updated_at = hold.status, captured, uow.now
        hold_row.save()
        uow.save(row, cert, before)
        return {"authorizationId": hold.id, "code": row.code, "captured": fmt_money(captured),
                "remainingBalance": fmt_money(row.remaining_balance), "status": row.status,
                "currency": row.currency.strip()}
    return _run(_with_correlation(ctx, cmd.authorization_id), body)


@handler(Void)
def void(cmd: Void, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        hold_row, row = _lock_hold(uow, cmd.authorization_id, cmd.channel)
        before = snapshot(row)
        cert = to_domain(row)
        hold = _to_hold(hold_row)
        if cmd.expired and hold.expires_at > uow.now:
            raise DomainError("INVALID_STATE", "authorization has not expired")
        cert.end_hold(hold, "EXPIRED" if cmd.expired else "VOIDED")
        hold_row.status, hold_row.updated_at = hold.status, uow.now
        hold_row.save()
        uow.save(row, cert, before)
        return {"authorizationId": hold.id, "code": row.code, "status": hold.status,
                "amount": fmt_money(hold.amount), "available": fmt_money(cert.available),
                "remainingBalance": fmt_money(row.remaining_balance)}
    return _run(_with_correlation(ctx, cmd.authorization_id), body)


def _with_correlation(ctx: Context, authorization_id: str) -> Context:
    if ctx.correlation_id:
        return ctx
    order = (AuthorizationHold.select(AuthorizationHold.order_id)
             .where(AuthorizationHold.id == authorization_id).scalar())
    return dataclasses.replace(ctx, correlation_id=order) if order else ctx


def expire_overdue_holds(uow: UnitOfWork, row: GiftCertificate, cert: Certificate) -> None:
    """Expire a locked certificate's holds past ``expires_at`` (the scheduler may be behind)."""
    holds = AuthorizationHold.raw(_overdue_holds_sql(), row.id, "ACTIVE", uow.now)
    for hold_row in holds:
        hold = _to_hold(hold_row)
        if hold_overdue(hold, uow.now):
            cert.end_hold(hold, "EXPIRED")
            hold_row.status, hold_row.updated_at = hold.status, uow.now
            hold_row.save()


def end_active_holds(uow: UnitOfWork, row: GiftCertificate, cert: Certificate) -> None:
    """Void every active hold of a locked certificate (before cancel, refund request, expiry)."""
    holds = (AuthorizationHold.select().where((AuthorizationHold.certificate == row.id)
                                             & (AuthorizationHold.status == "ACTIVE"))
             .order_by(AuthorizationHold.id).for_update())
    for hold_row in holds:
        hold = _to_hold(hold_row)
        cert.end_hold(hold, "VOIDED")
        hold_row.status, hold_row.updated_at = hold.status, uow.now
        hold_row.save()


# -- balance changes from the channels' events -----------------------------------------------

@dataclass(frozen=True)
class Redeem:
    code: str
    amount: Decimal
    currency: str | None = None


@dataclass(frozen=True)
class RefundToCertificate:
    code: str
    amount: Decimal
    currency: str | None = None


@dataclass(frozen=True)
class RequestPurchaseRefund:
    code: str
    amount: Decimal


@dataclass(frozen=True)
class PurchaseRefundNeedsDetails:
    code: str
    reason: str | None = None


@dataclass(frozen=True)
class ConfirmPurchaseRefund:
    code: str


def _change(code: str, ctx: Context, change: Callable[[UnitOfWork, Certificate], Any],
            **extra) -> dict:
    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(code)
        before = snapshot(row)
        cert = to_domain(row)
        change(uow, cert)
        uow.save(row, cert, before, **extra)
        return snapshot(row, cert.held)
    return _run(ctx, body)


@handler(Redeem)
def redeem(cmd: Redeem, ctx: Context) -> dict:
    return _change(cmd.code, ctx, lambda uow, c: c.redeem(cmd.amount, uow.now, cmd.currency))


@handler(RefundToCertificate)
def refund_to_certificate(cmd: RefundToCertificate, ctx: Context) -> dict:
    return _change(cmd.code, ctx, lambda uow, c: c.refund_credit(cmd.amount, cmd.currency))


@handler(RequestPurchaseRefund)
def request_purchase_refund(cmd: RequestPurchaseRefund, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(cmd.code)
        before = snapshot(row)
        cert = to_domain(row)
        end_active_holds(uow, row, cert)
        cert.request_purchase_refund(cmd.amount)
        uow.save(row, cert, before)
        return snapshot(row, cert.held)
    return _run(ctx, body)


@handler(PurchaseRefundNeedsDetails)
def purchase_refund_needs_details(cmd: PurchaseRefundNeedsDetails, ctx: Context) -> dict:
    return _change(cmd.code, ctx, lambda uow, c: c.refund_needs_details(cmd.reason))


@handler(ConfirmPurchaseRefund)
def confirm_purchase_refund(cmd: ConfirmPurchaseRefund, ctx: Context) -> dict:
    return _change(cmd.code, ctx, lambda uow, c: c.confirm_purchase_refund(),
                   cvc_encrypted=None, cvc_disclosable=False)


# -- support actions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Lock:
    code: str
    reason: str


@dataclass(frozen=True)
class Unlock:
    code: str


@dataclass(frozen=True)
class Cancel:
    code: str
    reason: str


@handler(Lock)
def lock(cmd: Lock, ctx: Context) -> dict:
    return _change(cmd.code, ctx, lambda uow, c: c.lock(cmd.reason))


@handler(Unlock)
def unlock(cmd: Unlock, ctx: Context) -> dict:
    return _change(cmd.code, ctx, lambda uow, c: c.unlock())


@handler(Cancel)
def cancel(cmd: Cancel, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(cmd.code)
        before = snapshot(row)
        cert = to_domain(row)
        cert._require("cancel")
        end_active_holds(uow, row, cert)
        cert.cancel(cmd.reason)
        uow.save(row, cert, before, cancel_reason=cmd.reason, cvc_encrypted=None,
                 cvc_disclosable=False)
        return snapshot(row, cert.held)
    return _run(ctx, body)


# -- CVC disclosure and notifications -----------------------------------------------------------

@dataclass(frozen=True)
class DiscloseCvc:
    code: str


@handler(DiscloseCvc)
def disclose_cvc(cmd: DiscloseCvc, ctx: Context) -> dict:
    """CRM fetches the CVC once per notification request."""
    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(cmd.code)
        if row.notification_status != "NOTIFICATION_REQUESTED" or not row.cvc_encrypted:
            raise DomainError("NO_NOTIFICATION_PENDING", "no CVC notification is pending for this "
                              "certificate", notificationStatus=row.notification_status)
        if not row.cvc_disclosable:
            raise DomainError("CVC_ALREADY_DISCLOSED",
                              "the CVC was already disclosed for this notification request")
        secret = cvc_secret.decrypt(row.cvc_encrypted)
        if secret is None:
            raise DomainError("INVALID_STATE", "the stored CVC cannot be decrypted with the configured key")
        before = snapshot(row)
        row.cvc_disclosable = False
        uow.touch(row)
        uow.emit(Event("audit", row.status, {"action": "CVC_DISCLOSED", "by": ctx.actor}), row,
                 before=before, after=snapshot(row))
        return {"code": row.code, "cvc": secret}
    return _run(ctx, body)


@dataclass(frozen=True)
class RequestNotification:
    code: str


@handler(RequestNotification)
def request_notification(cmd: RequestNotification, ctx: Context) -> dict:
    """Support asks for the CVC notification again after NOTIFICATION_FAILED: the same CVC
    (the buyer may already hold it), from the copy kept until delivery is confirmed."""
    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(cmd.code)
        cert = to_domain(row)
        cert._require("notify")
        if row.notification_status != "NOTIFICATION_FAILED":
            raise DomainError("INVALID_STATE", "a notification can be requested again only after "
                              "NOTIFICATION_FAILED", notificationStatus=row.notification_status)
        if not row.cvc_encrypted or cvc_secret.decrypt(row.cvc_encrypted) is None:
            raise DomainError("INVALID_STATE", "no CVC copy is kept to send again")
        before = snapshot(row)
        row.cvc_disclosable = True
        row.notification_status = "NOTIFICATION_REQUESTED"
        uow.touch(row)
        uow.emit(Event("notification.requested", "NOTIFICATION_REQUESTED",
                       {"notificationChannel": row.notification_channel or "SMS"}), row,
                 before=before, after=snapshot(row))
        return snapshot(row, cert.held)
    return _run(ctx, body)


@dataclass(frozen=True)
class NotificationResult:
    code: str
    delivered: bool
    reason: str | None = None


@handler(NotificationResult)
def notification_result(cmd: NotificationResult, ctx: Context) -> dict:
    """CRM (or our SMS sender) reports the notification: delivered erases the stored CVC copy."""
    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(cmd.code)
        status = "NOTIFICATION_SENT" if cmd.delivered else "NOTIFICATION_FAILED"
        if row.notification_status == status:
            return snapshot(row)  # a repeated report changes nothing
        before = snapshot(row)
        row.notification_status = status
        if cmd.delivered:
            row.cvc_encrypted, row.cvc_disclosable = None, False
        uow.touch(row)
        event = "notification.sent" if cmd.delivered else "notification.failed"
        uow.emit(Event(event, status, {"reason": cmd.reason}), row, before=before, after=snapshot(row))
        return snapshot(row)
    return _run(ctx, body)


# -- time ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExpireCertificate:
    code: str


@handler(ExpireCertificate)
def expire_certificate(cmd: ExpireCertificate, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(cmd.code)
        before = snapshot(row)
        cert = to_domain(row)
        end_active_holds(uow, row, cert)
        cert.expire(uow.now)
        uow.save(row, cert, before, cvc_encrypted=None, cvc_disclosable=False)
        return snapshot(row, cert.held)
    return _run(ctx, body)


@dataclass(frozen=True)
class RaiseAlert:
    """An ``alert`` or ``error`` event on the stream (no state change)."""
    event_type: str  # alert | error
    code: str
    message: str
    source: str
    certificate_code: str | None = None
    key: str | None = None
    details: dict | None = None  # more payload fields (never a secret)


@handler(RaiseAlert)
def raise_alert(cmd: RaiseAlert, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        payload = {**(cmd.details or {}), "code": cmd.code, "message": cmd.message,
                   "source": cmd.source}
        if cmd.certificate_code:
            payload["certificateCode"] = cmd.certificate_code
        status = "ALERT" if cmd.event_type == "alert" else "ERROR"
        return uow.emit(Event(cmd.event_type, status, payload), None,
                        key=cmd.key or cmd.certificate_code or ctx.correlation_id or "")
    return _run(ctx, body)


# ---- queries (read-only) ----------------------------------------------------------------------

def certificate_view(code: str) -> dict:
    """The certificate as ``GET /certificates/{code}`` returns it (cached, never stale)."""
    if not valid_code(code):
        raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code)

    def load() -> dict | None:
        row = GiftCertificate.get_or_none(GiftCertificate.code == code)
        return None if row is None else snapshot(row, active_held(row.id))
    view = cache.get_or_load(code, load)
    if view is None:
        raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=code)
    return view


def pool_summary() -> dict:
    rows = (GiftCertificate.select(GiftCertificate.nominal, GiftCertificate.currency,
                                   GiftCertificate.kind, fn.COUNT(GiftCertificate.id).alias("n"))
            .where(GiftCertificate.status == Status.AVAILABLE.value)
            .group_by(GiftCertificate.nominal, GiftCertificate.currency, GiftCertificate.kind)
            .order_by(GiftCertificate.currency, GiftCertificate.kind, GiftCertificate.nominal.asc(nulls="LAST"))
            .tuples())
    by = [{"nominal": fmt_money(n), "currency": c.strip(), "kind": k, "available": cnt}
          for n, c, k, cnt in rows]
    return {"available": sum(b["available"] for b in by), "byNominal": by}


# The batch use case registers its handler with the registry above (it imports this module),
# and so do support's corrections (adjust, transfer).
from models import batches as _pool  # noqa: E402,F401
from models import support as _support  # noqa: E402,F401
