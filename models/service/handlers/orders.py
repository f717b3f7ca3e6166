"""Use cases of the Kafka side: the channels' orders, payments and CRM results.

Each message becomes a command handled through ``models.service.messagebus.handle``. A handler records
what the message says about its order (``sales_order``, ``order_payment``), then asks the pure
rules of :mod:`models.domain.correlation` what is still to do and applies it through the certificate
use cases, all under a transaction-scoped advisory lock on the ``orderId`` (so one order is
correlated by one worker at a time, whatever the arrival order) and inside the caller's
transaction (the actor marks its inbox row done in the same commit).

Every applied decision is written to ``order_effect`` with its outcome, so a duplicate, a replay
or a redelivery finds it done. A refused decision (the domain said no) becomes an ``error``
event on the stream; the message itself is then handled (it is not retried).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import json
import logging
from decimal import Decimal

from models.domain import correlation as corr
from models.domain import locks
from models.domain.commands import (
    CLIENTS,
    PAYMENTS,
    SALES_ORDER,
    ClientMessage,
    ConfirmCapture,
    ConfirmPurchaseRefund,
    ExpireOrderReservation,
    ExpireReservation,
    Issue,
    NotificationResult,
    OrderMessage,
    PaymentMessage,
    PurchaseRefundNeedsDetails,
    RaiseAlert,
    Redeem,
    RefundToCertificate,
    Release,
    RequestPurchaseRefund,
    Reserve,
    ResolveBlockedIssues,
)
from models.domain.errors import DomainError
from models.domain.events import Event
from models.domain.money import fmt_money
from models.domain.states import EventType, OrderStatus, Status
from models.domain.timeutil import parse_time_or_none, utcnow
from models.service.handlers.balance import (
    confirm_purchase_refund,
    purchase_refund_needs_details,
    redeem,
    refund_to_certificate,
    request_purchase_refund,
)
from models.service.handlers.notifications import notification_result, raise_alert
from models.service.handlers.pool import expire_reservation, issue, release, reserve
from models.service.unit_of_work import Context, UnitOfWork, flush_later, later, run, transaction
from models.store.db import Statements, db, one
from models.store.tables import AuthorizationHold, BlockedIssue, ClientProfile, GiftCertificate, SalesOrder

log = logging.getLogger("gcp.orders")


#: Actions that make several changes (run in a savepoint of their own).
MULTI_STEP = frozenset({"release"})

#: Safety bound on re-deciding after applying effects (a chain is at most issue → request →
#: details → confirm).
MAX_ROUNDS = 8


def _atomic():
    """A transaction, or nothing when the caller (the actor) already holds one."""
    return contextlib.nullcontext() if db.in_transaction() else db.atomic()


#: Keys locked by the current transaction of this thread (see :func:`held_locks`).
_HELD: contextvars.ContextVar[set | None] = contextvars.ContextVar("gcp_held_locks", default=None)


@contextlib.contextmanager
def held_locks():
    """Around one transaction: a key locked twice in it is locked (queried) once."""
    token = _HELD.set(set())
    try:
        yield
    finally:
        _HELD.reset(token)


def lock_key(key: str) -> None:
    """A transaction-scoped advisory lock on ``key`` (released at commit or rollback)."""
    held = _HELD.get()
    if held is not None and key in held:
        return
    db.execute_sql("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (locks.NAMESPACE + key,))
    if held is not None:
        held.add(key)


def mark_locked(key: str) -> None:
    """``key`` was locked by the current transaction some other way (see actors.inbox)."""
    held = _HELD.get()
    if held is not None:
        held.add(key)


def lock_order(order_id: str) -> None:
    """Serialize everything about one order until the end of the current transaction."""
    lock_key(locks.ORDER + order_id)


def outcome(order_id: str | None, effects: list[tuple[str, str]] | None = None, note: str | None = None) -> dict:
    """What handling one message did: the effects applied, in order, with their outcome."""
    return {"orderId": order_id, "effects": effects or [], "note": note}


def _line(raw: dict) -> corr.Line:
    return corr.Line(str(raw["lineId"]), raw["type"], Decimal(raw["amount"]), raw.get("certificateCode"))


def _tender(raw: dict) -> corr.Tender:
    return corr.Tender(raw["type"], Decimal(raw["amount"]), raw.get("certificateCode"),
                       raw.get("authorizationId"))


def load_order(order_id: str) -> tuple[corr.Order | None, dict[str, str]]:
    """The order as recorded, and the effects already applied to it (one round trip, after the
    effects an earlier message of this transaction recorded)."""
    flush_later()
    row = db.execute_sql("SELECT channel, currency, total, lines, tenders, cancelled_event_id, refunds,"
                         " (SELECT json_object_agg(effect_key, outcome) FROM order_effect e"
                         "   WHERE e.order_id = o.order_id)"
                         " FROM sales_order o WHERE order_id = %s", (order_id,)).fetchone()
    if row is None:
        return None, {}
    return order_from(order_id, *row[:7]), row[7] or {}


def order_from(order_id: str, channel, currency, total, lines, tenders, cancelled_by, refunds) -> corr.Order:
    refunds = tuple(
        corr.RefundRequest(r["eventId"], parse_time_or_none(r.get("occurredAt")),
                           tuple((str(x["lineId"]), Decimal(x["amount"])) for x in r.get("refundLines") or ()))
        for r in refunds or ())
    return corr.Order(order_id=order_id, channel=channel, currency=currency.strip(), total=total,
                      lines=tuple(_line(x) for x in lines or ()), tenders=tuple(_tender(x) for x in tenders or ()),
                      cancelled_by=cancelled_by, refunds=refunds)


def load_payments(order_id: str) -> list[corr.Payment]:
    rows = db.execute_sql(
        "SELECT id, event_id, payment_id, event_type, amount, currency, occurred_at, gc_code, gc_operation,"
        " gc_amount, payload->'refund', payload->>'failureReason' FROM order_payment WHERE order_id = %s"
        " ORDER BY id", (order_id,)).fetchall()
    out = []
    for (seq, event_id, payment_id, event_type, amount, currency, occurred, gc_code, gc_op, gc_amount,
         refund, failure) in rows:
        refund = refund or {}
        out.append(corr.Payment(
            event_id=event_id, payment_id=payment_id, event_type=event_type, amount=amount,
            currency=currency.strip(), occurred_at=occurred, seq=seq, gc_code=gc_code,
            gc_operation=gc_op, gc_amount=gc_amount,
            requisites_required=bool(refund.get("requisitesRequired")),
            reason=refund.get("reason") or failure))
    return out

_RESERVATION_COLUMNS = "code, status, channel, order_id, line_id, nominal, currency, kind"


def _reservation(row) -> corr.Reservation:
    code, status, channel, order_id, line_id, nominal, currency, kind = row
    return corr.Reservation(code, status, channel, order_id, line_id, nominal, currency.strip(), kind)


def _reservation_view(r: corr.Reservation) -> dict:
    return {"certificateCode": r.code, "status": r.status, "channel": r.channel,
            "orderId": r.order_id, "lineId": r.line_id, "nominal": fmt_money(r.nominal),
            "currency": r.currency}


def certificate_for_line(channel: str, order_id: str, line_id: str) -> corr.Reservation | None:
    """The certificate that ``channel`` reserved (or sold) for an order line."""
    row = db.execute_sql(f"SELECT {_RESERVATION_COLUMNS} FROM gift_certificate WHERE channel = %s"
                         " AND order_id = %s AND line_id = %s", (channel, order_id, line_id)).fetchone()
    return _reservation(row) if row else None


def reservations_for_line(order_id: str, line_id: str, code: str | None) -> list[corr.Reservation]:
    """Every certificate reserved or sold for an order line by any channel, and the one the
    line names (one round trip)."""
    rows = db.execute_sql(f"SELECT {_RESERVATION_COLUMNS} FROM gift_certificate"
                          " WHERE (order_id = %s AND line_id = %s) OR code = %s ORDER BY id",
                          (order_id, line_id, code)).fetchall()
    return [_reservation(r) for r in rows]


def issued_codes(order_id: str) -> dict[str, str]:
    return dict(db.execute_sql("SELECT line_id, code FROM gift_certificate WHERE order_id = %s"
                               " AND line_id IS NOT NULL", (order_id,)).fetchall())

#: The ``sales_order`` columns of :class:`models.domain.correlation.OrderRecord`.
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(corr.OrderRecord))


def record_order_message(msg: dict, now: dt.datetime) -> SalesOrder | None:
    """Merge an All_SalesOrder message into ``sales_order`` (call under the order lock) by the
    rule of :func:`models.domain.correlation.merge_order_message`. Returns the row when the order is
    new (its first message), else None."""
    order_id = msg["orderId"]
    row = one(SalesOrder, "order_id", order_id, lock=True)
    before = None if row is None else corr.OrderRecord(**{
        name: OrderStatus(row.status) if name == "status" else getattr(row, name) for name in _RECORD_FIELDS})
    record = corr.merge_order_message(before, msg, parse_time_or_none(msg.get("occurredAt")), now)
    columns = {name: getattr(record, name) for name in _RECORD_FIELDS}
    columns["status"] = record.status.value
    if row is None:
        writes = Statements()
        writes.insert(SalesOrder, **columns, created_at=now, updated_at=now)
        writes.flush()
        return SalesOrder(**columns, created_at=now, updated_at=now)
    for name, value in columns.items():
        setattr(row, name, value)
    row.updated_at = now
    row.save()
    return None


def record_payment_message(msg: dict, now: dt.datetime) -> bool:
    """Store an All_Payments message (once per eventId). Returns False for a duplicate."""
    gc = msg.get("giftCertificate") or {}
    cursor = db.execute_sql(
        "INSERT INTO order_payment (event_id, order_id, payment_id, event_type, channel, amount, currency,"
        " method, gc_code, gc_operation, gc_amount, payload, occurred_at, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)"
        " ON CONFLICT (event_id) DO NOTHING RETURNING id",
        (msg["eventId"], msg["orderId"], msg["paymentId"], msg["eventType"], msg["channel"],
         Decimal(msg["amount"]), msg["currency"], msg["method"], gc.get("code"), gc.get("operation"),
         Decimal(gc["amount"]) if gc.get("amount") else None, json.dumps(msg),
         parse_time_or_none(msg.get("occurredAt")), now))
    return cursor.fetchone() is not None


class _Applier:
    """Applies one order's decisions in the caller's transaction."""

    def __init__(self, order: corr.Order, ctx: Context, source: str):
        self.order = order
        self.ctx = dataclasses.replace(ctx, correlation_id=order.order_id,
                                       channel=ctx.channel or order.channel)
        self.source = source

    def apply(self, decision: corr.Decision) -> tuple[str, str | None]:
        ctx = dataclasses.replace(self.ctx, causation_id=decision.cause or self.ctx.causation_id)
        action = getattr(self, "_" + decision.action)
        # a savepoint, so a refusal leaves nothing half done, where an action makes several
        # changes (the others are one use case, atomic on its own)
        guard = db.atomic() if decision.action in MULTI_STEP else contextlib.nullcontext()
        try:
            with guard:
                outcome, detail = action(decision.params, ctx)
        except DomainError as refused:
            code = decision.params.get("code")
            raise_alert(RaiseAlert("error", refused.code, refused.message, self.source,
                                   certificate_code=code, order_id=self.order.order_id), ctx)
            outcome, detail = "REFUSED", f"{refused.code}: {refused.message}"
        later("INSERT INTO order_effect (order_id, effect_key, outcome, detail, causation_id)"
              " VALUES (%s, %s, %s, %s, %s)",
              (self.order.order_id, decision.key, outcome, detail, ctx.causation_id))
        log.debug("order effect", extra={"orderId": self.order.order_id, "effect": decision.key,
                                        "outcome": outcome})
        return outcome, detail

    def _line_code(self, params: dict) -> str:
        row = certificate_for_line(self.order.channel, self.order.order_id, params["line_id"])
        code = row.code if row is not None else params.get("code")
        if not code:
            raise DomainError("CERTIFICATE_NOT_FOUND", "no certificate for this order line",
                              lineId=params["line_id"])
        return code

    # -- the actions: each returns (outcome, detail)
    def _issue(self, p: dict, ctx: Context):
        order, line_id = self.order, p["line_id"]
        line = corr.Line(line_id, corr.GC, p["nominal"], p.get("code"))
        found = reservations_for_line(order.order_id, line_id, line.code)
        own = next((r for r in found if r.channel == order.channel and r.order_id == order.order_id
                    and r.line_id == line_id), None)
        others = tuple(r for r in found if r is not own)
        mismatch = corr.line_mismatch(order, line, own, others)
        if mismatch is not None:  # issue nothing: support sorts it out
            raise_alert(RaiseAlert(
                "alert", "LINE_MISMATCH", f"order {order.order_id} line {line_id}: {mismatch}",
                self.source, certificate_code=(own.code if own else line.code), order_id=order.order_id,
                details={"lineId": line_id,
                         "line": {"certificateCode": line.code, "amount": fmt_money(line.amount),
                                  "currency": order.currency, "channel": order.channel},
                         "reservation": _reservation_view(own or others[0]) if (own or others) else None}),
                ctx)
            return "REFUSED", f"LINE_MISMATCH: {mismatch}"
        if own is not None:  # the usual case: the reservation is there
            if own.status != Status.RESERVED.value:
                return "SKIPPED", f"certificate {own.code} is {own.status}"
            issue(Issue(own.code), ctx)
            return "APPLIED", own.code
        named = next((r for r in others if r.code == line.code), None)
        with db.atomic():  # reserve again, then issue: both or neither
            return self._reissue(p, ctx, named)

    def _reissue(self, p: dict, ctx: Context, named):
        order, line_id = self.order, p["line_id"]
        row = None
        if named is not None and named.status == Status.AVAILABLE.value:
            # the reservation lapsed but the very code is still free: sell it after all
            reserve(Reserve(order.channel, order.order_id, line_id, p["nominal"],
                            order.currency, code=named.code), ctx)
            row = certificate_for_line(order.channel, order.order_id, line_id)
        if row is None:  # the reservation was lost: a fresh certificate from the pool
            try:
                reserve(Reserve(order.channel, order.order_id, line_id, p["nominal"],
                                order.currency), ctx)
            except DomainError as refused:
                if refused.code != "POOL_EMPTY":
                    raise
                BlockedIssue.insert(order_id=order.order_id, line_id=line_id, channel=order.channel,
                                    nominal=p["nominal"], currency=order.currency,
                                    kind=named.kind if named is not None else "ELECTRONIC",
                                    status="BLOCKED", causation_id=ctx.causation_id,
                                    created_at=utcnow()).on_conflict_ignore().execute()
                return "BLOCKED", "POOL_EMPTY"
            row = certificate_for_line(order.channel, order.order_id, line_id)
        issue(Issue(row.code), ctx)
        return "APPLIED", row.code

    def _release(self, p: dict, ctx: Context):
        released = []
        rows = (GiftCertificate.select(GiftCertificate.code)
                .where((GiftCertificate.channel == self.order.channel)
                       & (GiftCertificate.order_id == self.order.order_id)
                       & (GiftCertificate.status == Status.RESERVED.value)).order_by(GiftCertificate.id))
        for row in rows:
            release(Release(row.code, p["reason"]), ctx)
            released.append(row.code)
        (BlockedIssue.update(status="CANCELLED", resolved_at=utcnow())
         .where((BlockedIssue.order_id == self.order.order_id) & (BlockedIssue.status == "BLOCKED"))
         .execute())
        return "APPLIED", ",".join(released) or None

    def _redeem(self, p: dict, ctx: Context):
        redeem(Redeem(p["code"], p["amount"], p["currency"]), ctx)
        return "APPLIED", p["code"]

    def _confirm(self, p: dict, ctx: Context):
        done = confirm_capture(ConfirmCapture(p["code"], p["amount"], p["authorization_id"], self.source), ctx)
        return done["outcome"], done["detail"]

    def _refund_request(self, p: dict, ctx: Context):
        code = self._line_code(p)
        request_purchase_refund(RequestPurchaseRefund(code, p["amount"]), ctx)
        return "APPLIED", code

    def _refund_details(self, p: dict, ctx: Context):
        code = self._line_code(p)
        purchase_refund_needs_details(PurchaseRefundNeedsDetails(code, p.get("reason")), ctx)
        return "APPLIED", code

    def _refund_confirm(self, p: dict, ctx: Context):
        code = self._line_code(p)
        confirm_purchase_refund(ConfirmPurchaseRefund(code), ctx)
        return "APPLIED", code

    def _refund_credit(self, p: dict, ctx: Context):
        refund_to_certificate(RefundToCertificate(p["code"], p["amount"], p["currency"]), ctx)
        return "APPLIED", p["code"]

    def _currency_error(self, p: dict, ctx: Context):
        raise_alert(RaiseAlert("error", "CURRENCY_MISMATCH", p["message"], PAYMENTS,
                               order_id=self.order.order_id, details={"paymentId": p["payment_id"]}),
                ctx)
        return "APPLIED", p["payment_id"]

    def _alert(self, p: dict, ctx: Context):
        raise_alert(RaiseAlert("alert", p["alert"], p["message"], self.source,
                               order_id=self.order.order_id, details=p.get("details")), ctx)
        return "APPLIED", p["alert"]


def correlate(order_id: str, ctx: Context, source: str,
              recorded: SalesOrder | None = None) -> list[tuple[str, str]]:
    """Apply every decision still open for the order (call under its lock, in a transaction).

    ``recorded``: the order row just written by this transaction, when the order is new (so
    it is not read back, and no effect can have been applied to it yet)."""
    if recorded is not None:
        order, done = order_from(order_id, recorded.channel, recorded.currency, recorded.total,
                                 recorded.lines, recorded.tenders, recorded.cancelled_event_id,
                                 recorded.refunds), {}
    else:
        order, done = load_order(order_id)
    if order is None:
        return []
    applier = _Applier(order, ctx, source)
    payments = load_payments(order_id)
    applied: list[tuple[str, str]] = []
    for _ in range(MAX_ROUNDS):
        issued = issued_codes(order_id) if order.refunds else {}
        decisions = corr.decide(order, payments, done, issued)
        if not decisions:
            break
        for decision in decisions:
            outcome = applier.apply(decision)[0]
            done[decision.key] = outcome
            applied.append((decision.key, outcome))
        if not order.refunds:
            break  # only a refund's effects wait for other effects of the same order
    if any(key.startswith("issue:") for key, _ in applied):
        later("UPDATE sales_order SET status = %s, paid_at = %s"
              " WHERE order_id = %s AND paid_at IS NULL", (OrderStatus.PAID.value, utcnow(), order_id))
    return applied


def message_context(msg: dict, source: str) -> Context:
    channel = msg.get("channel")
    return Context(actor=source, channel=channel if channel in ("ONLINE_STORE", "POS") else None,
                       correlation_id=msg.get("orderId"), causation_id=msg["eventId"])


def concerns_certificates(msg: dict) -> bool:
    """An order message with a certificate line or a certificate tender."""
    return any(x.get("type") == corr.GC for x in (msg.get("lines") or []) + (msg.get("tenders") or []))


def on_order_message(cmd: OrderMessage, ctx: Context) -> dict:
    msg = cmd.message
    with _atomic():
        lock_order(msg["orderId"])
        if (msg["eventType"] in corr.SNAPSHOT_TYPES and not concerns_certificates(msg)
                and db.execute_sql("SELECT 1 FROM sales_order WHERE order_id = %s",
                                   (msg["orderId"],)).fetchone() is None):
            return outcome(msg["orderId"], note="no gift certificate in this order")
        new = record_order_message(msg, utcnow())
        return outcome(msg["orderId"], correlate(msg["orderId"], ctx, SALES_ORDER, recorded=new))


def on_payment_message(cmd: PaymentMessage, ctx: Context) -> dict:
    msg = cmd.message
    with _atomic():
        lock_order(msg["orderId"])
        if not record_payment_message(msg, utcnow()):
            return outcome(msg["orderId"], note="duplicate payment event")
        return outcome(msg["orderId"], correlate(msg["orderId"], ctx, PAYMENTS))


def on_client_message(cmd: ClientMessage, ctx: Context) -> dict:
    msg = cmd.message
    occurred = parse_time_or_none(msg.get("occurredAt")) or utcnow()
    with db.atomic():
        if msg.get("phone") or msg.get("email"):
            profile = (ClientProfile.select().where(ClientProfile.client_id == msg["clientId"])
                       .for_update().first())
            if profile is None:
                ClientProfile.insert(client_id=msg["clientId"], phone=msg.get("phone"),
                                     email=msg.get("email"), occurred_at=occurred,
                                     updated_at=utcnow()).on_conflict_ignore().execute()
            elif occurred >= profile.occurred_at:
                profile.phone = msg.get("phone") or profile.phone
                profile.email = msg.get("email") or profile.email
                profile.occurred_at, profile.updated_at = occurred, utcnow()
                profile.save()
        note = msg["eventType"]
        if msg["eventType"] == "NOTIFICATION_RESULT":
            result = msg["notification"]
            code = result["certificateCode"]
            try:
                with db.atomic():
                    notification_result(NotificationResult(code, result["status"] == "DELIVERED",
                                                      result.get("reason")), ctx)
                note = f"notification {result['status']}"
            except DomainError as refused:
                raise_alert(RaiseAlert("error", refused.code, refused.message, CLIENTS,
                                    certificate_code=code), ctx)
                note = f"refused: {refused.code}"
        return outcome(None, note=note)


def confirm_capture(cmd: ConfirmCapture, ctx: Context) -> dict:
    """Check the API capture against the tender; a mismatch raises a ``CAPTURE_MISMATCH`` alert."""
    def body(uow: UnitOfWork):
        hold = AuthorizationHold.get_or_none(AuthorizationHold.id == cmd.authorization_id)
        seen = None
        if hold is not None:
            hold, row = uow.lock_hold(cmd.authorization_id, None)
            seen = {"code": row.code, "status": hold.status, "captured": hold.captured_amount}
        mismatch = corr.capture_mismatch(cmd.code, cmd.amount, cmd.authorization_id, seen)
        if mismatch is not None:
            uow.emit(Event(EventType.ALERT, "ALERT", {"code": "CAPTURE_MISMATCH", "message": mismatch,
                                                   "source": cmd.source, "certificateCode": cmd.code,
                                                   "authorizationId": cmd.authorization_id}),
                     None)
            return {"outcome": "REFUSED", "detail": mismatch}
        hold.confirmed_by, hold.updated_at = ctx.cause, uow.now
        uow.writes.update(hold)
        uow.audit("authorization.confirmed", row, details={
            "authorizationId": hold.id, "amount": fmt_money(cmd.amount), "orderId": ctx.correlation_id})
        return {"outcome": "APPLIED", "detail": hold.id}
    return run(ctx, body)


def expire_order_reservation(cmd: ExpireOrderReservation, ctx: Context) -> dict | None:
    """Release a lapsed reservation unless its order's payment was seen (checked under the
    order's lock, so a payment being recorded right now is never overtaken)."""
    with db.atomic():
        if cmd.order_id:
            lock_order(cmd.order_id)
        return expire_reservation(ExpireReservation(cmd.code), ctx)


