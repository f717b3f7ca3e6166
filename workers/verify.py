"""``verify``: the contract's invariants (section 2) recomputed from the database, and with
``--stream`` from ``GiftCertificates.Stream``; every violation with its rule and its figures.

Each check is one set-based query over a whole table (no loop over rows in Python), run in one
``REPEATABLE READ`` snapshot, so the checks see the same moment and a busy service is no
false alarm. The rules (``rule subject: figures`` on one line each):

Invariant 1, a code is sold at most once:
- ``sold_once.order_line``: two certificates reserved or sold for one channel + order + line.
- ``sold_once.code``: a certificate with more than one ``ISSUE`` ledger row or ``issue`` event,
  or whose ``ISSUE`` row names another order than the certificate's.

Invariant 2, the balance (ledger kinds: ``ISSUE`` and ``TRANSFER_IN`` open a balance at the
nominal; ``REDEEM``, ``PURCHASE_REFUND``, ``ADJUST_DEBIT``, ``TRANSFER_OUT`` take from it;
``REFUND_CREDIT``, ``ADJUST_CREDIT`` give back):
- ``balance.ledger``: ``remainingBalance`` is not the sum of the certificate's ledger rows.
- ``balance.running``: a ledger row's ``balance_after`` is not the running sum up to it (the
  first such row of a certificate: a row before it was changed or deleted).
- ``balance.formula``: for a sold certificate, ``remainingBalance`` is not nominal − redeemed +
  refunded-to-certificate − refunded-to-buyer ± adjustments − transferred out.
- ``balance.negative``, ``balance.above_nominal``.
- ``adjustment.ledger``: an ``APPLIED`` adjustment without exactly one ledger row of its signed
  amount on its certificate, or another one with a ledger row.
- ``transfer.unbalanced``: a transfer whose ledger rows are not one ``TRANSFER_OUT`` on the
  source and one ``TRANSFER_IN`` of its amount on the target, summing to zero
  (docs/support-tools.md).

Invariant 3: ``available.negative``: balance − the sum of ``ACTIVE`` holds is below zero.

Invariant 4, every state change is in the audit trail and in the outbox:
- ``stream.sequence``: a certificate's outbox ``sequence`` values are not exactly 1..n with n its
  ``stream_sequence`` (the missing numbers are listed).
- ``stream.last_state``: the certificate's status or balance is not what its last event says (a
  change that reached no event), or it left the pool without any event.
- ``stream.ledger``: a ledger row with no event of its kind on its certificate in its transaction.
- ``audit.missing``: an outbox event with no audit row (same certificate, action, transaction).
- ``outbox.missing``: an audited state change with no outbox event.
- ``stream.key``: an ``error`` or ``alert`` not keyed by the certificate it names, else the order
  it names, else a subject of its own (contract section 4: ``models.domain.alert_key``).

With ``--stream``, the topic read from its first offset to its end:
- ``stream.missing``: a published outbox event not on the stream.
- ``stream.duplicate``: an ``eventId`` on the stream more than once.
- ``stream.unknown``: an event on the stream the outbox does not have, or with another
  ``outboxId`` header than its row's id.
- ``stream.order``: a certificate's events on the stream are not ``sequence`` 1, 2, 3 ... in order.
- ``stream.incomplete``: the end of a partition was not reached in time.

Invariant 5: ``order.not_issued``: an order paid in full (not cancelled; its captured payments,
each ``paymentId`` once, in the order's currency reach its total) with a gift-certificate line
that has neither a sold certificate nor a ``blocked_issue`` row. (A line whose issue was refused,
``order_effect`` outcome ``REFUSED``, was raised to support as an alert or error and is not
counted again here.)

Time-driven work keeps up:
- ``hold.overdue``: an ``ACTIVE`` hold past ``expires_at`` + ``SCHEDULER_INTERVAL_MS`` + grace.
- ``inbox.stuck``: an inbox row ``PENDING`` longer than ``INBOX_SWEEP_AFTER_MS`` + grace.

:func:`verify` takes an optional :class:`Scope` (certificate codes, order ids, inbox event ids):
a check then only looks at those rows (the tests use it on a shared database).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal

#: Audit actions that are not stream events (written by ``UnitOfWork.audit`` directly), and
#: the unsequenced events (their outbox row names no certificate).
AUDIT_ONLY = ("adjust.requested", "adjust.expired", "adjust.rejected", "transfer.requested",
              "transfer.expired", "transfer.rejected", "authorization.confirmed", "batch.load",
              "issue.blocked", "alert", "error")
#: The events a ledger row of each kind is written with (same certificate, same transaction).
LEDGER_EVENTS = {
    "ISSUE": ("issue",),
    "REDEEM": ("redeem.partial", "redeem.full", "authorization.captured"),
    "REFUND_CREDIT": ("refund",),
    "PURCHASE_REFUND": ("refund",),
    "ADJUST_CREDIT": ("adjust",),
    "ADJUST_DEBIT": ("adjust",),
    "TRANSFER_IN": ("transfer",),
    "TRANSFER_OUT": ("transfer",),
}
#: Default slack on top of the scheduler's and the sweeper's intervals (milliseconds).
DEFAULT_GRACE_MS = 10_000


@dataclass(frozen=True)
class Violation:
    """One broken invariant: the rule, what it is about, and the figures that show it."""

    rule: str
    subject: str  # a certificate code, "order X line Y", a hold, inbox row or transfer id
    figures: str

    def __str__(self) -> str:
        return f"{self.rule} {self.subject}: {self.figures}"


@dataclass(frozen=True)
class Scope:
    """Restrict the checks to these rows (None: a kind of row not looked at)."""

    codes: frozenset | None = None
    orders: frozenset | None = None
    inbox: frozenset | None = None  # inbox event ids

    @classmethod
    def of(cls, codes=None, orders=None, inbox=None) -> "Scope":
        as_set = lambda v: None if v is None else frozenset(v)  # noqa: E731
        return cls(as_set(codes), as_set(orders), as_set(inbox))


def _m(value) -> str:
    return "none" if value is None else f"{Decimal(value):.2f}"


def _where(scope: Scope | None, codes: tuple[str, ...] = (), orders: tuple[str, ...] = (),
           inbox: tuple[str, ...] = ()) -> tuple[str, list]:
    """The SQL condition restricting a check to ``scope`` (``true`` without one)."""
    if scope is None:
        return "true", []
    parts, params = [], []
    for columns, values in ((codes, scope.codes), (orders, scope.orders), (inbox, scope.inbox)):
        if values is None:
            continue
        for column in columns:
            parts.append(f"{column} = ANY(%s)")
            params.append(sorted(values))
    return ("(" + " OR ".join(parts) + ")") if parts else "false", params


def _rows(cur, sql: str, params=()) -> list[tuple]:
    cur.execute(sql, params)
    return cur.fetchall()


# ---- invariant 1: sold once -------------------------------------------------------------

def check_sold_once(cur, scope=None) -> list[Violation]:
    out = []
    where, params = _where(scope, codes=("g.code",), orders=("g.order_id",))
    for channel, order_id, line_id, codes in _rows(cur, f"""
            SELECT g.channel, g.order_id, g.line_id, string_agg(g.code, ',' ORDER BY g.id)
            FROM gift_certificate g
            WHERE g.order_id IS NOT NULL AND g.line_id IS NOT NULL AND {where}
            GROUP BY 1, 2, 3 HAVING count(*) > 1""", params):
        out.append(Violation("sold_once.order_line", f"order {order_id} line {line_id}",
                             f"{channel}: certificates {codes}"))
    for code, order_id, issues, issue_events, orders in _rows(cur, f"""
            SELECT g.code, g.order_id, coalesce(o.n, 0), coalesce(e.n, 0), o.orders
            FROM gift_certificate g
            LEFT JOIN (SELECT certificate_id, count(*) AS n,
                              string_agg(coalesce(order_id, '-'), ',' ORDER BY id) AS orders,
                              array_agg(order_id) AS order_ids
                       FROM gift_certificate_operation WHERE kind = 'ISSUE' GROUP BY 1) o
                   ON o.certificate_id = g.id
            LEFT JOIN (SELECT certificate_id, count(*) AS n FROM outbox_event
                       WHERE event_type = 'issue' AND certificate_id IS NOT NULL GROUP BY 1) e
                   ON e.certificate_id = g.id
            WHERE (o.n > 1 OR e.n > 1
                   OR EXISTS (SELECT 1 FROM unnest(o.order_ids) x
                              WHERE x IS NOT NULL AND x IS DISTINCT FROM g.order_id))
              AND {where}""", params):
        out.append(Violation("sold_once.code", code,
                             f"{issues} ISSUE ledger row(s) for order(s) {orders}, {issue_events} "
                             f"issue event(s); the certificate's order {order_id or 'none'}"))
    return out


# ---- invariant 2: balances ----------------------------------------------------------------

def check_balances(cur, scope=None) -> list[Violation]:
    out = []
    where, params = _where(scope, codes=("g.code",))
    rows = _rows(cur, f"""
        SELECT g.code, g.status, g.nominal, g.remaining_balance, coalesce(l.total, 0),
               coalesce(l.redeemed, 0), coalesce(l.refunded, 0), coalesce(l.refunded_buyer, 0),
               coalesce(l.adjusted, 0), coalesce(l.transferred_out, 0), coalesce(l.n, 0),
               g.status NOT IN ('AVAILABLE', 'RESERVED') AS sold
        FROM gift_certificate g
        LEFT JOIN (SELECT certificate_id, count(*) AS n, sum(amount) AS total,
                          sum(-amount) FILTER (WHERE kind = 'REDEEM') AS redeemed,
                          sum(amount) FILTER (WHERE kind = 'REFUND_CREDIT') AS refunded,
                          sum(-amount) FILTER (WHERE kind = 'PURCHASE_REFUND') AS refunded_buyer,
                          sum(amount) FILTER (WHERE kind IN ('ADJUST_CREDIT', 'ADJUST_DEBIT')) AS adjusted,
                          sum(-amount) FILTER (WHERE kind = 'TRANSFER_OUT') AS transferred_out
                   FROM gift_certificate_operation GROUP BY 1) l ON l.certificate_id = g.id
        WHERE {where} AND (g.remaining_balance <> coalesce(l.total, 0) OR g.remaining_balance < 0
               OR g.remaining_balance > g.nominal
               OR (g.status NOT IN ('AVAILABLE', 'RESERVED') AND g.remaining_balance IS DISTINCT FROM
                   g.nominal - coalesce(l.redeemed, 0) + coalesce(l.refunded, 0)
                   - coalesce(l.refunded_buyer, 0) + coalesce(l.adjusted, 0)
                   - coalesce(l.transferred_out, 0)))""", params)
    for (code, status, nominal, balance, ledger, redeemed, refunded, refunded_buyer, adjusted,
         transferred_out, n, sold) in rows:
        if balance != ledger:
            out.append(Violation("balance.ledger", code, f"remainingBalance {_m(balance)}, "
                                 f"sum of {n} ledger row(s) {_m(ledger)}, difference {_m(balance - ledger)}"))
        if balance < 0:
            out.append(Violation("balance.negative", code, f"remainingBalance {_m(balance)}"))
        if nominal is not None and balance > nominal:
            out.append(Violation("balance.above_nominal", code,
                                 f"remainingBalance {_m(balance)} > nominal {_m(nominal)}"))
        if sold:
            expected = (None if nominal is None else
                        nominal - redeemed + refunded - refunded_buyer + adjusted - transferred_out)
            if expected != balance:
                out.append(Violation("balance.formula", code, (
                    f"{status}: nominal {_m(nominal)} - redeemed {_m(redeemed)} + refunded "
                    f"{_m(refunded)} - refunded to buyer {_m(refunded_buyer)} + adjusted "
                    f"{_m(adjusted)} - transferred out {_m(transferred_out)} = {_m(expected)}, "
                    f"remainingBalance {_m(balance)}")))
    for code, op_id, kind, amount, balance_after, running in _rows(cur, f"""
            SELECT DISTINCT ON (x.certificate_id) g.code, x.id, x.kind, x.amount, x.balance_after, x.running
            FROM (SELECT id, certificate_id, kind, amount, balance_after,
                         sum(amount) OVER (PARTITION BY certificate_id ORDER BY id) AS running
                  FROM gift_certificate_operation) x
            JOIN gift_certificate g ON g.id = x.certificate_id
            WHERE x.balance_after <> x.running AND {where}
            ORDER BY x.certificate_id, x.id""", params):
        out.append(Violation("balance.running", code, f"ledger row {op_id} {kind} {_m(amount)}: "
                             f"balance_after {_m(balance_after)}, running sum {_m(running)}"))
    return out


def check_available(cur, scope=None) -> list[Violation]:
    where, params = _where(scope, codes=("g.code",))
    return [Violation("available.negative", code, f"remainingBalance {_m(balance)} - {n} active "
                      f"hold(s) {_m(held)} = available {_m(balance - held)}")
            for code, balance, held, n in _rows(cur, f"""
                SELECT g.code, g.remaining_balance, h.held, h.n FROM gift_certificate g
                JOIN (SELECT certificate_id, sum(amount) AS held, count(*) AS n FROM authorization_hold
                      WHERE status = 'ACTIVE' GROUP BY 1) h ON h.certificate_id = g.id
                WHERE g.remaining_balance - h.held < 0 AND {where}""", params)]


def check_adjustments(cur, scope=None) -> list[Violation]:
    where, params = _where(scope, codes=("g.code",))
    return [Violation("adjustment.ledger", adj_id, (
                f"{code} {status} {direction} {_m(amount)}: {n} ledger row(s) summing {_m(total)}"
                + ("" if own else ", on another certificate")))
            for adj_id, code, status, direction, amount, n, total, own in _rows(cur, f"""
                SELECT a.id, g.code, a.status, a.direction, a.amount, count(o.id), sum(o.amount),
                       coalesce(bool_and(o.certificate_id = a.certificate_id), true)
                FROM balance_adjustment a JOIN gift_certificate g ON g.id = a.certificate_id
                LEFT JOIN gift_certificate_operation o ON o.adjustment_id = a.id
                WHERE {where}
                GROUP BY a.id, g.code, a.status, a.direction, a.amount
                HAVING (a.status = 'APPLIED' AND (count(o.id) <> 1 OR sum(o.amount) IS DISTINCT FROM
                        CASE a.direction WHEN 'CREDIT' THEN a.amount ELSE -a.amount END))
                    OR (a.status <> 'APPLIED' AND count(o.id) > 0)
                    OR NOT coalesce(bool_and(o.certificate_id = a.certificate_id), true)
                ORDER BY a.id""", params)]


def check_transfers(cur, scope=None) -> list[Violation]:
    where, params = _where(scope, codes=("gf.code", "gt.code"))
    return [Violation("transfer.unbalanced", transfer_id, (
                f"{source} -> {target} amount {_m(amount)}: {n} ledger row(s), net {_m(net)}, "
                f"credit {_m(credit)}" + ("" if sides else ", a row on the wrong side")))
            for transfer_id, source, target, amount, net, n, credit, sides in _rows(cur, f"""
                SELECT t.id, gf.code, gt.code, t.amount, sum(o.amount), count(o.id), max(o.amount),
                       coalesce(bool_and((o.kind = 'TRANSFER_OUT' AND o.certificate_id = t.from_certificate_id)
                                      OR (o.kind = 'TRANSFER_IN' AND o.certificate_id = t.to_certificate_id)), false)
                FROM certificate_transfer t
                JOIN gift_certificate gf ON gf.id = t.from_certificate_id
                JOIN gift_certificate gt ON gt.id = t.to_certificate_id
                LEFT JOIN gift_certificate_operation o ON o.transfer_id = t.id
                WHERE {where}
                GROUP BY t.id, gf.code, gt.code, t.amount
                HAVING sum(o.amount) IS DISTINCT FROM 0 OR count(o.id) <> 2
                    OR max(o.amount) IS DISTINCT FROM t.amount
                    OR NOT coalesce(bool_and((o.kind = 'TRANSFER_OUT' AND o.certificate_id = t.from_certificate_id)
                                          OR (o.kind = 'TRANSFER_IN' AND o.certificate_id = t.to_certificate_id)), false)
                ORDER BY t.id""", params)]


# ---- invariant 4: audit trail and outbox --------------------------------------------------

def check_outbox(cur, scope=None) -> list[Violation]:
    out = []
    where, params = _where(scope, codes=("g.code",))
    for code, stream_sequence, n, distinct, low, high, missing in _rows(cur, f"""
            SELECT g.code, g.stream_sequence, coalesce(e.n, 0), coalesce(e.d, 0), e.lo, e.hi,
                   (SELECT array_agg(s ORDER BY s)
                    FROM generate_series(1, greatest(g.stream_sequence, coalesce(e.hi, 0))) s
                    WHERE NOT EXISTS (SELECT 1 FROM outbox_event x
                                      WHERE x.certificate_id = g.id AND x.sequence = s))
            FROM gift_certificate g
            LEFT JOIN (SELECT certificate_id, count(*) AS n, count(DISTINCT sequence) AS d,
                              min(sequence) AS lo, max(sequence) AS hi
                       FROM outbox_event WHERE certificate_id IS NOT NULL GROUP BY 1) e
                   ON e.certificate_id = g.id
            WHERE (coalesce(e.n, 0) <> g.stream_sequence OR coalesce(e.hi, 0) <> g.stream_sequence
                   OR coalesce(e.d, 0) <> coalesce(e.n, 0) OR coalesce(e.lo, 1) <> 1) AND {where}""",
            params):
        gaps = ",".join(str(s) for s in missing or ()) or "none"
        out.append(Violation("stream.sequence", code, (
            f"{n} event(s) with {distinct} sequence value(s) {low or '-'}..{high or '-'}, "
            f"stream_sequence {stream_sequence}, missing {gaps}")))
    for code, status, balance, sequence, event_type, said_status, said_balance in _rows(cur, f"""
            SELECT g.code, g.status, g.remaining_balance, e.sequence, e.event_type,
                   e.envelope -> 'payload' ->> 'status', e.envelope -> 'payload' ->> 'remainingBalance'
            FROM gift_certificate g
            LEFT JOIN LATERAL (SELECT sequence, event_type, envelope FROM outbox_event x
                               WHERE x.certificate_id = g.id ORDER BY sequence DESC LIMIT 1) e ON true
            WHERE {where} AND CASE WHEN e.sequence IS NULL
                    THEN g.status <> 'AVAILABLE' OR g.remaining_balance <> 0
                    ELSE (e.envelope -> 'payload' ->> 'status') IS DISTINCT FROM g.status
                      OR (e.envelope -> 'payload' ->> 'remainingBalance')::numeric
                         IS DISTINCT FROM g.remaining_balance END""", params):
        said = ("no event" if sequence is None else
                f"last event {sequence} {event_type} says {said_status} {said_balance}")
        out.append(Violation("stream.last_state", code,
                             f"{status} {_m(balance)}, {said}"))
    kinds = " ".join(f"WHEN '{k}' THEN ARRAY[{', '.join(repr(e) for e in v)}]"
                     for k, v in LEDGER_EVENTS.items())
    for code, op_id, kind, amount, created in _rows(cur, f"""
            SELECT g.code, o.id, o.kind, o.amount, o.created_at FROM gift_certificate_operation o
            JOIN gift_certificate g ON g.id = o.certificate_id
            WHERE {where} AND NOT EXISTS (
                SELECT 1 FROM outbox_event e WHERE e.certificate_id = o.certificate_id
                AND e.created_at = o.created_at AND e.event_type = ANY(CASE o.kind {kinds} END))
            ORDER BY o.id""", params):
        out.append(Violation("stream.ledger", code, f"ledger row {op_id} {kind} {_m(amount)} at "
                             f"{created.isoformat()} has no event of its kind"))
    for code, action, created, events, audits in _rows(cur, f"""
            SELECT g.code, k.action, k.created_at, coalesce(e.n, 0), coalesce(a.n, 0)
            FROM (SELECT certificate_id, event_type AS action, created_at, count(*) AS n
                  FROM outbox_event WHERE certificate_id IS NOT NULL GROUP BY 1, 2, 3) e
            FULL JOIN (SELECT certificate_id, action, created_at, count(*) AS n FROM audit_log
                       WHERE certificate_id IS NOT NULL AND action <> ALL(%s) GROUP BY 1, 2, 3) a
                   USING (certificate_id, action, created_at)
            CROSS JOIN LATERAL (SELECT coalesce(e.certificate_id, a.certificate_id) AS certificate_id,
                                       coalesce(e.action, a.action) AS action,
                                       coalesce(e.created_at, a.created_at) AS created_at) k
            JOIN gift_certificate g ON g.id = k.certificate_id
            WHERE coalesce(e.n, 0) <> coalesce(a.n, 0) AND {where}
            ORDER BY g.code, k.created_at""", [list(AUDIT_ONLY)] + params):
        rule = "audit.missing" if events > audits else "outbox.missing"
        out.append(Violation(rule, code, f"{action} at {created.isoformat()}: {events} outbox "
                             f"event(s), {audits} audit row(s)"))
    return out + check_alert_keys(cur, scope)


def check_alert_keys(cur, scope=None) -> list[Violation]:
    named = ("e.envelope -> 'payload' ->> 'certificateCode'", "e.envelope -> 'payload' ->> 'orderId'")
    where, params = _where(scope, codes=(named[0],), orders=(named[1],))
    return [Violation("stream.key", f"{event_type} {event_id}", (
                f"{code}: keyed {key!r}; names certificate {certificate or 'none'}, "
                f"order {order or 'none'}"))
            for event_id, event_type, code, key, certificate, order in _rows(cur, f"""
                SELECT e.event_id, e.event_type, e.envelope -> 'payload' ->> 'code', e.message_key,
                       {named[0]}, {named[1]}
                FROM outbox_event e
                WHERE e.event_type IN ('error', 'alert') AND {where}
                  AND (coalesce(e.message_key, '') = ''
                       OR e.message_key <> coalesce({named[0]}, {named[1]}, e.message_key))
                ORDER BY e.id""", params)]


# ---- invariant 5: paid orders -------------------------------------------------------------

def check_orders(cur, scope=None) -> list[Violation]:
    where, params = _where(scope, orders=("o.order_id",))
    return [Violation("order.not_issued", f"order {order_id} line {line_id}", (
                f"{channel} paid {_m(captured)} of total {_m(total)} {currency.strip()}; line "
                f"nominal {_m(nominal)}: no sold certificate, no blocked_issue"))
            for order_id, line_id, channel, total, currency, captured, nominal in _rows(cur, f"""
                WITH paid AS (
                    SELECT o.order_id, o.channel, o.total, o.currency, o.lines, c.captured
                    FROM sales_order o
                    CROSS JOIN LATERAL (
                        SELECT coalesce(sum(m), 0) AS captured FROM (
                            SELECT max(p.amount) AS m FROM order_payment p
                            WHERE p.order_id = o.order_id AND p.event_type = 'PAYMENT_CAPTURED'
                              AND p.currency = o.currency GROUP BY p.payment_id) x) c
                    WHERE o.cancelled_event_id IS NULL AND o.total > 0 AND c.captured >= o.total
                      AND {where})
                SELECT p.order_id, l ->> 'lineId', p.channel, p.total, p.currency, p.captured,
                       (l ->> 'amount')::numeric
                FROM paid p CROSS JOIN LATERAL jsonb_array_elements(p.lines) l
                WHERE l ->> 'type' = 'GIFT_CERTIFICATE'
                  AND NOT EXISTS (SELECT 1 FROM gift_certificate g WHERE g.channel = p.channel
                                  AND g.order_id = p.order_id AND g.line_id = l ->> 'lineId'
                                  AND g.issued_at IS NOT NULL)
                  AND NOT EXISTS (SELECT 1 FROM blocked_issue b WHERE b.order_id = p.order_id
                                  AND b.line_id = l ->> 'lineId')
                  AND NOT EXISTS (SELECT 1 FROM order_effect e WHERE e.order_id = p.order_id
                                  AND e.effect_key = 'issue:' || (l ->> 'lineId')
                                  AND e.outcome = 'REFUSED')
                ORDER BY 1, 2""", params)]


# ---- time-driven work ---------------------------------------------------------------------

def check_holds(cur, scope=None, after_ms: int = 1_000, grace_ms: int = DEFAULT_GRACE_MS) -> list[Violation]:
    where, params = _where(scope, codes=("g.code",))
    return [Violation("hold.overdue", hold_id, (
                f"{code} ACTIVE {_m(amount)}, expired at {expires.isoformat()}, {late:.1f} s ago "
                f"(allowed {(after_ms + grace_ms) / 1000:.1f} s)"))
            for hold_id, code, amount, expires, late in _rows(cur, f"""
                SELECT h.id, g.code, h.amount, h.expires_at,
                       extract(epoch FROM now() - h.expires_at)::float
                FROM authorization_hold h JOIN gift_certificate g ON g.id = h.certificate_id
                WHERE h.status = 'ACTIVE' AND h.expires_at < now() - make_interval(secs => %s)
                  AND {where} ORDER BY h.expires_at""", [(after_ms + grace_ms) / 1000.0] + params)]


def check_inbox(cur, scope=None, after_ms: int = 30_000, grace_ms: int = DEFAULT_GRACE_MS) -> list[Violation]:
    where, params = _where(scope, orders=("i.payload ->> 'orderId'",), inbox=("i.event_id",))
    return [Violation("inbox.stuck", f"inbox {row_id} {event_id}", (
                f"{topic} PENDING for {age:.1f} s (allowed {(after_ms + grace_ms) / 1000:.1f} s), "
                f"{attempts} attempt(s)" + (f", last error {error}" if error else "")))
            for row_id, event_id, topic, age, attempts, error in _rows(cur, f"""
                SELECT i.id, i.event_id, i.topic, extract(epoch FROM now() - i.received_at)::float,
                       i.attempts, left(i.last_error, 200)
                FROM inbox_message i
                WHERE i.status = 'PENDING' AND i.received_at < now() - make_interval(secs => %s)
                  AND {where} ORDER BY i.id""", [(after_ms + grace_ms) / 1000.0] + params)]


# ---- the stream ---------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamRecord:
    partition: int
    offset: int
    key: str | None
    event_id: str | None
    sequence: int | None
    outbox_id: int | None


def read_stream(topic: str, timeout: float = 60.0) -> tuple[list[StreamRecord], list[Violation]]:
    """Every message of ``topic`` from its first offset to its end (a fresh consumer, assigned,
    nothing committed; see :func:`workers.kafka.read_to_end` for where the end is)."""
    from workers.kafka import EndOfTopic, read_to_end

    progress = EndOfTopic()
    records = [_record(msg) for msg in read_to_end(topic, timeout=timeout, progress=progress)]
    if progress.missing_topic:
        return [], [Violation("stream.incomplete", topic, "the topic cannot be read")]
    if not progress.complete:
        return records, [Violation("stream.incomplete", topic, ", ".join(
            f"partition {p} read to {progress.position[p]} (high watermark {h} at the start)"
            for p, h in sorted(progress.high.items()) if p not in progress.ended)
            + f", not at its end within {timeout:.0f} s")]
    return records, []


def _record(msg) -> StreamRecord:
    headers = {k: v for k, v in (msg.headers() or ())}
    event_id = sequence = None
    try:
        value = json.loads(msg.value() or b"null")
        if isinstance(value, dict):
            event_id = value.get("eventId")
            sequence = value.get("sequence")
    except ValueError:
        pass
    outbox = headers.get("outboxId")
    return StreamRecord(msg.partition(), msg.offset(), msg.key().decode() if msg.key() else None,
                        event_id, sequence if isinstance(sequence, int) else None,
                        int(outbox) if outbox and outbox.isdigit() else None)


def check_stream(cur, records: list[StreamRecord], read_since, scope=None) -> list[Violation]:
    """The stream against the outbox: every event published before ``read_since`` (a database
    time taken before the watermarks were read) on it once, each certificate's in sequence."""
    out = []
    where, params = _where(scope, codes=("e.message_key",))
    outbox = {event_id: (row_id, key, published, sequence) for event_id, row_id, key, published, sequence
              in _rows(cur, f"""SELECT e.event_id::text, e.id, e.message_key,
                                       e.published_at IS NOT NULL AND e.published_at < %s, e.sequence
                                FROM outbox_event e WHERE {where}""", [read_since] + params)}
    if scope is not None:
        keys = scope.codes or frozenset()
        records = [r for r in records if r.key in keys]
    seen = Counter(r.event_id for r in records)
    where_seen: dict[str, list[StreamRecord]] = defaultdict(list)
    for r in records:
        where_seen[r.event_id].append(r)
    for event_id, n in sorted(seen.items(), key=lambda kv: str(kv[0])):
        if n > 1:
            at = where_seen[event_id]
            out.append(Violation("stream.duplicate", at[0].key or "-", f"event {event_id} {n} times, at "
                                 + ", ".join(f"{r.partition}@{r.offset}" for r in at)))
    for r in records:
        row = outbox.get(r.event_id)
        if row is None or row[0] != r.outbox_id:
            out.append(Violation("stream.unknown", r.key or "-", (
                f"event {r.event_id} at {r.partition}@{r.offset} with outboxId {r.outbox_id}: "
                + ("not in the outbox" if row is None else f"its outbox row is {row[0]}"))))
    for event_id, (row_id, key, published, sequence) in sorted(outbox.items(), key=lambda kv: kv[1][0]):
        if published and event_id not in seen:
            out.append(Violation("stream.missing", key or "-", f"outbox row {row_id} event {event_id}"
                                 + (f" sequence {sequence}" if sequence else "") + " is not on the stream"))
    by_key: dict[str, list[StreamRecord]] = defaultdict(list)
    first = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if r.sequence is None or r.event_id in first:
            continue  # unsequenced, or a duplicate (reported above)
        first.add(r.event_id)
        by_key[r.key].append(r)
    for key, rs in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        for expected, r in enumerate(rs, start=1):
            if r.sequence != expected:
                out.append(Violation("stream.order", key or "-", (
                    f"sequence {r.sequence} at {r.partition}@{r.offset} where {expected} was due "
                    f"(stream order {', '.join(str(x.sequence) for x in rs[:20])}"
                    f"{' ...' if len(rs) > 20 else ''})")))
                break
    return out


