"""The report page itself: one self-contained file, money to the kopeck, charts inline. No I/O
but the page and CSVs written into a temporary directory."""
from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

from workers.bi.report import (ANOMALY_COLUMNS, DAILY_COLUMNS, LEVEL_COLUMNS, LIABILITY_COLUMNS, POOL_COLUMNS, Table,
                       cell, charts, render_html, write_csv)

DAY = dt.date(2026, 12, 1)


def tables():
    daily = [(DAY, "POS", "RUB", 1, Decimal("1500.00"), 1, Decimal("600.1"), 0, Decimal("0"), 1, Decimal("200.00"),
              1, Decimal("500.00"), 0, Decimal("0.00"), Decimal("0.00"), 1, 1, 2, Decimal("1100.00"), False)]
    return [Table("liability", "Liability", LIABILITY_COLUMNS, [("POS", "RUB", DAY, Decimal("1100.00"), 1)]),
            Table("daily_snapshot", "Daily", DAILY_COLUMNS, daily),
            Table("pool_daily", "Pool", POOL_COLUMNS, [(DAY, "RUB", "500.00", 2, 1, 1, 0, False)]),
            Table("pool_level", "Levels", LEVEL_COLUMNS, []),
            Table("anomalies", "Anomalies", ANOMALY_COLUMNS, [
                (dt.datetime(2026, 12, 1, 10, tzinfo=dt.timezone.utc), "SEQUENCE_GAP", "GiftCertificates.Stream",
                 0, 7, "e1", "C1", 3, 4, "<gap> & more")])]


def test_cells_show_money_to_the_kopeck():
    assert cell(Decimal("600.1")) == "600.10" and cell(Decimal("0")) == "0.00"
    assert cell(None) == "" and cell(True) == "yes" and cell(DAY) == "2026-12-01"


def test_the_page_is_self_contained_with_four_inline_charts_and_escaped_tables(tmp_path):
    ts = {t.name: t for t in tables()}
    page = render_html(tables(), charts(ts, 100), DAY, DAY, dt.datetime(2026, 12, 1, 12, tzinfo=dt.timezone.utc))
    assert page.count('<img alt="') == 4
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)) == 4
    assert "<script" not in page and "http" not in page.replace("data:image/png", "")
    assert '<td data-col="redeemed_amount" class=num>600.10</td>' in page
    assert "&lt;gap&gt; &amp; more" in page
    write_csv(ts["daily_snapshot"], tmp_path / "daily.csv")
    lines = (tmp_path / "daily.csv").read_text().splitlines()
    assert lines[0].split(",") == list(DAILY_COLUMNS)
    assert lines[1].split(",")[:7] == ["2026-12-01", "POS", "RUB", "1", "1500.00", "1", "600.10"]
