"""``report``: one self-contained ``report.html`` of the mart, with a CSV of every table beside it.

The charts are drawn by matplotlib and embedded as base64 PNG (``data:`` URIs); the page has no
script, and no font, style or image from any other place: it opens on a network that reaches
nothing. The tables show the same figures as the charts, plus the anomalies.
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from workers.bi import rules

#: Columns of the daily snapshot table, in the order shown.
DAILY_COLUMNS = ("day", "channel", "currency", "sold_count", "sold_amount", "redeemed_count", "redeemed_amount",
                 "refunded_buyer_count", "refunded_buyer_amount", "refunded_cert_count", "refunded_cert_amount",
                 "expired_count", "breakage_amount", "cancelled_count", "cancelled_amount", "adjusted_amount",
                 "locked_count", "locked_end", "blocked_count", "liability", "closed")
POOL_COLUMNS = ("day", "currency", "nominal", "reserved", "released", "blocked", "level_end", "closed")
LEVEL_COLUMNS = ("currency", "nominal", "level", "as_of")
ANOMALY_COLUMNS = ("detected_at", "kind", "topic", "kafka_partition", "kafka_offset", "event_id", "code",
                   "expected", "got", "detail")
LIABILITY_COLUMNS = ("channel", "currency", "day", "liability", "locked_end")


@dataclass
class Table:
    name: str
    title: str
    columns: tuple[str, ...]
    rows: list[tuple]


def cell(value) -> str:
    """How a value is shown in the page and in the CSV (money to the kopeck)."""
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


def load_tables(conn, start: dt.date, end: dt.date) -> list[Table]:
    """The report's tables, read from the mart."""
    def q(sql, params=()):
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    daily = q(f"SELECT {', '.join(DAILY_COLUMNS)} FROM bi.daily_snapshot WHERE day BETWEEN %s AND %s"
              " ORDER BY day, channel, currency", (start, end))
    liability = q(f"SELECT DISTINCT ON (channel, currency) {', '.join(LIABILITY_COLUMNS)} FROM bi.daily_snapshot"
                  " WHERE day <= %s ORDER BY channel, currency, day DESC", (end,))
    pool = q(f"SELECT {', '.join(POOL_COLUMNS)} FROM bi.pool_daily WHERE day BETWEEN %s AND %s"
             " ORDER BY day, currency, nominal", (start, end))
    levels = q(f"SELECT {', '.join(LEVEL_COLUMNS)} FROM bi.pool_level ORDER BY currency, nominal")
    anomalies = q(f"SELECT {', '.join(ANOMALY_COLUMNS)} FROM bi.anomaly"
                  " WHERE (detected_at AT TIME ZONE 'UTC')::date BETWEEN %s AND %s ORDER BY id", (start, end))
    return [
        Table("liability", f"Outstanding liability at the end of {end.isoformat()}", LIABILITY_COLUMNS, liability),
        Table("daily_snapshot", "Daily snapshots (day x channel x currency)", DAILY_COLUMNS, daily),
        Table("pool_daily", "Pool per nominal, per day", POOL_COLUMNS, pool),
        Table("pool_level", "Pool levels now (as far as the stream tells them)", LEVEL_COLUMNS, levels),
        Table("anomalies", "Anomalies", ANOMALY_COLUMNS, anomalies),
    ]