def resolve_blocked_issues(cmd: ResolveBlockedIssues, ctx: Context) -> dict:
    """Issue blocked paid order lines, oldest first; returns the codes issued (``issued``).

    A line whose nominal the pool still cannot serve stays blocked (no new ``issue.blocked``
    event: the first one stands), and younger lines of the same nominal wait behind it.
    """
    issued: list[str] = []
    exhausted: set[tuple] = set()
    waiting = list(BlockedIssue.select(BlockedIssue.id).where(BlockedIssue.status == "BLOCKED")
                   .order_by(BlockedIssue.id).limit(cmd.limit).tuples())
    for (blocked_id,) in waiting:
        with transaction():
            row = BlockedIssue.get_by_id(blocked_id)
            want = (row.currency.strip(), row.nominal, row.kind)
            if want in exhausted:
                continue
            lock_order(row.order_id)
            row = BlockedIssue.select().where(BlockedIssue.id == blocked_id).for_update().get()
            if row.status != "BLOCKED":
                continue
            order = SalesOrder.get_or_none(SalesOrder.order_id == row.order_id)
            line_ctx = dataclasses.replace(ctx, channel=row.channel, correlation_id=row.order_id,
                                           causation_id=row.causation_id)
            if order is not None and order.cancelled_event_id:
                row.status, row.resolved_at = "CANCELLED", utcnow()
                row.save()
                continue
            cert = certificate_for_line(row.channel, row.order_id, row.line_id)
            if cert is None:
                try:
                    with db.atomic():
                        reserve(Reserve(row.channel, row.order_id, row.line_id, row.nominal,
                                        row.currency.strip()), line_ctx)
                except DomainError as refused:
                    if refused.code != "POOL_EMPTY":
                        raise
                    exhausted.add(want)  # the savepoint dropped the repeated issue.blocked
                    continue
                cert = certificate_for_line(row.channel, row.order_id, row.line_id)
            if cert.status == Status.RESERVED.value:
                issue(Issue(cert.code), line_ctx)
                issued.append(cert.code)
            row.status, row.code, row.resolved_at = "ISSUED", cert.code, utcnow()
            row.save()
    return {"issued": issued}
