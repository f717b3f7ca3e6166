"""``reconcile``: the mart against the service's own ledger and certificate table, and against
the orders and payments the mart has seen, per channel and currency, to the kopeck.

Checks (each per channel and currency; with a date, the flows of that day by event date):

- ``ledger.<figure>``: sold, redeemed, refunded onto certificates, refunded to the buyer and the
  net balance movement, against ``gift_certificate_operation`` (kinds ``ISSUE``, ``REDEEM``,
  ``REFUND_CREDIT``, ``PURCHASE_REFUND``; the net over every kind). A ledger row's channel is
  the stream event's: the operation's channel when it is a sales channel, else the channel that
  sold the certificate, else ``SYSTEM``.
- ``certificates.<status>`` (count and balance) and ``certificates.liability``: the mart's
  current certificate states against ``gift_certificate`` (every status but ``AVAILABLE``),
  and ``snapshot.liability``: the latest daily snapshot's end-of-day liability against the
  service's outstanding balances. Current state only, so not with a date.
- ``orders.sold``: every issue on the stream is backed by an order the mart has seen with a
  gift-certificate line of that amount, paid in full by the captured payments it has seen.
- ``payments.redeemed``: every captured gift-certificate redemption payment it has seen is
  matched by the redemptions on the stream of that certificate for that order.
- ``rollforward.*``: the liability roll-forward balances on every closed day
  (:func:`workers.bi.sources.check_roll_forward`).

``--sources`` compares per day, channel, currency and order with ``All_SalesOrder`` and
``All_Payments`` instead (:func:`workers.bi.sources.check_sources`).
"""
from __future__ import annotations

import datetime as dt
import os
from collections import defaultdict
from decimal import Decimal

from workers.bi import rules
from workers.bi.diffs import Difference, _q  # noqa: F401  (Difference: part of this module's API)

ZERO = rules.ZERO


def compare(check: str, mart: dict, source: dict, detail: str = "") -> list[Difference]:
    """Every key of either side whose values differ (a missing key counts as 0). Pure."""
    out = []
    for key in sorted(set(mart) | set(source)):
        m, s = mart.get(key, 0), source.get(key, 0)
        if m != s:
            channel, currency = key[0], key[1]
            extra = " ".join(str(k) for k in key[2:])
            out.append(Difference(check, channel, currency, m, s, " ".join(filter(None, (detail, extra)))))
    return out


def paid_orders(orders: list[tuple], payments: list[tuple]) -> dict[str, tuple[str, str, list[Decimal]]]:
    """Orders paid in full by the captured payments seen: {orderId: (channel, currency, [gc line
    amounts])}. ``orders``: (order_id, event_type, channel, currency, total, lines) oldest first;
    ``payments``: (order_id, event_type, currency, amount). Pure."""
    latest: dict[str, tuple] = {}
    for order_id, etype, channel, currency, total, lines in orders:
        if etype in ("ORDER_CREATED", "ORDER_UPDATED"):
            latest[order_id] = (channel, currency, total, lines)
    captured: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for order_id, etype, currency, amount in payments:
        if etype == "PAYMENT_CAPTURED" and order_id in latest and currency == latest[order_id][1]:
            captured[order_id] += amount
    out = {}
    for order_id, (channel, currency, total, lines) in latest.items():
        if captured[order_id] >= total:
            out[order_id] = (channel, currency, [rules.money(l["amount"]) for l in lines
                                                 if l.get("type") == "GIFT_CERTIFICATE"])
    return out


def backed_sales(issues: list[tuple], paid: dict) -> dict:
    """Of the stream's issues (channel, currency, order_id, nominal), the amount backed by a paid
    order's gift-certificate line, per (channel, currency); each line backs one issue. Pure."""
    left = {o: list(v[2]) for o, v in paid.items()}
    out: dict = defaultdict(lambda: ZERO)
    for channel, currency, order_id, nominal in issues:
        lines = left.get(order_id)
        if lines and nominal in lines and paid[order_id][1] == currency:
            lines.remove(nominal)
            out[(channel, currency)] += nominal
    return dict(out)


def _sums(rows) -> dict:
    return {tuple(r[:-1]): r[-1] for r in rows}


_LEDGER_CHANNEL = ("CASE WHEN o.channel IN ('ONLINE_STORE', 'POS') THEN o.channel"
                   " ELSE coalesce(g.channel, 'SYSTEM') END")
_FIGURES = (("sold", "sold_amount", "o.kind = 'ISSUE'", 1), ("redeemed", "redeemed_amount", "o.kind = 'REDEEM'", -1),
            ("refunded_cert", "refunded_cert_amount", "o.kind = 'REFUND_CREDIT'", 1),
            ("refunded_buyer", "refunded_buyer_amount", "o.kind = 'PURCHASE_REFUND'", -1),
            ("net", "balance_delta", "true", 1))


def reconcile(date: dt.date | None = None, currency: str | None = None, mart_conn=None,
              service_conn=None, sources: bool = False) -> list[Difference]:
    """Every difference between the mart and its sources (see the module's docstring); with
    ``sources``, the mart against the orders and payments only (:mod:`workers.bi.sources`)."""
    from workers.bi.schema import connect
    from workers.bi.sources import check_roll_forward, check_sources

    own = []
    if mart_conn is None:
        mart_conn = connect(application_name="gcp-bi-reconcile")
        own.append(mart_conn)
    if sources:
        try:
            return check_sources(mart_conn, date, currency)
        finally:
            for conn in own:
                conn.rollback()
                conn.close()
    if service_conn is None:
        service_conn = connect(os.environ.get("DATABASE_URL"), application_name="gcp-bi-reconcile")
        own.append(service_conn)
    try:
        return _reconcile(date, currency, mart_conn, service_conn) + check_roll_forward(mart_conn, currency)
    finally:
        for conn in own:
            conn.rollback()
            conn.close()


