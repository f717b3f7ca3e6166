"""``reconcile --sources`` and the roll-forward check of ``reconcile``.

Sources: the mart's sales, redemptions and refunds per day, channel, currency *and order*
against what ``All_SalesOrder`` and ``All_Payments`` said (as the mart recorded them):

- ``sources.sold``: the ``issue`` events of an order (by event date and channel) against the
  gift-certificate lines of that order once it was paid in full (the day of the capture that
  completed it, the order's channel). An order whose gift-certificate lines exceed its total
  sells nothing (contract §4), so it backs nothing;
- ``sources.redeemed``: the redemptions on the stream for an order (``redeem.*`` and
  ``authorization.captured``, whose ``orderId`` is the operation's order) against the captured
  payments of that order with ``giftCertificate.operation = REDEMPTION``; an order with none,
  whose ``GIFT_CERTIFICATE`` tenders name an ``authorizationId`` (a capture made through the API,
  which the order confirms: contract §4 Redeem), is backed by those tenders instead;
- ``sources.refunded_cert`` / ``sources.refunded_buyer``: refunds onto certificates and to
  buyers on the stream against ``PAYMENT_REFUNDED`` with operation ``REFUND`` / ``PURCHASE``.

Roll-forward (``rollforward.*``, every closed day): per selling channel and currency, the
closing liability of the previous closed day plus the day's flows equals the day's closing
liability in the snapshot, to the kopeck; the sold, redeemed, expired and cancelled lines equal
the day's measured amounts; no movement is of an unknown kind.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

from workers.bi import figures, finance, rules
from workers.bi.diffs import Difference, _q

ZERO = rules.ZERO


def paid_lines(orders: list[tuple], payments: list[tuple]) -> dict[str, tuple]:
    """{orderId: (paid day, channel, currency, sum of gift-certificate lines)} of the orders paid
    in full. ``orders``: (order_id, event_type, channel, currency, total, lines) oldest first;
    ``payments``: (order_id, event_type, currency, amount, occurred_at) oldest first. Pure."""
    latest: dict[str, tuple] = {}
    for order_id, etype, channel, currency, total, lines in orders:
        if etype in ("ORDER_CREATED", "ORDER_UPDATED"):
            latest[order_id] = (channel, currency, total, lines)
    captured: dict[str, Decimal] = defaultdict(lambda: ZERO)
    out = {}
    for order_id, etype, currency, amount, at in payments:
        order = latest.get(order_id)
        if etype != "PAYMENT_CAPTURED" or order is None or currency != order[1] or order_id in out:
            continue
        captured[order_id] += amount
        channel, _cur, total, lines = order
        if captured[order_id] >= total:
            gc = sum((rules.money(line["amount"]) for line in lines if line.get("type") == "GIFT_CERTIFICATE"), ZERO)
            if gc and gc <= total:
                out[order_id] = (at.astimezone(dt.timezone.utc).date(), channel, currency, gc)
    return out


def differences(check: str, mart: dict, source: dict) -> list[Difference]:
    """Every (day, channel, currency, order) on which the two sides differ (missing: 0). Pure."""
    out = []
    for key in sorted(set(mart) | set(source), key=lambda k: tuple(str(p) for p in k)):
        m, s = mart.get(key, ZERO), source.get(key, ZERO)
        if m != s:
            day, channel, currency, order_id = key
            out.append(Difference(check, channel, currency, m, s, f"{day.isoformat()} order {order_id}"))
    return out


def _sums(rows) -> dict:
    out: dict = defaultdict(lambda: ZERO)
    for *key, amount in rows:
        if amount:
            out[tuple(key)] += amount
    return dict(out)


#: The API captures an order confirms: the gift-certificate tenders naming an ``authorizationId``
#: of an order's latest ORDER_CREATED, where no payment of that order captures a REDEMPTION (which
#: would then be the source: the two never count twice).
_API_CAPTURES_CONFIRMED = """
WITH latest AS (
    SELECT DISTINCT ON (order_id) order_id, channel, currency, occurred_at, tenders FROM bi.order_event
    WHERE event_type = 'ORDER_CREATED' ORDER BY order_id, occurred_at DESC, received_at DESC
)
SELECT (o.occurred_at AT TIME ZONE 'UTC')::date, o.channel, o.currency, o.order_id, sum((t->>'amount')::numeric)
FROM latest o CROSS JOIN LATERAL jsonb_array_elements(o.tenders) t
WHERE t->>'type' = 'GIFT_CERTIFICATE' AND coalesce(t->>'authorizationId', '') <> ''
  AND NOT EXISTS (SELECT 1 FROM bi.payment_event p WHERE p.order_id = o.order_id
                  AND p.event_type = 'PAYMENT_CAPTURED' AND p.gc_operation = 'REDEMPTION')
