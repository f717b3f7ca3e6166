"""The mart's writer: one batch of the mart's input into the ``bi`` schema in one transaction,
and the closing of days.

For a batch (see :mod:`workers.bi.consumer`), the stream events not seen before (by ``eventId``)
go through :func:`workers.bi.rules.apply_event`; their fact rows, the certificates' states, the
daily snapshot rows, the pool levels and any anomaly are written; the input messages are
recorded. An invalid message becomes a ``bi.anomaly`` row (keyed by topic, partition and offset,
so a replay adds nothing).

Day closing (:meth:`Mart.close_due_days`) takes an exclusive advisory lock that every batch
takes shared, so a batch never books onto a day that is being closed.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field

from psycopg2.extras import Json, execute_values

from models.domain import locks
from workers.bi import finance, metrics, rules

log = logging.getLogger("gcp.bi")
STREAM = "GiftCertificates.Stream"


def close_grace() -> dt.timedelta:
    """How long after midnight (UTC) a day stays open for its own late events."""
    return dt.timedelta(seconds=int(os.environ.get("BI_CLOSE_GRACE_SECONDS") or 600))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class StepResult:
    """What one batch did: messages received, events applied or not, duplicates, invalid
    messages, and the anomalies recorded."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    not_applied: int = 0
    invalid: int = 0
    anomalies: list = field(default_factory=list)


_FACT_COLUMNS = ("event_id", "topic", "kafka_partition", "kafka_offset", "event_type", "channel", "status",
                 "cert_status", "code", "cert_channel", "order_id", "correlation_id", "causation_id",
                 "sequence", "nominal", "amount", "balance", "currency", "occurred_at", "event_date",
                 "booked_date", "applied", "sold_amount", "redeemed_amount", "refunded_buyer_amount",
                 "refunded_cert_amount", "breakage_amount", "cancelled_amount", "adjusted_amount",
                 "balance_delta", "liability_delta", "flow", "payload")
_DAILY_ADD = tuple(rules.FLOW_FIELDS) + ("liability_change", "locked_change")
_CERT_COLUMNS = ("code", "status", "balance", "nominal", "currency", "channel", "kind", "order_id",
                 "issued_at", "expires_at", "last_sequence", "last_event_id", "last_event_at")


def _state_row(state: rules.CertState) -> tuple:
    return tuple(getattr(state, column) for column in _CERT_COLUMNS)


