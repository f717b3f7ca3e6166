"""The report reads well with one day of data, 90 days and three years: schema-valid stream
records are applied to a real mart, the report is rendered in headless Chromium at 1280 px, and
the DOM is measured: no table wider than the page, no date wrapped, every chart's points inside
its axes (and spread over them, not lone dots on a far too long axis), no test currency, and
the liability roll-forward balancing on every line. Screenshots are kept under
``.local/report-sizes/`` to be looked at."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import jsonschema
import psycopg2
import pytest

from bench._bi_synth import stream
from workers.bi.mart import Mart
from workers.bi.schema import connect, ensure_schema

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCHEMA = json.loads((ROOT / "contracts" / "giftcertificates_stream.schema.json").read_text())
END = dt.date(2026, 12, 7)
SHOTS = ROOT / ".local" / "report-sizes"

#: Measures the page as Chromium laid it out, and writes what it found into the DOM.
MEASURE = """<script>
addEventListener('load', () => {
  const page = document.documentElement.clientWidth, out = {page, wide: [], wrapped: [], charts: []};
  for (const t of document.querySelectorAll('table')) {
    const r = t.getBoundingClientRect();
    if (r.right > page) out.wide.push([t.id, Math.round(r.right)]);
  }
  for (const td of document.querySelectorAll('td.date, th.date')) {
    const line = parseFloat(getComputedStyle(td).lineHeight) || 16;
    if (td.getBoundingClientRect().height > 2.2 * line) out.wrapped.push(td.textContent);
  }
  for (const f of document.querySelectorAll('figure.chart')) out.charts.push(Object.assign({}, f.dataset));
  out.empty = [...document.querySelectorAll('p.empty')].map(p => p.textContent);
  const pre = document.createElement('pre'); pre.id = 'measured'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


class Msg:
    def __init__(self, offset: int):
        self._offset = offset

    def topic(self):
        return "GiftCertificates.Stream"

    def partition(self):
        return 0

    def offset(self):
        return self._offset


@pytest.fixture
def mart_db():
    base = urlparse(os.environ["DATABASE_URL"])
    name = "gcp_bi_sizes_" + uuid.uuid4().hex[:8]
    admin = psycopg2.connect(urlunparse(base._replace(path="/postgres")))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn = connect(urlunparse(base._replace(path=f"/{name}")))
    ensure_schema(conn)
    try:
        yield conn
    finally:
        conn.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def load(conn, days: int, per_day: int) -> list[dict]:
    events = stream(days, per_day, END)
    for e in events[:: max(1, len(events) // 300)]:
        jsonschema.validate(e, SCHEMA)
    mart = Mart(conn)
    arrival = dt.datetime.combine(END, dt.time(23), dt.timezone.utc)
    for n in range(0, len(events), 2000):
        mart.record([(Msg(n + i), e) for i, e in enumerate(events[n:n + 2000])], [], [], arrival)
    mart.close_due_days(arrival + dt.timedelta(days=1), caught_up=True, grace=dt.timedelta(0))
    return events


def render(page: Path, name: str) -> dict:
    probe = page.with_name("measured.html")
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    profile = tempfile.mkdtemp(prefix="gcp-chromium-")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={profile}", "--window-size=1280,1000"]
    try:
        done = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
        SHOTS.mkdir(parents=True, exist_ok=True)
        subprocess.run(flags[:-1] + ["--window-size=1280,6000", f"--screenshot={SHOTS / (name + '.png')}",
                                     page.as_uri()], capture_output=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout.split('<pre id="measured">', 1)[1].split("</pre>", 1)[0]
    return json.loads(text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def check_charts(measured: dict, mode: str) -> None:
    assert measured["charts"], measured
    for chart in measured["charts"]:
        assert chart["mode"] == mode
        for n in range(int(chart["panels"])):
            p = {k[len(f"p{n}")].lower() + k[len(f"p{n}") + 1:]: float(v)
                 for k, v in chart.items() if k.startswith(f"p{n}")}
            assert p["xMin"] <= p["dataXMin"] <= p["dataXMax"] <= p["xMax"], chart
            assert p["yMin"] <= p["dataYMin"] <= p["dataYMax"] <= p["yMax"], chart
            # the data spans most of its axes: no lone dots on an axis running years
            assert (p["dataXMax"] - p["dataXMin"]) >= 0.5 * (p["xMax"] - p["xMin"]), chart


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
@pytest.mark.parametrize("days,per_day,mode", [(1, 40, "bars"), (90, 12, "daily"), (3 * 365, 4, "monthly")])
def test_the_report_reads_well_with_one_day_90_days_and_three_years(mart_db, tmp_path, days, per_day, mode):
    from workers.bi.report import write_report

    # given a mart fed with that many days of stream records
    load(mart_db, days, per_day)
    # when the report is written and rendered at 1280 px
    page = write_report(END - dt.timedelta(days=days - 1), END, tmp_path, conn=mart_db)
    measured = render(page, f"{days}d")
    # then no table is wider than the page, no date wraps, every chart's data is inside its axes
    assert measured["page"] == 1280 or measured["page"] > 1200
    assert measured["wide"] == [], measured["wide"]
    assert measured["wrapped"] == [], measured["wrapped"]
    check_charts(measured, mode)
    text = page.read_text()
    words = __import__("re").sub(r'src="data:[^"]*"', "", text.split("</style>", 1)[1])
    assert "XTS" not in words.replace("(XTS) are left out", "")
    # and the roll-forward of each day balances: opening + flows = closing, and the next opens there
    rows = list(__import__("csv").DictReader((tmp_path / "rollforward.csv").open()))
    from decimal import Decimal
    closing = {}
    for r in rows:
        ins = sum(Decimal(r[f]) for f in ("sold", "refunded_cert", "adjust_credit", "transfer_in"))
        outs = sum(Decimal(r[f]) for f in ("redeemed", "refunded_buyer", "expired", "cancelled", "adjust_debit",
                                           "transfer_out"))
        assert Decimal(r["opening"]) + ins - outs + Decimal(r["other"]) == Decimal(r["closing"]), r
        assert Decimal(r["other"]) == 0
        key = (r["currency"], r["selling_channel"])
        if key in closing:
            assert Decimal(r["opening"]) == closing[key]
        closing[key] = Decimal(r["closing"])
    with mart_db.cursor() as cur:
        cur.execute("SELECT currency, coalesce(channel, 'NONE'), sum(balance) FROM bi.certificate WHERE status IN"
                    " ('ISSUED','PARTIALLY_REDEEMED','REDEEMED','LOCKED','REFUND_PENDING','REFUND_PENDING_DETAILS')"
                    " AND currency <> 'XTS' GROUP BY 1, 2")
        assert {(c, ch): v for c, ch, v in cur.fetchall() if v} == {k: v for k, v in closing.items() if v}