GROUP BY 1, 2, 3, 4
"""


def check_sources(mart, date: dt.date | None = None, currency: str | None = None) -> list[Difference]:
    """The mart's sales, redemptions and refunds against the orders and payments it saw."""
    def keep(key) -> bool:
        return (date is None or key[0] == date) and (currency is None or key[2] == currency)

    def stream(where: str, column: str) -> dict:
        return _sums(_q(mart, f"SELECT event_date, channel, currency, coalesce(order_id, correlation_id, ''),"
                              f" sum({column}) FROM bi.fact_event WHERE applied AND {where} GROUP BY 1, 2, 3, 4"))

    def paid(operation: str, etype: str) -> dict:
        return _sums(_q(mart, "SELECT (occurred_at AT TIME ZONE 'UTC')::date, channel, currency, order_id,"
                              " sum(coalesce(gc_amount, amount)) FROM bi.payment_event"
                              " WHERE event_type = %s AND gc_operation = %s GROUP BY 1, 2, 3, 4", (etype, operation)))

    orders = _q(mart, "SELECT order_id, event_type, channel, currency, total, lines FROM bi.order_event"
                      " ORDER BY occurred_at, received_at")
    payments = _q(mart, "SELECT order_id, event_type, currency, coalesce(gc_amount, amount), occurred_at"
                        " FROM bi.payment_event ORDER BY occurred_at, received_at")
    sold_source = {(day, channel, cur, order_id): amount
                   for order_id, (day, channel, cur, amount) in paid_lines(orders, payments).items()}
    redeemed_source = paid("REDEMPTION", "PAYMENT_CAPTURED")
    for key, amount in _sums(_q(mart, _API_CAPTURES_CONFIRMED)).items():
        redeemed_source[key] = redeemed_source.get(key, ZERO) + amount
    redemptions = "event_type IN ('redeem.partial', 'redeem.full', 'authorization.captured')"
    checks = (("sources.sold", stream("event_type = 'issue'", "sold_amount"), sold_source),
              ("sources.redeemed", stream(redemptions, "redeemed_amount"), redeemed_source),
              ("sources.refunded_cert", stream("event_type = 'refund'", "refunded_cert_amount"),
               paid("REFUND", "PAYMENT_REFUNDED")),
              ("sources.refunded_buyer", stream("event_type = 'refund'", "refunded_buyer_amount"),
               paid("PURCHASE", "PAYMENT_REFUNDED")))
    out = []
    for check, mine, theirs in checks:
        out += differences(check, {k: v for k, v in mine.items() if keep(k)},
                           {k: v for k, v in theirs.items() if keep(k)})
    return out


#: The roll-forward lines that must equal a measured amount of the same day: (flow, fact
#: column, sign of the flow).
_MEASURED = (("sold", "sold_amount", 1), ("redeemed", "redeemed_amount", -1),
             ("expired", "breakage_amount", -1), ("cancelled", "cancelled_amount", -1))


def check_roll_forward(mart, currency: str | None = None) -> list[Difference]:
    """Every closed day balances, per selling channel and currency (see the module's docstring)."""
    flows = figures.daily_flows(mart, with_test=True)
    snapshot = _q(mart, "SELECT day, channel, currency, liability FROM bi.daily_snapshot WHERE closed"
                        " ORDER BY day, channel, currency")
    closed_days = sorted({r[0] for r in snapshot})
    closing = {(day, ch, cur): liability for day, ch, cur, liability in snapshot}
    keys = sorted({(ch, cur) for _d, ch, cur, _l in snapshot}
                  | {(ch, cur) for (day, cur, ch) in flows if day in set(closed_days)})
    out = []
    for channel, cur in keys:
        if currency is not None and cur != currency:
            continue
        previous = ZERO
        for day in closed_days:
            moved = flows.get((day, cur, channel), {})
            expected = previous + sum(moved.values(), ZERO)
            shown = closing.get((day, channel, cur), previous)
            if expected != shown:
                out.append(Difference("rollforward.closing", channel, cur, expected, shown,
                                      f"{day.isoformat()}: opening {previous:.2f} plus the day's flows"))
            if moved.get(finance.OTHER_FLOW):
                out.append(Difference("rollforward.unclassified", channel, cur, moved[finance.OTHER_FLOW], ZERO,
                                      day.isoformat()))
            previous = shown
    measured = _q(mart, "SELECT booked_date, currency, coalesce(cert_channel, channel), "
                        + ", ".join(f"sum({column})" for _f, column, _s in _MEASURED)
                        + " FROM bi.fact_event WHERE applied AND booked_date IN (SELECT day FROM bi.daily_snapshot"
                          " WHERE closed) GROUP BY 1, 2, 3")
    for day, cur, channel, *amounts in measured:
        if currency is not None and cur != currency:
            continue
        moved = flows.get((day, cur, channel), {})
        for (flow, _column, sign), amount in zip(_MEASURED, amounts):
            if sign * moved.get(flow, ZERO) != amount:
                out.append(Difference(f"rollforward.{flow}", channel, cur, sign * moved.get(flow, ZERO), amount,
                                      f"{day.isoformat()}: the line against the day's measured amount"))
    return out