# ---- charts -----------------------------------------------------------------------------------

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def charts(tables: dict[str, Table], low_water_mark: int) -> list[tuple[str, str]]:
    """(title, data URI) of each chart. Floats only here, for drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    daily = [dict(zip(DAILY_COLUMNS, r)) for r in tables["daily_snapshot"].rows]
    money_fields = [c for c in DAILY_COLUMNS if c.endswith("_amount")] + ["liability"]
    series = sorted({(r["channel"], r["currency"]) for r in daily
                     if any(r[f] for f in money_fields)})  # a channel with nothing to draw stays out
    out = []

    def by_day(key, field):
        rows = [r for r in daily if (r["channel"], r["currency"]) == key]
        return [r["day"] for r in rows], [float(r[field]) for r in rows]

    fig, ax = plt.subplots(figsize=(9, 3.6))
    for key in series:
        days, values = by_day(key, "liability")
        ax.plot(days, values, marker="o", label=f"{key[0]} {key[1]}")
    ax.set_title("Outstanding liability at the end of each day")
    ax.set_ylabel("amount")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.autofmt_xdate()
    out.append(("Liability over time", _png(fig)))

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=False)
    for ax, (title, fields) in zip(axes, (("Sold", ("sold_amount",)), ("Redeemed", ("redeemed_amount",)),
                                           ("Refunded", ("refunded_buyer_amount", "refunded_cert_amount")))):
        for key in series:
            rows = [r for r in daily if (r["channel"], r["currency"]) == key]
            ax.plot([r["day"] for r in rows], [sum(float(r[f]) for f in fields) for r in rows], marker="o",
                    label=f"{key[0]} {key[1]}")
        ax.set_title(f"{title} per channel per day")
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    if series:
        axes[0].legend(fontsize=7)
    out.append(("Sales, redemptions and refunds per channel per day", _png(fig)))

    fig, ax = plt.subplots(figsize=(9, 3.2))
    width = 0.8 / max(len(series), 1)
    days = sorted({r["day"] for r in daily})
    index = {d: i for i, d in enumerate(days)}
    for n, key in enumerate(series):
        rows = [r for r in daily if (r["channel"], r["currency"]) == key]
        ax.bar([index[r["day"]] + n * width for r in rows], [float(r["breakage_amount"]) for r in rows], width,
               label=f"{key[0]} {key[1]}")
    ax.set_xticks(range(len(days)), [d.isoformat() for d in days], rotation=30, fontsize=7)
    ax.set_title("Breakage (balances of expired certificates)")
    ax.grid(alpha=0.3, axis="y")
    if series:
        ax.legend(fontsize=8)
    out.append(("Breakage", _png(fig)))

    pool = [dict(zip(POOL_COLUMNS, r)) for r in tables["pool_daily"].rows]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for key in sorted({(r["currency"], r["nominal"]) for r in pool}):
        rows = [r for r in pool if (r["currency"], r["nominal"]) == key and r["level_end"] is not None]
        if rows:
            ax.plot([r["day"] for r in rows], [r["level_end"] for r in rows], marker="o", label=f"{key[1]} {key[0]}")
    ax.axhline(low_water_mark, color="red", linestyle="--", label=f"low-water mark ({low_water_mark})")
    ax.set_title("Pool level per nominal against the low-water mark")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    out.append(("Pool level vs the low-water mark", _png(fig)))
    return out


# ---- the page -----------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.4em 0 1em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; } img { max-width: 100%; border: 1px solid #eee; }
.meta { color: #666; font-size: 0.85em; }
"""


def render_html(tables: list[Table], chart_list: list[tuple[str, str]], start: dt.date, end: dt.date,
                generated: dt.datetime) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Gift certificates: balances {start.isoformat()} to {end.isoformat()}</title>",
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Gift certificates: outstanding balances, {start.isoformat()} to {end.isoformat()}</h1>",
             f'<p class="meta">Generated {cell(generated)} from the BI mart. Money to the kopeck; '
             "every table is also a CSV beside this page.</p>"]
    for title, uri in chart_list:
        parts.append(f"<h2>{e(title)}</h2><img alt=\"{e(title)}\" src=\"{uri}\">")
    for t in tables:
        parts.append(f'<h2>{e(t.title)} <span class="meta">({e(t.name)}.csv)</span></h2>')
        parts.append(f'<table id="{e(t.name)}"><thead><tr>'
                     + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr></thead><tbody>")
        for row in t.rows:
            parts.append("<tr>" + "".join(
                f'<td data-col="{e(c)}"{" class=num" if isinstance(v, (int, Decimal)) and not isinstance(v, bool) else ""}>'
                f"{e(cell(v))}</td>" for c, v in zip(t.columns, row)) + "</tr>")
        if not t.rows:
            parts.append(f'<tr><td colspan="{len(t.columns)}">none</td></tr>')
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_csv(table: Table, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(table.columns)
        for row in table.rows:
            w.writerow([cell(v) for v in row])


def default_range(conn) -> tuple[dt.date, dt.date]:
    with conn.cursor() as cur:
        cur.execute("SELECT min(day), max(day) FROM bi.daily_snapshot")
        first, last = cur.fetchone()
    today = dt.datetime.now(dt.timezone.utc).date()
    return first or today, max(last or today, today)


def write_report(start: dt.date | None = None, end: dt.date | None = None, out_dir: Path | str | None = None,
                 conn=None) -> Path:
    """Write ``report.html`` and a CSV per table into ``out_dir``; returns the page's path."""
    from workers.bi.schema import connect, ensure_schema
    from config import LOCAL_DIR, get_settings

    own = conn is None
    conn = conn or connect(application_name="gcp-bi-report")
    try:
        ensure_schema(conn)
        first, last = default_range(conn)
        start, end = start or first, end or last
        tables = load_tables(conn, start, end)
        conn.rollback()
    finally:
        if own:
            conn.close()
    out = Path(out_dir) if out_dir else LOCAL_DIR / "report"
    out.mkdir(parents=True, exist_ok=True)
    for t in tables:
        write_csv(t, out / f"{t.name}.csv")
    chart_list = charts({t.name: t for t in tables}, get_settings().pool_low_water_mark)
    page = out / "report.html"
    page.write_text(render_html(tables, chart_list, start, end, dt.datetime.now(dt.timezone.utc)), encoding="utf-8")
    return page
