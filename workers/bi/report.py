"""``report``: one self-contained ``report.html`` of the mart, with a CSV of every table beside it.

The page reads as finance reads a liability: the roll-forward per currency (opening, what came
in, what went out, closing), the same per selling channel, the aging of the outstanding
balance, the flows per channel, the pool, and the anomalies. Charts are matplotlib PNGs
(:mod:`workers.bi.charts`) inlined as ``data:`` URIs; the page has no script and loads nothing
from anywhere. Long tables are split into groups of periods, money is right-aligned with
thousands separators, dates never wrap; it fits a 1280 px page. The CSVs hold every day.
ISO 4217 test currencies (XTS) are left out unless asked for.
"""
from __future__ import annotations

import csv
import datetime as dt
import html
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from workers.bi import charts as charting
from workers.bi import figures, finance, rules

DAILY_COLUMNS = figures.DAILY_COLUMNS
ANOMALY_COLUMNS = ("detected_at", "kind", "topic", "kafka_partition", "kafka_offset", "event_id", "code",
                   "expected", "got", "detail")
#: Periods per roll-forward table (a longer range is split into groups of this many).
PERIODS_PER_TABLE = 6
#: Anomalies shown on the page (all of them are in anomalies.csv).
ANOMALIES_SHOWN = 50


@dataclass
class Table:
    """A table of the page: ``columns`` are (name, label); ``money``/``dates`` name the
    columns shown as money (right-aligned, thousands) or dates (never wrapped)."""

    name: str
    title: str
    columns: tuple
    rows: list
    note: str = ""
    row_class: dict = field(default_factory=dict)