# ---- all of them --------------------------------------------------------------------------

def connect():
    """A read-only connection of its own whose transactions are REPEATABLE READ: each check run
    sees one snapshot, whatever the service commits meanwhile."""
    import psycopg2

    from config import get_settings
    from models.store.db import connect_params

    params = connect_params(get_settings().database_url)
    params.setdefault("connect_timeout", 5)
    conn = psycopg2.connect(application_name="gcp-verify", **params)
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    return conn


def verify(conn=None, scope: Scope | None = None, stream: bool = False,
           grace_ms: int = DEFAULT_GRACE_MS, stream_timeout: float = 60.0) -> list[Violation]:
    """Every violation. Without ``conn``, on a connection of its own (see :func:`connect`);
    with one (a psycopg2 connection), in whatever transaction it is in.

    With ``stream``, the topic is read first and the database after, so every event on the
    stream is in the snapshot; an outbox row counts as published when it was marked so before
    the watermarks were read."""
    from config import get_settings

    settings = get_settings()
    own = conn is None
    if own:
        conn = connect()
    try:
        records: list[StreamRecord] = []
        stream_problems: list[Violation] = []
        read_since = None
        if stream:
            with conn.cursor() as cur:
                read_since = _rows(cur, "SELECT clock_timestamp()")[0][0]
            if own:
                conn.rollback()  # the snapshot of the checks starts after the stream is read
            records, stream_problems = read_stream(settings.topic_stream, stream_timeout)
        with conn.cursor() as cur:
            out: list[Violation] = []
            out += check_sold_once(cur, scope)
            out += check_balances(cur, scope)
            out += check_available(cur, scope)
            out += check_adjustments(cur, scope)
            out += check_transfers(cur, scope)
            out += check_outbox(cur, scope)
            out += check_orders(cur, scope)
            out += check_holds(cur, scope, settings.scheduler_interval_ms, grace_ms)
            out += check_inbox(cur, scope, settings.inbox_sweep_after_ms, grace_ms)
            if stream:
                out += stream_problems
                out += check_stream(cur, records, read_since, scope)
        return out
    finally:
        if own:
            conn.rollback()
            conn.close()


def summary(violations: list[Violation]) -> str:
    if not violations:
        return "no violations"
    by_rule = Counter(v.rule for v in violations)
    return (f"{len(violations)} violation(s): "
            + ", ".join(f"{rule} {n}" for rule, n in sorted(by_rule.items())))