def _reconcile(date, currency, mart, service) -> list[Difference]:
    diffs: list[Difference] = []
    f_where, f_params = ["applied"], []
    o_where, o_params = ["true"], []
    if date is not None:
        f_where.append("event_date = %s")
        f_params.append(date)
        o_where.append("(o.created_at AT TIME ZONE 'UTC')::date = %s")
        o_params.append(date)
    if currency is not None:
        f_where.append("currency = %s")
        f_params.append(currency)
        o_where.append("o.currency = %s")
        o_params.append(currency)
    # the ledger
    for name, column, kind, sign in _FIGURES:
        mart_side = _sums(_q(mart, f"SELECT channel, currency, sum({column}) FROM bi.fact_event"
                                   f" WHERE {' AND '.join(f_where)} GROUP BY 1, 2", f_params))
        source = _sums(_q(service, f"SELECT {_LEDGER_CHANNEL}, trim(o.currency), {sign} * sum(o.amount)"
                                   " FROM gift_certificate_operation o JOIN gift_certificate g ON g.id = o.certificate_id"
                                   f" WHERE {kind} AND {' AND '.join(o_where)} GROUP BY 1, 2", o_params))
        diffs += compare(f"ledger.{name}", {k: v for k, v in mart_side.items() if v},
                         {k: v for k, v in source.items() if v}, date.isoformat() if date else "")
    # the certificate table (current state)
    if date is None:
        c_where, c_params = "status <> 'AVAILABLE'", []
        if currency is not None:
            c_where += " AND trim(currency) = %s"
            c_params.append(currency)
        mine = _q(mart, "SELECT coalesce(channel, 'NONE'), currency, status, count(*), sum(balance) FROM bi.certificate"
                        f" WHERE {c_where} GROUP BY 1, 2, 3", c_params)
        theirs = _q(service, "SELECT coalesce(channel, 'NONE'), trim(currency), status, count(*),"
                             f" sum(remaining_balance) FROM gift_certificate WHERE {c_where} GROUP BY 1, 2, 3", c_params)
        diffs += compare("certificates.count", {r[:3]: r[3] for r in mine}, {r[:3]: r[3] for r in theirs})
        diffs += compare("certificates.balance", {r[:3]: r[4] for r in mine}, {r[:3]: r[4] for r in theirs})
        statuses = tuple(sorted(rules.LIABILITY_STATUSES))
        service_liability = {k: v for k, v in _sums(_q(
            service, "SELECT coalesce(channel, 'NONE'), trim(currency), sum(remaining_balance) FROM gift_certificate"
                     f" WHERE {c_where} AND status IN %s GROUP BY 1, 2", c_params + [statuses])).items() if v}
        mart_liability = {k: v for k, v in _sums(_q(
            mart, f"SELECT coalesce(channel, 'NONE'), currency, sum(balance) FROM bi.certificate WHERE {c_where}"
                  " AND status IN %s GROUP BY 1, 2", c_params + [statuses])).items() if v}
        diffs += compare("certificates.liability", mart_liability, service_liability)
        s_where = "" if currency is None else " WHERE currency = %s"
        snapshot = {k: v for k, v in _sums(_q(
            mart, "SELECT DISTINCT ON (channel, currency) channel, currency, liability FROM bi.daily_snapshot"
                  f"{s_where} ORDER BY channel, currency, day DESC", c_params)).items() if v}
        diffs += compare("snapshot.liability", snapshot, service_liability)
    # the orders and payments the mart has seen
    orders = _q(mart, "SELECT order_id, event_type, channel, currency, total, lines FROM bi.order_event"
                      " ORDER BY occurred_at, received_at")
    payments = _q(mart, "SELECT order_id, event_type, currency, coalesce(gc_amount, amount) FROM bi.payment_event")
    issues = _q(mart, "SELECT channel, currency, order_id, sold_amount FROM bi.fact_event"
                      f" WHERE event_type = 'issue' AND {' AND '.join(f_where)}", f_params)
    sold = defaultdict(lambda: ZERO)
    for channel, cur_, _o, amount in issues:
        sold[(channel, cur_)] += amount
    diffs += compare("orders.sold", dict(sold), backed_sales(issues, paid_orders(orders, payments)),
                     "stream vs paid orders seen")
    p_where, p_params = ["p.event_type = 'PAYMENT_CAPTURED'", "p.gc_operation = 'REDEMPTION'"], []
    if date is not None:
        p_where.append("(p.occurred_at AT TIME ZONE 'UTC')::date = %s")
        p_params.append(date)
    if currency is not None:
        p_where.append("p.currency = %s")
        p_params.append(currency)
    rows = _q(mart, "SELECT p.channel, p.currency, coalesce(p.gc_amount, p.amount),"
                    " (SELECT coalesce(sum(f.redeemed_amount), 0) FROM bi.fact_event f WHERE f.applied"
                    "  AND f.code = p.gc_code AND (f.correlation_id = p.order_id OR f.order_id = p.order_id))"
                    f" FROM bi.payment_event p WHERE {' AND '.join(p_where)}", p_params)
    paid, redeemed = defaultdict(lambda: ZERO), defaultdict(lambda: ZERO)
    for channel, cur_, amount, matched in rows:
        paid[(channel, cur_)] += amount
        redeemed[(channel, cur_)] += min(matched, amount)
    diffs += compare("payments.redeemed", dict(redeemed), dict(paid), "stream vs redemption payments seen")
    return diffs
