"""Finance's figures read from the mart: the liability roll-forward (per currency, and per
selling channel), the aging of the outstanding balance, and the periods a report groups days
into. The SQL is here; the arithmetic is plain Decimal, so every line adds up to the kopeck.

Attribution: the roll-forward's liability and every one of its flows belong to the channel that
*sold* the certificate (``coalesce(cert_channel, channel)`` of a fact, as the daily snapshot's
liability), whatever channel the flow happened on; the daily snapshot's flows stay on the
channel where they happened (as the service's ledger books them).
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from workers.bi import finance
from workers.bi.rules import LIABILITY_STATUSES, TEST_CURRENCIES, ZERO

#: Columns of the daily snapshot (CSV), in the order written.
DAILY_COLUMNS = ("day", "channel", "currency", "sold_count", "sold_amount", "redeemed_count", "redeemed_amount",
                 "refunded_buyer_count", "refunded_buyer_amount", "refunded_cert_count", "refunded_cert_amount",
                 "expired_count", "breakage_amount", "cancelled_count", "cancelled_amount", "adjusted_amount",
                 "locked_count", "locked_end", "blocked_count", "liability", "closed")
#: The roll-forward's lines as shown: (flow, label, sign shown).
LINES = tuple((f, label, "+") for f, label in zip(finance.FLOWS_IN, (
    "Sold", "Refunds onto certificates", "Credit adjustments", "Transfers in"))) + tuple(
    (f, label, "−") for f, label in zip(finance.FLOWS_OUT, (
        "Redeemed", "Refunded to buyers", "Expired (breakage)", "Cancelled", "Debit adjustments",
        "Transfers out")))


@dataclass
class Roll:
    """One roll-forward: opening, the flows (signed as they move the liability), closing."""

    opening: Decimal = ZERO
    flows: dict = field(default_factory=lambda: defaultdict(lambda: ZERO))

    @property
    def closing(self) -> Decimal:
        return self.opening + sum(self.flows.values(), ZERO)

    def shown(self, flow: str) -> Decimal:
        """A flow as a finance user reads it: a positive amount under its + or − line."""
        value = self.flows.get(flow, ZERO)
        return -value if flow in finance.FLOWS_OUT else value


def _q(conn, sql: str, params=()) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def currencies_shown(currency: str, with_test: bool) -> bool:
    """ISO 4217 test currencies (XTS) stay out of a finance report unless asked for."""
    return with_test or currency not in TEST_CURRENCIES


def daily_flows(conn, with_test: bool = False) -> dict:
    """{(day, currency, selling channel): {flow: signed sum}} over every applied fact, by the
    day it was booked on (a closed day never changes)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: ZERO))
    for day, currency, channel, flow, amount in _q(conn, (
            "SELECT booked_date, currency, coalesce(cert_channel, channel), flow, sum(liability_delta)"
            " FROM bi.fact_event WHERE flow IS NOT NULL AND applied GROUP BY 1, 2, 3, 4")):
        if currencies_shown(currency, with_test):
            out[(day, currency, channel)][flow] += amount
    return out


def period_of(day: dt.date, grain: str) -> dt.date:
    """The first day of the period ``day`` falls in (``day``, ``month`` or ``quarter``)."""
    if grain == "day":
        return day
    if grain == "month":
        return day.replace(day=1)
    return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


def grain_for(start: dt.date, end: dt.date) -> str:
    """How a roll-forward table groups the days of a range: days for a week, months up to
    about a year and a half, quarters beyond."""
    days = (end - start).days + 1
    return "day" if days <= 7 else "month" if days <= 550 else "quarter"


def period_label(period: dt.date, grain: str) -> str:
    if grain == "day":
        return period.isoformat()
    if grain == "month":
        return period.strftime("%Y-%m")
    return f"{period.year} Q{(period.month - 1) // 3 + 1}"


def roll_forward(flows: dict, start: dt.date, end: dt.date, grain: str, by_channel: bool
                 ) -> dict[tuple, dict[dt.date, Roll]]:
    """{(currency,) or (currency, channel): {period: Roll}} for the periods of [start, end]:
    each period opens with the previous one's closing (the first with every flow before
    ``start``). A key appears once it has any flow up to ``end``."""
    out: dict = {}
    for (day, currency, channel), by_flow in sorted(flows.items()):
        if day > end:
            continue
        key = (currency, channel) if by_channel else (currency,)
        periods = out.setdefault(key, {"_before": Roll()})
        if day < start:
            target = periods["_before"]
        else:
            target = periods.setdefault(period_of(day, grain), Roll())
        for flow, amount in by_flow.items():
            target.flows[flow] += amount
    result = {}
    for key, periods in out.items():
        opening = periods.pop("_before").closing
        rolled = {}
        for period in _periods(start, end, grain):
            roll = periods.get(period, Roll())
            roll.opening = opening
            rolled[period] = roll
            opening = roll.closing
        result[key] = rolled
    return result


def _periods(start: dt.date, end: dt.date, grain: str) -> list[dt.date]:
    out, period = [], period_of(start, grain)
    while period <= end:
        out.append(period)
        if grain == "day":
            period += dt.timedelta(days=1)
        else:
            step = 1 if grain == "month" else 3
            month = period.month - 1 + step
            period = dt.date(period.year + month // 12, month % 12 + 1, 1)
    return out


def aging(conn, as_of: dt.datetime, with_test: bool = False) -> dict[str, dict]:
    """{"issue"|"activity": {(currency, channel, bucket): [count, amount]}}: the outstanding
    balance (certificates with a balance in a liability status) by time since issue and
    since the certificate's last event."""
    out: dict = {"issue": defaultdict(lambda: [0, ZERO]), "activity": defaultdict(lambda: [0, ZERO])}
    rows = _q(conn, "SELECT currency, coalesce(channel, 'NONE'), issued_at, last_event_at, balance"
                    " FROM bi.certificate WHERE status IN %s AND balance > 0",
              (tuple(sorted(LIABILITY_STATUSES)),))
    for currency, channel, issued_at, last_at, balance in rows:
        if not currencies_shown(currency, with_test):
            continue
        issued = _time(issued_at)
        for name, since in (("issue", issued), ("activity", last_at)):
            cell_ = out[name][(currency, channel, finance.age_bucket(since, as_of))]
            cell_[0] += 1
            cell_[1] += balance
    return out


def _time(value) -> dt.datetime | None:
    if not value:
        return None
    from workers.bi.rules import parse_time

    try:
        return parse_time(value)
    except ValueError:
        return None


def pool_levels(conn, with_test: bool = False) -> list[tuple]:
    """(currency, kind, nominal, level, counted_at) of every segment the stream told a level of."""
    return [r for r in _q(conn, "SELECT currency, kind, nominal, level, counted_at FROM bi.pool_segment"
                                " WHERE level IS NOT NULL ORDER BY 1, 2, nominal = 'OPEN',"
                                " CASE WHEN nominal <> 'OPEN' THEN nominal::numeric END")
            if currencies_shown(r[0], with_test)]


def pool_history(conn, start: dt.date, end: dt.date, with_test: bool = False) -> list[tuple]:
    """(day, currency, kind, nominal, reserved, released, blocked, level_end, closed) per day."""
    return [r for r in _q(conn, "SELECT day, currency, kind, nominal, reserved, released, blocked, level_end, closed"
                                " FROM bi.pool_segment_daily WHERE day BETWEEN %s AND %s ORDER BY 1, 2, 3, 4",
                          (start, end))
            if currencies_shown(r[1], with_test)]
