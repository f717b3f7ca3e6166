"""The checks of the database: invariants 1 to 5 of the contract and the time-driven work, each
one set-based query over a whole table (see :mod:`workers.verify` for the rules)."""
from __future__ import annotations

from workers.verify.common import DEFAULT_GRACE_MS, Violation, _m, _rows, _where

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
