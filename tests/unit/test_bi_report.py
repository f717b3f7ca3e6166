"""The report's pure parts: money on the page and in CSVs, the roll-forward's periods and how
they chain, aging buckets, chart modes and the empty chart, and the page (self-contained,
escaped). No I/O."""
from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from decimal import Decimal

from workers.bi import charts, figures, finance
from workers.bi.report import Data, Table, _table_html, cell, render_html, roll_tables, shown

D = Decimal
DAY = dt.date(2026, 12, 1)


def test_cells_show_money_to_the_kopeck_and_the_page_with_thousands():
    assert cell(D("600.1")) == "600.10" and cell(D("0")) == "0.00" and cell(D("1234567.5")) == "1234567.50"
    assert cell(None) == "" and cell(True) == "yes" and cell(DAY) == "2026-12-01"
    assert shown(D("1234567.5")) == ("1,234,567.50", "num") and shown(12345) == ("12,345", "num")
    assert shown(DAY) == ("2026-12-01", "date")


def test_flows_take_their_line_from_the_event_and_the_sign():
    assert finance.flow_of("issue", D("100")) == "sold"
    assert finance.flow_of("authorization.captured", D("-5")) == "redeemed"
    assert finance.flow_of("refund", D("5")) == "refunded_cert" and finance.flow_of("refund", D("-5")) == "refunded_buyer"
    assert finance.flow_of("transfer", D("5")) == "transfer_in" and finance.flow_of("transfer", D("-5")) == "transfer_out"
    assert finance.flow_of("adjust", D("-1")) == "adjust_debit" and finance.flow_of("lock", D("0")) is None
    assert finance.flow_of("unlock", D("3")) == finance.OTHER_FLOW


def test_aging_buckets():
    now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    ago = lambda days: now - dt.timedelta(days=days)  # noqa: E731
    assert [finance.age_bucket(ago(d), now) for d in (0, 90, 92, 364, 366, 1000, 1200)] == [
        "0-3 months", "0-3 months", "3-12 months", "3-12 months", "1-3 years", "1-3 years", "over 3 years"]
    assert finance.age_bucket(None, now) == "over 3 years"


def flows() -> dict:
    out = defaultdict(lambda: defaultdict(lambda: D("0.00")))
    out[(dt.date(2026, 9, 30), "RUB", "POS")]["sold"] += D("1000.00")
    out[(dt.date(2026, 10, 5), "RUB", "POS")]["redeemed"] += D("-250.50")
    out[(dt.date(2026, 11, 2), "RUB", "ONLINE_STORE")]["sold"] += D("3000.00")
    out[(dt.date(2026, 11, 20), "RUB", "POS")]["expired"] += D("-749.50")
    return out


def test_the_roll_forward_chains_its_periods_to_the_kopeck():
    rolls = figures.roll_forward(flows(), dt.date(2026, 10, 1), dt.date(2026, 11, 30), "month", False)
    october, november = rolls[("RUB",)].values()
    assert october.opening == D("1000.00")  # everything before the range
    assert october.shown("redeemed") == D("250.50") and october.closing == D("749.50")
    assert november.opening == october.closing
    assert november.closing == D("3000.00")
    per_channel = figures.roll_forward(flows(), dt.date(2026, 10, 1), dt.date(2026, 11, 30), "month", True)
    assert set(per_channel) == {("RUB", "POS"), ("RUB", "ONLINE_STORE")}
    assert list(per_channel[("RUB", "POS")].values())[-1].closing == D("0.00")
    assert figures.grain_for(DAY, DAY) == "day" and figures.grain_for(DAY, DAY + dt.timedelta(days=89)) == "month"
    assert figures.grain_for(DAY, DAY + dt.timedelta(days=1000)) == "quarter"
    assert figures.period_label(dt.date(2026, 8, 1), "quarter") == "2026 Q3"


def data(start, end, grain="month") -> Data:
    fl = flows()
    by_channel = {k: list(v.values())[0] for k, v in figures.roll_forward(fl, start, end, "quarter", True).items()}
    return Data(start, end, grain, figures.roll_forward(fl, start, end, grain, False),
                figures.roll_forward(fl, start, end, "day", True), by_channel,
                {"issue": {}, "activity": {}}, [], [], [], [], dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc), 100)


def test_long_roll_forwards_are_split_into_groups_of_periods():
    d = data(dt.date(2026, 1, 1), dt.date(2026, 11, 30))
    tables = [t for t in roll_tables(d) if t.name.startswith("rollforward_RUB")]
    assert [len(t.columns) - 1 for t in tables] == [6, 5]
    assert tables[0].rows[0][0] == "Opening liability" and tables[-1].rows[-1][0] == "Closing liability"
    assert tables[-1].rows[-1][-1] == D("3000.00")


def test_chart_modes_and_a_chart_with_nothing_says_so():
    assert [charts.mode_for(n) for n in (1, 14, 15, 366, 367)] == ["bars", "bars", "daily", "daily", "monthly"]
    empty = charts.draw("Breakage", [("Breakage", {"POS RUB": {DAY: 0.0}})], "bars", False, "No breakage.")
    assert empty.png is None and empty.empty == "No breakage."
    monthly = charts.series_by_period({"s": {dt.date(2026, 1, 1): 1.0, dt.date(2026, 1, 31): 2.0}}, "monthly", False)
    assert monthly == {"s": {dt.date(2026, 1, 1): 3.0}}
    stock = charts.series_by_period({"s": {dt.date(2026, 1, 1): 1.0, dt.date(2026, 1, 31): 2.0}}, "monthly", True)
    assert stock == {"s": {dt.date(2026, 1, 1): 2.0}}


def test_the_page_is_self_contained_with_its_ranges_and_escaped_tables():
    d = data(dt.date(2026, 11, 1), dt.date(2026, 11, 30))
    d.anomalies = [(dt.datetime(2026, 12, 1, 10, tzinfo=dt.timezone.utc), "SEQUENCE_GAP", "GiftCertificates.Stream",
                    0, 7, "e1", "C1", 3, 4, "<gap> & more")]
    chart_list = charts.report_charts(d)
    page = render_html(d, roll_tables(d), chart_list)
    assert "<script" not in page and "http" not in page.replace("data:image/png", "")
    # the liability chart is drawn, with its axis and data ranges; the others with no data say so
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)) >= 1
    assert 'data-p0-x-min="' in page and 'data-p0-data-y-max="' in page
    assert page.count('class="empty"') == len([c for c in chart_list if c.png is None]) >= 1
    assert '<td data-col="2026-11" class=num>3,000.00</td>' in page
    html = _table_html(Table("anomalies", "A", (("detail", "detail"), ("day", "Day")), [("<gap> & more", DAY)]))
    assert "&lt;gap&gt; &amp; more" in html and 'class=date>2026-12-01<' in html