def cell(value) -> str:
    """How a value is written in a CSV (money to the kopeck, no separators)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return f"{value.quantize(rules.CENT):.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def shown(value) -> tuple[str, str]:
    """(text, css class) of a value on the page: money with thousands separators, right-aligned."""
    if isinstance(value, Decimal):
        return f"{value.quantize(rules.CENT):,.2f}", "num"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}", "num"
    if isinstance(value, (dt.date, dt.datetime)):
        return cell(value).replace("T", " ").rstrip("Z"), "date"
    return cell(value), ""


@dataclass
class Data:
    """What the report is made of, read from the mart."""

    start: dt.date
    end: dt.date
    grain: str
    rolls: dict          # {(currency,): {period: Roll}}
    rolls_daily: dict    # {(currency, channel): {day: Roll}}
    by_channel: dict     # {(currency, channel): {start: Roll}} over the whole range
    aging: dict
    daily: list          # daily snapshot rows (DAILY_COLUMNS)
    pool_levels: list
    pool_history: list
    anomalies: list
    generated: dt.datetime
    mark: int = 0


def load(conn, start: dt.date, end: dt.date, with_test: bool = False, mark: int = 0) -> Data:
    def q(sql, params=()):
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    flows = figures.daily_flows(conn, with_test)
    grain = figures.grain_for(start, end)
    now = dt.datetime.now(dt.timezone.utc)
    as_of = min(now, dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.timezone.utc))
    daily = [r for r in q(f"SELECT {', '.join(DAILY_COLUMNS)} FROM bi.daily_snapshot WHERE day BETWEEN %s AND %s"
                          " ORDER BY day, channel, currency", (start, end))
             if figures.currencies_shown(r[2], with_test)]
    anomalies = q(f"SELECT {', '.join(ANOMALY_COLUMNS)} FROM bi.anomaly"
                  " WHERE (detected_at AT TIME ZONE 'UTC')::date BETWEEN %s AND %s ORDER BY id", (start, end))
    whole = figures.roll_forward(flows, start, end, "quarter", True)
    by_channel = {}
    for key, periods in whole.items():
        total = figures.Roll(opening=next(iter(periods.values())).opening)
        for roll in periods.values():
            for flow, amount in roll.flows.items():
                total.flows[flow] += amount
        by_channel[key] = total
    return Data(start, end, grain, figures.roll_forward(flows, start, end, grain, False),
                figures.roll_forward(flows, start, end, "day", True), by_channel,
                figures.aging(conn, as_of, with_test), daily, figures.pool_levels(conn, with_test),
                figures.pool_history(conn, start, end, with_test), anomalies, now, mark)


# ---- tables ---------------------------------------------------------------------------------

def _roll_rows(rolls: list[figures.Roll]) -> list[tuple]:
    rows = [("Opening liability",) + tuple(r.opening for r in rolls)]
    rows += [(f"{sign} {label}",) + tuple(r.shown(flow) for r in rolls) for flow, label, sign in figures.LINES]
    other = [r.flows.get(finance.OTHER_FLOW, rules.ZERO) for r in rolls]
    if any(other):
        rows.append(("± Other movements",) + tuple(other))
    rows.append(("Closing liability",) + tuple(r.closing for r in rolls))
    return rows


def roll_tables(data: Data) -> list[Table]:
    out = []
    for (currency,), periods in sorted(data.rolls.items()):
        items = list(periods.items())
        for n in range(0, len(items), PERIODS_PER_TABLE):
            group = items[n:n + PERIODS_PER_TABLE]
            cols = (("line", currency),) + tuple(
                (figures.period_label(p, data.grain), figures.period_label(p, data.grain)) for p, _r in group)
            part = f" ({n // PERIODS_PER_TABLE + 1} of {-(-len(items) // PERIODS_PER_TABLE)})" \
                if len(items) > PERIODS_PER_TABLE else ""
            out.append(Table(f"rollforward_{currency}_{n // PERIODS_PER_TABLE + 1}",
                             f"Liability roll-forward, {currency}, per {data.grain}{part}", cols,
                             _roll_rows([r for _p, r in group])))
    for currency in sorted({c for c, _ch in data.by_channel}):
        channels = sorted(ch for c, ch in data.by_channel if c == currency)
        rolls = [data.by_channel[(currency, ch)] for ch in channels]
        total = figures.Roll(opening=sum((r.opening for r in rolls), rules.ZERO))
        for r in rolls:
            for flow, amount in r.flows.items():
                total.flows[flow] += amount
        cols = (("line", currency),) + tuple((ch, ch) for ch in channels) + (("total", "All channels"),)
        out.append(Table(f"rollforward_channels_{currency}",
                         f"Liability roll-forward per selling channel, {currency}, {data.start} to {data.end}",
                         cols, _roll_rows(rolls + [total]),
                         note="Every line here is attributed to the channel that sold the certificate: a POS-sold "
                              "certificate redeemed online counts its redemption under POS, because that is where its "
                              "liability lives."))
    return out


def aging_tables(data: Data) -> list[Table]:
    buckets = [label for label, _b in finance.AGING_BUCKETS]
    out = []
    for name, title in (("issue", "since issue"), ("activity", "since the last activity (the certificate's last event)")):
        cells = data.aging[name]
        keys = sorted({(c, ch) for c, ch, _b in cells})
        cols = (("currency", "Currency"), ("channel", "Selling channel"))
        for b in buckets:
            cols += ((f"{b} n", f"{b}: certificates"), (f"{b} amount", f"{b}: balance"))
        cols += (("total n", "Total: certificates"), ("total amount", "Total: balance"))
        rows = []
        for c, ch in keys:
            row, n, amount = [c, ch], 0, rules.ZERO
            for b in buckets:
                count, value = cells.get((c, ch, b), (0, rules.ZERO))
                row += [count, value]
                n, amount = n + count, amount + value
            rows.append(tuple(row + [n, amount]))
        out.append(Table(f"aging_{name}", f"Aging of the outstanding balance, by time {title}", cols, rows))
    return out


def flow_tables(data: Data) -> list[Table]:
    """The daily snapshot's flows (on the channel where they happened) per period, in two groups."""
    sums: dict = {}
    idx = {c: i for i, c in enumerate(DAILY_COLUMNS)}
    for r in data.daily:
        key = (figures.period_of(r[0], data.grain), r[1], r[2])
        acc = sums.setdefault(key, {})
        for c in DAILY_COLUMNS[3:19]:
            acc[c] = acc.get(c, 0) + r[idx[c]]
    groups = (("flows_sales", "Sales, redemptions and refunds, on the channel where they happened",
               ("sold_count", "sold_amount", "redeemed_count", "redeemed_amount", "refunded_cert_amount",
                "refunded_buyer_amount")),
              ("flows_other", "Expiry, cancellations, adjustments, locks and blocked issues, on the channel where they "
                              "happened", ("expired_count", "breakage_amount", "cancelled_count", "cancelled_amount",
                                           "adjusted_amount", "locked_count", "blocked_count")))
    labels = {"sold_count": "Sold (n)", "sold_amount": "Sold", "redeemed_count": "Redeemed (n)",
              "redeemed_amount": "Redeemed", "refunded_cert_amount": "Refunds onto certificates",
              "refunded_buyer_amount": "Refunded to buyers", "expired_count": "Expired (n)",
              "breakage_amount": "Breakage", "cancelled_count": "Cancelled (n)", "cancelled_amount": "Cancelled",
              "adjusted_amount": "Adjusted (net)", "locked_count": "Locks", "blocked_count": "Blocked issues"}
    out = []
    for name, title, columns in groups:
        cols = (("period", data.grain.capitalize()), ("channel", "Channel"), ("currency", "Currency")) + tuple(
            (c, labels[c]) for c in columns)
        rows = [(figures.period_label(p, data.grain), ch, cur) + tuple(acc[c] for c in columns)
                for (p, ch, cur), acc in sorted(sums.items())]
        out.append(Table(name, title, cols, rows))
    return out