class Mart:
    """Writes one batch into the mart in one transaction (the translation of rules' results)."""

    def __init__(self, conn):
        self.conn = conn

    def record(self, stream: list, inputs: list, invalid: list, arrival: dt.datetime) -> StepResult:
        """``stream``: [(msg-like, event dict)], ``inputs``: [(contract, msg-like, message)],
        ``invalid``: [(contract, msg-like, reason)]. msg-like has topic(), partition(), offset()."""
        result = StepResult(invalid=len(invalid))
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (locks.BI_CLOSE,))
            for contract, msg, reason in invalid:
                result.anomalies.append(self._anomaly(cur, f"{msg.topic()}:{msg.partition()}:{msg.offset()}",
                                                      rules.Anomaly(rules.SCHEMA_INVALID, reason), contract, msg))
            if stream:
                self._stream(cur, stream, arrival.date(), result)
            if inputs:
                self._inputs(cur, inputs)
        return result

    # -- anomalies
    def _anomaly(self, cur, key: str, a: rules.Anomaly, contract: str, msg) -> rules.Anomaly | None:
        cur.execute(
            "INSERT INTO bi.anomaly (anomaly_key, kind, topic, kafka_partition, kafka_offset, event_id, code,"
            " expected, got, detail) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (anomaly_key) DO NOTHING"
            " RETURNING id", (key, a.kind, contract, msg.partition(), msg.offset(), a.event_id, a.code,
                              a.expected, a.got, a.detail[:2000]))
        if cur.fetchone() is None:
            return None  # seen before (a replay)
        metrics.ANOMALIES.labels(a.kind, contract).inc()
        log.warning("anomaly", extra={"kind": a.kind, "topic": contract, "partition": msg.partition(),
                                      "offset": msg.offset(), "eventId": a.event_id, "certificateCode": a.code,
                                      "detail": a.detail[:500]})
        return a

    # -- the stream
    def _stream(self, cur, stream: list, arrival: dt.date, result: StepResult) -> None:
        seen, fresh = set(), []
        for msg, event in stream:
            if event["eventId"] not in seen:
                seen.add(event["eventId"])
                fresh.append((msg, event))
        cur.execute("SELECT event_id FROM bi.fact_event WHERE event_id = ANY(%s)", (list(seen),))
        known = {r[0] for r in cur.fetchall()}
        result.duplicates = len(stream) - len(fresh) + len(known)
        fresh = [(m, e) for m, e in fresh if e["eventId"] not in known]
        if not fresh:
            return
        codes = sorted({e["payload"]["code"] for _m, e in fresh
                        if e["eventType"] not in rules.UNSEQUENCED and "code" in e["payload"]})
        states: dict[str, rules.CertState] = {}
        if codes:
            cur.execute(f"SELECT {', '.join(_CERT_COLUMNS)} FROM bi.certificate WHERE code = ANY(%s)"
                        " ORDER BY code FOR UPDATE", (codes,))
            for row in cur.fetchall():
                states[row[0]] = rules.CertState(**dict(zip(_CERT_COLUMNS, row)))
        cur.execute("SELECT max(day) FROM bi.daily_snapshot WHERE closed")
        closed_through = cur.fetchone()[0]
        pool_keys = sorted({k for _m, e in fresh if (k := rules.pool_key(e))})
        levels: dict[tuple[str, str, str], tuple | None] = {}
        if pool_keys:
            cur.execute("SELECT currency, kind, nominal, level, counted_at FROM bi.pool_segment"
                        " WHERE (currency, kind, nominal) IN %s ORDER BY 1, 2, 3 FOR UPDATE", (tuple(pool_keys),))
            levels = {(c, k, n): (lv, at) for c, k, n, lv, at in cur.fetchall() if lv is not None}
        facts, daily, pool_daily, dirty = [], {}, {}, set()
        for msg, event in fresh:
            prev = states.get(event["payload"].get("code")) if "code" in event["payload"] else None
            try:
                outcome = rules.apply_event(prev, event)
                occurred = rules.parse_time(event["occurredAt"])
                amounts = [rules.money(event["payload"].get(f)) for f in ("nominal", "amount", "remainingBalance")]
            except Exception as exc:  # valid by the schema, yet not usable: never stall on it
                a = self._anomaly(cur, f"{rules.UNPROCESSABLE}:{event['eventId']}", rules.Anomaly(
                    rules.UNPROCESSABLE, f"{event['eventType']}: {type(exc).__name__}: {exc}",
                    code=event["payload"].get("code"), event_id=event["eventId"]), STREAM, msg)
                if a is not None:
                    result.anomalies.append(a)
                result.not_applied += 1
                continue
            booked = rules.book_date(occurred.date(), arrival, closed_through)
            p = event["payload"]
            state = outcome.state
            if state is not None and outcome.applied:
                states[state.code] = state
                dirty.add(state.code)
            currency = p.get("currency") or (state.currency if state else None)
            cert_channel = (state or prev).channel if (state or prev) else None
            m = outcome.measures
            if outcome.applied:
                result.applied += 1
                if currency and m != rules.Measures():  # no row for what moves no figure
                    rules.fold(daily, booked, event["channel"], cert_channel, currency, m)
                key = rules.pool_key(event)
                if key:
                    told = rules.pool_level_of(event)
                    levels[key] = rules.newer_level(levels.get(key), told)
                    row = pool_daily.setdefault((booked,) + key, {"reserved": 0, "released": 0, "blocked": 0,
                                                                  "level": None})
                    for name, value in rules.pool_flows(event).items():
                        row[name] += value
                    row["level"] = rules.newer_level(row["level"], told)
            else:
                result.not_applied += 1
            if outcome.anomaly is not None:
                a = self._anomaly(cur, f"{outcome.anomaly.kind}:{event['eventId']}", outcome.anomaly, STREAM, msg)
                if a is not None:
                    result.anomalies.append(a)
            facts.append((
                event["eventId"], STREAM, msg.partition(), msg.offset(), event["eventType"], event["channel"],
                event["status"], p.get("status") if state else None, p.get("code") if state or prev else None,
                cert_channel, p.get("orderId"), event.get("correlationId"), event.get("causationId"),
                event.get("sequence"), *amounts, currency, occurred, occurred.date(), booked,
                outcome.applied, m.sold_amount, m.redeemed_amount, m.refunded_buyer_amount,
                m.refunded_cert_amount, m.breakage_amount, m.cancelled_amount, m.adjusted_amount,
                m.balance_delta, m.liability_delta,
                finance.flow_of(event["eventType"], m.liability_delta) if outcome.applied else None, Json(event)))
        execute_values(cur, f"INSERT INTO bi.fact_event ({', '.join(_FACT_COLUMNS)}) VALUES %s"
                            " ON CONFLICT (event_id) DO NOTHING", facts)
        if dirty:
            execute_values(
                cur, f"INSERT INTO bi.certificate ({', '.join(_CERT_COLUMNS)}) VALUES %s ON CONFLICT (code) DO UPDATE SET "
                + ", ".join(f"{c} = EXCLUDED.{c}" for c in _CERT_COLUMNS[1:]) + ", updated_at = now()",
                [_state_row(states[c]) for c in sorted(dirty)])
        self._daily(cur, daily)
        self._pool(cur, levels, pool_daily, arrival)

    def _daily(self, cur, daily: dict) -> None:
        if not daily:
            return
        rows = []
        for (day, channel, currency), fig in sorted(daily.items()):
            rows.append((day, channel, currency) + tuple(fig.flows[n] for n in rules.FLOW_FIELDS)
                        + (fig.liability_change, fig.locked_change))
        cols = ("day", "channel", "currency") + _DAILY_ADD
        execute_values(cur, f"INSERT INTO bi.daily_snapshot ({', '.join(cols)}) VALUES %s "
                            "ON CONFLICT (day, channel, currency) DO UPDATE SET "
                       + ", ".join(f"{c} = bi.daily_snapshot.{c} + EXCLUDED.{c}" for c in _DAILY_ADD), rows)
        for channel, currency in sorted({(c, cur_) for _d, c, cur_ in daily}):
            self.roll(cur, channel, currency)

    @staticmethod
    def roll(cur, channel: str, currency: str) -> None:
        """Recompute the end-of-day stocks of the open days of one channel and currency: from the
        stocks at the end of the last closed day, a running sum of the days' changes
        (:func:`workers.bi.rules.roll`, as one statement; only rows whose stocks change are
        written, so a batch costs one pass over the open days, not an update per day)."""
        cur.execute(
            "WITH opening AS (SELECT coalesce((SELECT liability FROM bi.daily_snapshot WHERE channel = %(ch)s"
            "   AND currency = %(cur)s AND closed ORDER BY day DESC LIMIT 1), 0) AS liability,"
            "   coalesce((SELECT locked_end FROM bi.daily_snapshot WHERE channel = %(ch)s AND currency = %(cur)s"
            "   AND closed ORDER BY day DESC LIMIT 1), 0) AS locked),"
            " running AS (SELECT day, sum(liability_change) OVER (ORDER BY day) AS liability,"
            "   sum(locked_change) OVER (ORDER BY day) AS locked FROM bi.daily_snapshot"
            "   WHERE channel = %(ch)s AND currency = %(cur)s AND NOT closed)"
            " UPDATE bi.daily_snapshot d SET liability = o.liability + r.liability, locked_end = o.locked + r.locked"
            " FROM running r, opening o WHERE d.channel = %(ch)s AND d.currency = %(cur)s AND d.day = r.day"
            " AND (d.liability, d.locked_end) IS DISTINCT FROM (o.liability + r.liability, o.locked + r.locked)",
            {"ch": channel, "cur": currency})

    def _pool(self, cur, levels: dict, pool_daily: dict, arrival: dt.date) -> None:
        """Levels as told, the one counted last winning (also against what is stored)."""
        told = [(c, k, n, lv[0], lv[1], utcnow()) for (c, k, n), lv in sorted(levels.items()) if lv is not None]
        if told:
            execute_values(cur, "INSERT INTO bi.pool_segment (currency, kind, nominal, level, counted_at, as_of)"
                                " VALUES %s ON CONFLICT (currency, kind, nominal) DO UPDATE SET"
                                " level = EXCLUDED.level, counted_at = EXCLUDED.counted_at, as_of = EXCLUDED.as_of"
                                " WHERE bi.pool_segment.counted_at IS NULL"
                                " OR EXCLUDED.counted_at >= bi.pool_segment.counted_at", told)
        if pool_daily:
            newer = ("EXCLUDED.level_at IS NOT NULL AND (bi.pool_segment_daily.level_at IS NULL"
                     " OR EXCLUDED.level_at >= bi.pool_segment_daily.level_at)")
            execute_values(
                cur, "INSERT INTO bi.pool_segment_daily (day, currency, kind, nominal, reserved, released, blocked,"
                     " level_end, level_at) VALUES %s ON CONFLICT (day, currency, kind, nominal) DO UPDATE SET"
                     " reserved = bi.pool_segment_daily.reserved + EXCLUDED.reserved,"
                     " released = bi.pool_segment_daily.released + EXCLUDED.released,"
                     " blocked = bi.pool_segment_daily.blocked + EXCLUDED.blocked,"
                     f" level_end = CASE WHEN {newer} THEN EXCLUDED.level_end ELSE bi.pool_segment_daily.level_end END,"
                     f" level_at = CASE WHEN {newer} THEN EXCLUDED.level_at ELSE bi.pool_segment_daily.level_at END",
                [(d, c, k, n, r["reserved"], r["released"], r["blocked"],
                  r["level"][0] if r["level"] else None, r["level"][1] if r["level"] else None)
                 for (d, c, k, n), r in sorted(pool_daily.items())])

    # -- the input topics
    def _inputs(self, cur, inputs: list) -> None:
        orders, payments, clients = [], [], []
        for contract, _msg, m in inputs:
            at = rules.parse_time(m["occurredAt"])
            if contract == "All_SalesOrder":
                orders.append((m["eventId"], m["orderId"], m["eventType"], m["channel"], m["currency"],
                               rules.money(m["total"]), at, Json(m.get("lines") or []),
                               Json(m.get("tenders") or []), Json(m.get("refundLines") or [])))
            elif contract == "All_Payments":
                gc = m.get("giftCertificate") or {}
                payments.append((m["eventId"], m["orderId"], m["paymentId"], m["eventType"], m["channel"],
                                 rules.money(m["amount"]), m["currency"], m["method"], gc.get("code"),
                                 gc.get("operation"), rules.money(gc.get("amount")), at))
            elif contract == "All_Clients":
                n = m.get("notification") or {}
                clients.append((m["eventId"], m.get("clientId") or "", m.get("eventType") or "",
                                n.get("certificateCode"), n.get("status"), at))
        if orders:
            execute_values(cur, "INSERT INTO bi.order_event (event_id, order_id, event_type, channel, currency,"
                                " total, occurred_at, lines, tenders, refund_lines) VALUES %s"
                                " ON CONFLICT (event_id) DO NOTHING", orders)
        if payments:
            execute_values(cur, "INSERT INTO bi.payment_event (event_id, order_id, payment_id, event_type, channel,"
                                " amount, currency, method, gc_code, gc_operation, gc_amount, occurred_at)"
                                " VALUES %s ON CONFLICT (event_id) DO NOTHING", payments)
        if clients:
            execute_values(cur, "INSERT INTO bi.client_event (event_id, client_id, event_type, certificate_code,"
                                " notification_status, occurred_at) VALUES %s ON CONFLICT (event_id) DO NOTHING",
                           clients)

    # -- closing days
    def close_due_days(self, now: dt.datetime, caught_up: bool, grace: dt.timedelta | None = None) -> list[dt.date]:
        """Close every day that may be closed (see :func:`workers.bi.rules.days_to_close`): each
        channel/currency and pool segment known gets a row (flows 0, stocks carried over), and
        the day's rows are marked closed. Returns the days closed."""
        grace = close_grace() if grace is None else grace
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT max(day) FILTER (WHERE closed), min(day) FROM bi.daily_snapshot")
            closed_through, first_day = cur.fetchone()
            days = rules.days_to_close(closed_through, first_day, now, grace, caught_up)
            if not days:
                return []
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (locks.BI_CLOSE,))
            for day in days:
                cur.execute(
                    "INSERT INTO bi.daily_snapshot (day, channel, currency, liability, locked_end)"
                    " SELECT DISTINCT ON (channel, currency) %s, channel, currency, liability, locked_end"
                    " FROM bi.daily_snapshot WHERE day < %s ORDER BY channel, currency, day DESC"
                    " ON CONFLICT (day, channel, currency) DO NOTHING", (day, day))
                cur.execute("UPDATE bi.daily_snapshot SET closed = true, closed_at = now() WHERE day = %s", (day,))
                cur.execute(
                    "INSERT INTO bi.pool_segment_daily (day, currency, kind, nominal, level_end, level_at)"
                    " SELECT DISTINCT ON (currency, kind, nominal) %s, currency, kind, nominal, level_end, level_at"
                    " FROM bi.pool_segment_daily WHERE day < %s AND level_end IS NOT NULL"
                    " ORDER BY currency, kind, nominal, day DESC"
                    " ON CONFLICT (day, currency, kind, nominal) DO NOTHING", (day, day))
                cur.execute("UPDATE bi.pool_segment_daily d SET level_end = p.level_end, level_at = p.level_at"
                            " FROM (SELECT DISTINCT ON (currency, kind, nominal) currency, kind, nominal,"
                            " level_end, level_at FROM bi.pool_segment_daily WHERE day < %s AND level_end IS NOT NULL"
                            " ORDER BY currency, kind, nominal, day DESC) p WHERE d.day = %s AND d.level_end IS NULL"
                            " AND (d.currency, d.kind, d.nominal) = (p.currency, p.kind, p.nominal)", (day, day))
                cur.execute("UPDATE bi.pool_segment_daily SET closed = true WHERE day = %s", (day,))
        metrics.DAYS_CLOSED.inc(len(days))
        log.info("days closed", extra={"days": [d.isoformat() for d in days]})
        return days
