"""The channels' orders as recorded: ``sales_order``, ``order_payment``, the effects applied to an
order (``order_effect``), its blocked lines, and the certificates reserved for its lines.

:class:`OrderRepository` reads and writes through a unit of work (``uow.orders``): its reads go
after the writes the unit queued (an effect recorded a moment ago is seen), and the writes
nothing reads back at once (an effect, the order paid) are queued with the unit's others.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal
from typing import Callable

from models.domain.correlation import Reservation
from models.domain.order import Line, Order, OrderRecord, Payment, RefundRequest, Tender, merge_order_message
from models.domain.states import OrderStatus
from models.domain.timeutil import parse_time_or_none
from models.store.db import insert_statement, update_statement
from models.store.tables import SalesOrder

#: The ``sales_order`` columns of :class:`~models.domain.order.OrderRecord`.
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(OrderRecord))
_RESERVATION_COLUMNS = "code, status, channel, order_id, line_id, nominal, currency, kind"


def _line(raw: dict) -> Line:
    return Line(str(raw["lineId"]), raw["type"], Decimal(raw["amount"]), raw.get("certificateCode"))


def _tender(raw: dict) -> Tender:
    return Tender(raw["type"], Decimal(raw["amount"]), raw.get("certificateCode"), raw.get("authorizationId"))


def _reservation(row) -> Reservation:
    code, status, channel, order_id, line_id, nominal, currency, kind = row
    return Reservation(code, status, channel, order_id, line_id, nominal, currency.strip(), kind)


def order_from(order_id: str, channel, currency, total, lines, tenders, cancelled_by, refunds) -> Order:
    """The order the rules see, from what ``sales_order`` keeps of it."""
    refunds = tuple(
        RefundRequest(r["eventId"], parse_time_or_none(r.get("occurredAt")),
                      tuple((str(x["lineId"]), Decimal(x["amount"])) for x in r.get("refundLines") or ()))
        for r in refunds or ())
    return Order(order_id=order_id, channel=channel, currency=currency.strip(), total=total,
                 lines=tuple(_line(x) for x in lines or ()), tenders=tuple(_tender(x) for x in tenders or ()),
                 cancelled_by=cancelled_by, refunds=refunds)


class OrderRepository:
    """The orders, through one unit of work (``execute``: a statement sent after its queued
    writes; ``queue``: a write sent with its others)."""

    def __init__(self, execute: Callable, queue: Callable[[str, tuple], None]):
        self._execute = execute
        self._queue = queue

    # -- the orders and their payments
    def exists(self, order_id: str) -> bool:
        return self._execute("SELECT 1 FROM sales_order WHERE order_id = %s", (order_id,)).fetchone() is not None

    def load(self, order_id: str) -> tuple[Order | None, dict[str, str]]:
        """The order as recorded, and ``{effect key: outcome}`` of the effects already applied
        to it (one round trip)."""
        row = self._execute("SELECT channel, currency, total, lines, tenders, cancelled_event_id, refunds,"
                            " (SELECT json_object_agg(effect_key, outcome) FROM order_effect e"
                            "   WHERE e.order_id = o.order_id)"
                            " FROM sales_order o WHERE order_id = %s", (order_id,)).fetchone()
        if row is None:
            return None, {}
        return order_from(order_id, *row[:7]), row[7] or {}

    def payments(self, order_id: str) -> list[Payment]:
        """Every payment event of the order, in arrival order."""
        rows = self._execute(
            "SELECT id, event_id, payment_id, event_type, amount, currency, occurred_at, gc_code, gc_operation,"
            " gc_amount, payload->'refund', payload->>'failureReason' FROM order_payment WHERE order_id = %s"
            " ORDER BY id", (order_id,)).fetchall()
        payments = []
        for (seq, event_id, payment_id, event_type, amount, currency, occurred, gc_code, gc_operation,
             gc_amount, refund, failure) in rows:
            refund = refund or {}
            payments.append(Payment(
                event_id=event_id, payment_id=payment_id, event_type=event_type, amount=amount,
                currency=currency.strip(), occurred_at=occurred, seq=seq, gc_code=gc_code,
                gc_operation=gc_operation, gc_amount=gc_amount,
                requisites_required=bool(refund.get("requisitesRequired")),
                reason=refund.get("reason") or failure))
        return payments

    def record_order_message(self, msg: dict, now: dt.datetime) -> OrderRecord | None:
        """Merge an All_SalesOrder message into ``sales_order`` (under the order's lock) by the
        rule of :func:`~models.domain.order.merge_order_message`. Returns the record when the
        order is new (its first message), else None."""
        columns = ", ".join(f'"{name}"' for name in _RECORD_FIELDS)
        row = self._execute(f"SELECT {columns} FROM sales_order WHERE order_id = %s FOR UPDATE",
                            (msg["orderId"],)).fetchone()
        before = None
        if row is not None:
            before = OrderRecord(**dict(zip(_RECORD_FIELDS, row)))
            before.status = OrderStatus(before.status)
        record = merge_order_message(before, msg, parse_time_or_none(msg.get("occurredAt")), now)
        values = {name: getattr(record, name) for name in _RECORD_FIELDS}
        values["status"] = record.status.value
        if row is None:
            self._execute(*insert_statement(SalesOrder, **values, created_at=now, updated_at=now))
            return record
        self._execute(*update_statement(SalesOrder(**values, updated_at=now)))
        return None

    def record_payment_message(self, msg: dict, now: dt.datetime) -> bool:
        """Store an All_Payments message (once per eventId). Returns False for a duplicate."""
        gc = msg.get("giftCertificate") or {}
        cursor = self._execute(
            "INSERT INTO order_payment (event_id, order_id, payment_id, event_type, channel, amount, currency,"
            " method, gc_code, gc_operation, gc_amount, payload, occurred_at, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)"
            " ON CONFLICT (event_id) DO NOTHING RETURNING id",
            (msg["eventId"], msg["orderId"], msg["paymentId"], msg["eventType"], msg["channel"],
             Decimal(msg["amount"]), msg["currency"], msg["method"], gc.get("code"), gc.get("operation"),
             Decimal(gc["amount"]) if gc.get("amount") else None, json.dumps(msg),
             parse_time_or_none(msg.get("occurredAt")), now))
        return cursor.fetchone() is not None

    def record_effect(self, order_id: str, key: str, outcome: str, detail: str | None,
                      cause: str | None) -> None:
        """An effect applied (queued: sent with the unit's other writes)."""
        self._queue("INSERT INTO order_effect (order_id, effect_key, outcome, detail, causation_id)"
                    " VALUES (%s, %s, %s, %s, %s)", (order_id, key, outcome, detail, cause))

    def mark_paid(self, order_id: str, now: dt.datetime) -> None:
        """The order's certificates were issued: it is PAID (queued; once)."""
        self._queue("UPDATE sales_order SET status = %s, paid_at = %s WHERE order_id = %s AND paid_at IS NULL",
                    (OrderStatus.PAID.value, now, order_id))

    # -- the certificates of its lines
    def line_certificate(self, channel: str, order_id: str, line_id: str) -> Reservation | None:
        """The certificate that ``channel`` reserved (or sold) for an order line."""
        row = self._execute(f"SELECT {_RESERVATION_COLUMNS} FROM gift_certificate WHERE channel = %s"
                            " AND order_id = %s AND line_id = %s", (channel, order_id, line_id)).fetchone()
        return _reservation(row) if row else None

    def line_certificates(self, order_id: str, line_id: str, code: str | None) -> list[Reservation]:
        """Every certificate reserved or sold for an order line by any channel, and the one the
        line names (one round trip)."""
        rows = self._execute(f"SELECT {_RESERVATION_COLUMNS} FROM gift_certificate"
                             " WHERE (order_id = %s AND line_id = %s) OR code = %s ORDER BY id",
                             (order_id, line_id, code)).fetchall()
        return [_reservation(r) for r in rows]

    def issued_codes(self, order_id: str) -> dict[str, str]:
        """``{lineId: code}`` of the certificates reserved or sold for the order's lines."""
        return dict(self._execute("SELECT line_id, code FROM gift_certificate WHERE order_id = %s"
                                  " AND line_id IS NOT NULL", (order_id,)).fetchall())

    def reserved_codes(self, channel: str, order_id: str) -> list[str]:
        """The certificates still RESERVED for the order by its channel, oldest first."""
        return [code for (code,) in self._execute(
            "SELECT code FROM gift_certificate WHERE channel = %s AND order_id = %s AND status = 'RESERVED'"
            " ORDER BY id", (channel, order_id)).fetchall()]

    # -- lines waiting for the pool
    def block_line(self, order_id: str, line_id: str, channel: str, nominal: Decimal, currency: str,
                   kind: str, cause: str | None, now: dt.datetime) -> None:
        """A paid line the pool cannot serve waits for a refill (once per order line)."""
        self._execute("INSERT INTO blocked_issue (order_id, line_id, channel, nominal, currency, kind, status,"
                      " causation_id, created_at) VALUES (%s, %s, %s, %s, %s, %s, 'BLOCKED', %s, %s)"
                      " ON CONFLICT DO NOTHING", (order_id, line_id, channel, nominal, currency, kind, cause, now))

    def cancel_blocked_lines(self, order_id: str, now: dt.datetime) -> None:
        """The order was cancelled: its lines wait for nothing any more."""
        self._execute("UPDATE blocked_issue SET status = 'CANCELLED', resolved_at = %s"
                      " WHERE order_id = %s AND status = 'BLOCKED'", (now, order_id))