def pool_tables(data: Data) -> list[Table]:
    levels = Table("pool_levels", "Pool levels now, per segment", (
        ("currency", "Currency"), ("kind", "Kind"), ("nominal", "Nominal"), ("available", "Available"),
        ("counted_at", "Counted at (UTC)")),
        [(c, k, "open value" if n == rules.OPEN else Decimal(n), lv, at) for c, k, n, lv, at in data.pool_levels],
        note="Levels are the service's own counts, carried by its reserve, release and issue.blocked events "
             "(contract revision 3). A batch load is not on the stream: it shows at the segment's next event.")
    return [levels]


def anomaly_table(data: Data) -> Table:
    rows = data.anomalies[-ANOMALIES_SHOWN:]
    more = len(data.anomalies) - len(rows)
    return Table("anomalies", "Anomalies", tuple((c, c.replace("_", " ")) for c in ANOMALY_COLUMNS), rows,
                 note=f"The last {len(rows)} of {len(data.anomalies)}; all of them are in anomalies.csv." if more else "")


# ---- the page -------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1220px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.4em 0 1em; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 2px 6px; }
th { background: #f0f0f0; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.date, th.date { white-space: nowrap; }
tr.total td { font-weight: 600; border-top: 2px solid #888; }
td.detail { max-width: 28em; overflow-wrap: anywhere; }
img { max-width: 100%; border: 1px solid #eee; }
.meta, .note { color: #555; font-size: 0.85em; max-width: 70em; }
p.empty { border: 1px dashed #bbb; padding: 1em; color: #555; }
"""


def _table_html(t: Table) -> str:
    e = html.escape
    parts = [f'<h2 id="h-{e(t.name)}">{e(t.title)}</h2>']
    if t.note:
        parts.append(f'<p class="note">{e(t.note)}</p>')
    parts.append(f'<table id="{e(t.name)}"><thead><tr>' + "".join(
        f'<th data-col="{e(c)}"{" class=date" if _is_date_label(label) else ""}>{e(label)}</th>'
        for c, label in t.columns) + "</tr></thead><tbody>")
    for row in t.rows:
        closing = isinstance(row[0], str) and row[0].startswith(("Closing", "Opening"))
        cells = []
        for (c, _label), v in zip(t.columns, row):
            text, cls = shown(v)
            if c == "detail":
                cls = "detail"
            cells.append(f'<td data-col="{e(c)}"{f" class={cls}" if cls else ""}>{e(text)}</td>')
        parts.append(f'<tr{" class=total" if closing else ""}>' + "".join(cells) + "</tr>")
    if not t.rows:
        parts.append(f'<tr><td colspan="{len(t.columns)}">none in this period</td></tr>')
    parts.append("</tbody></table>")
    return "\n".join(parts)


def _is_date_label(label: str) -> bool:
    return len(label) >= 7 and label[:4].isdigit() and label[4] in "- "


def _chart_html(c: charting.Chart) -> str:
    e = html.escape
    if c.png is None:
        return f'<h2>{e(c.title)}</h2><p class="empty" data-chart="{e(c.title)}">{e(c.empty)}</p>'
    attrs = []
    for n, (sub, r) in enumerate(c.ranges.items()):
        attrs.append(" ".join(f'data-p{n}-{k}="{v:.6g}"' for k, v in r.items()))
    return (f'<h2>{e(c.title)}</h2><figure class="chart" data-mode="{c.mode}" data-panels="{len(c.ranges)}" '
            + " ".join(attrs) + f'><img alt="{e(c.title)}" src="{c.png}"></figure>')


def render_html(data: Data, tables: list[Table], chart_list: list[charting.Chart]) -> str:
    e = html.escape
    span = f"{data.start.isoformat()} to {data.end.isoformat()}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Gift certificates: liability {span}</title>", f"<style>{_STYLE}</style></head><body>",
             f"<h1>Gift certificates: outstanding liability, {e(span)}</h1>",
             f'<p class="meta">Generated {e(shown(data.generated)[0])} UTC from the BI mart. Money to the kopeck; '
             "every table is also a CSV beside this page (with every day). Days are UTC; a late event of a closed "
             "day is booked on the day it arrived. Test currencies (XTS) are left out.</p>",
             '<p class="note">How figures are attributed: the liability roll-forward and the aging count every '
             "figure on the channel that sold the certificate, where its liability lives. The tables of flows "
             "count each sale, redemption or refund on the channel where it happened, as the ledger books it; so "
             "a channel's flows there need not add up to its liability.</p>"]
    for c in chart_list:
        parts.append(_chart_html(c))
    for t in tables:
        parts.append(_table_html(t))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_csv(columns, rows, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for row in rows:
            w.writerow([cell(v) for v in row])


def write_csvs(data: Data, out: Path) -> None:
    flows = list(figures.LINES)
    rows = []
    for (currency, channel), days in sorted(data.rolls_daily.items()):
        for day, roll in days.items():
            rows.append((day, currency, channel, roll.opening) + tuple(roll.shown(f) for f, _l, _s in flows)
                        + (roll.flows.get(finance.OTHER_FLOW, rules.ZERO), roll.closing))
    write_csv(("day", "currency", "selling_channel", "opening") + tuple(f for f, _l, _s in flows)
              + ("other", "closing"), rows, out / "rollforward.csv")
    aging = [(name, c, ch, b, n, amount) for name, cells in data.aging.items()
             for (c, ch, b), (n, amount) in sorted(cells.items())]
    write_csv(("by", "currency", "selling_channel", "bucket", "certificates", "balance"), aging, out / "aging.csv")
    write_csv(DAILY_COLUMNS, data.daily, out / "daily_snapshot.csv")
    write_csv(("currency", "kind", "nominal", "level", "counted_at"), data.pool_levels, out / "pool_levels.csv")
    write_csv(("day", "currency", "kind", "nominal", "reserved", "released", "blocked", "level_end", "closed"),
              data.pool_history, out / "pool_daily.csv")
    write_csv(ANOMALY_COLUMNS, data.anomalies, out / "anomalies.csv")


def default_range(conn) -> tuple[dt.date, dt.date]:
    with conn.cursor() as cur:
        cur.execute("SELECT min(day), max(day) FROM bi.daily_snapshot")
        first, last = cur.fetchone()
    today = dt.datetime.now(dt.timezone.utc).date()
    return first or today, max(last or today, today)


def write_report(start: dt.date | None = None, end: dt.date | None = None, out_dir: Path | str | None = None,
                 conn=None, with_test: bool = False) -> Path:
    """Write ``report.html`` and its CSVs into ``out_dir``; returns the page's path."""
    from config import LOCAL_DIR, get_settings
    from workers.bi.schema import connect, ensure_schema

    own = conn is None
    conn = conn or connect(application_name="gcp-bi-report")
    try:
        ensure_schema(conn)
        first, last = default_range(conn)
        start, end = start or first, end or last
        data = load(conn, start, end, with_test, get_settings().pool_low_water_mark)
        conn.rollback()
    finally:
        if own:
            conn.close()
    out = Path(out_dir) if out_dir else LOCAL_DIR / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_csvs(data, out)
    tables = roll_tables(data) + aging_tables(data) + flow_tables(data) + pool_tables(data) + [anomaly_table(data)]
    page = out / "report.html"
    page.write_text(render_html(data, tables, charting.report_charts(data)), encoding="utf-8")
    return page
