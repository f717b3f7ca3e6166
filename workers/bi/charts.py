"""The report's charts, drawn by matplotlib as inline PNGs that read well with one day of data
and with three years:

- up to :data:`BAR_DAYS` days, bars per day (a single day is a bar, never a lone dot);
- up to :data:`DAILY_DAYS` days, lines per day with date ticks matplotlib chooses to fit;
- beyond, one point per month (flows summed, stocks at the month's end).

Legends sit below the axes, never over the data. A chart with nothing to show is a sentence
instead of empty axes. Each chart carries its axis ranges and its data's ranges as ``data-``
attributes (in matplotlib's units: dates as day numbers), so a test can check every point is
inside its axes without reading pixels.
"""
from __future__ import annotations

import base64
import datetime as dt
import io
from dataclasses import dataclass, field

from workers.bi import rules
from workers.bi.figures import DAILY_COLUMNS

#: Up to this many days: bars.
BAR_DAYS = 14
#: Up to this many days: a point per day; beyond, a point per month.
DAILY_DAYS = 366


@dataclass
class Chart:
    """One chart: its title, the PNG (None: nothing to show, ``empty`` says why), and the
    ranges of its axes and of its data."""

    title: str
    png: str | None = None
    empty: str = ""
    mode: str = ""
    ranges: dict = field(default_factory=dict)


def mode_for(days: int) -> str:
    return "bars" if days <= BAR_DAYS else "daily" if days <= DAILY_DAYS else "monthly"


def bucket(day: dt.date, mode: str) -> dt.date:
    return day.replace(day=1) if mode == "monthly" else day


def series_by_period(points: dict, mode: str, stock: bool) -> dict:
    """{series: {day: value}} to {series: {period: value}}: flows summed over a month, stocks
    taken at the month's last day seen."""
    out: dict = {}
    for name, by_day in points.items():
        periods: dict = {}
        for day in sorted(by_day):
            key = bucket(day, mode)
            periods[key] = by_day[day] if stock else periods.get(key, 0.0) + by_day[day]
        out[name] = periods
    return out


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _ranges(ax) -> dict:
    """The axis limits and the extent of what is drawn (lines and bars; reference lines such
    as the low-water mark, ``gid="ref"``, are left out)."""
    xs, ys = [], []
    for line in ax.get_lines():
        if line.get_gid() == "ref":
            continue
        xy = line.get_xydata()
        xs += [float(x) for x, _y in xy]
        ys += [float(y) for _x, y in xy]
    for patch in ax.patches:
        x, y, w, h = patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height()
        xs += [x, x + w]
        ys += [y, y + h]
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    return {"x-min": x0, "x-max": x1, "y-min": y0, "y-max": y1, "data-x-min": min(xs), "data-x-max": max(xs),
            "data-y-min": min(ys), "data-y-max": max(ys), "points": len(xs)}


def draw(title: str, panels: list[tuple[str, dict]], mode: str, stock: bool, empty: str,
         mark: int | None = None, ylabel: str = "amount") -> Chart:
    """A chart of one or more panels side by side, each (subtitle, {series label: {day: value}}).
    A flow whose every value is 0 is left out (a stock of 0 is drawn: an empty pool is a level);
    with nothing left, the chart is ``empty``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = [(sub, {k: v for k, v in series_by_period(points, mode, stock).items() if v and (stock or any(v.values()))})
              for sub, points in panels]
    if not any(points for _sub, points in panels):
        return Chart(title, empty=empty, mode=mode)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels) if len(panels) > 1 else 10, 3.4),
                             squeeze=False)
    ranges = {}
    for ax, (sub, points) in zip(axes[0], panels):
        if not points:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{sub}: nothing in this period", ha="center", va="center", transform=ax.transAxes)
            continue
        if mode == "bars":
            days = sorted({d for v in points.values() for d in v})
            width = 0.8 / len(points)
            for n, (label, values) in enumerate(sorted(points.items())):
                bars = ax.bar([i - 0.4 + width * (n + 0.5) for i, d in enumerate(days) if d in values],
                              [values[d] for d in days if d in values], width, label=label)
                ax.bar_label(bars, fmt="{:,.0f}", fontsize=7, padding=2)  # a 0 is said, not an empty gap
            ax.set_xticks(range(len(days)), [d.strftime("%d %b %Y") for d in days])
            ax.set_xlim(-0.6, len(days) - 0.4)
        else:
            for label, values in sorted(points.items()):
                days = sorted(values)
                ax.plot(days, [values[d] for d in days], label=label, linewidth=1.6,
                        marker="o" if len(days) <= 40 else None, markersize=3)
            locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
            ax.margins(x=0.02)
        if mark is not None:
            ax.axhline(mark, color="red", linestyle="--", linewidth=1, label=f"low-water mark ({mark})", gid="ref")
        ax.set_ylim(bottom=min(0, ax.get_ylim()[0]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
        ax.set_title(sub, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
        ranges[sub] = _ranges(ax)
    fig.tight_layout()
    return Chart(title, _png(fig), mode=mode, ranges=ranges)


# ---- the report's four charts ---------------------------------------------------------------

def report_charts(data) -> list[Chart]:
    """The report's charts, from its :class:`workers.bi.report.Data`."""
    mode = mode_for((data.end - data.start).days + 1)
    liability = {}
    for (currency, channel), days in data.rolls_daily.items():
        series = liability.setdefault(currency, {})
        for day, roll in days.items():
            series[day] = series.get(day, 0.0) + float(roll.closing)
    sold, redeemed, breakage = {}, {}, {}
    for (currency, channel), days in data.rolls_daily.items():
        series = breakage.setdefault(f"{channel} {currency}", {})
        for day, roll in days.items():
            series[day] = float(roll.shown("expired"))
    for r in data.daily:
        label = f"{r[1]} {r[2]}"
        for target, column in ((sold, "sold_amount"), (redeemed, "redeemed_amount")):
            series = target.setdefault(label, {})
            series[r[0]] = series.get(r[0], 0.0) + float(r[DAILY_COLUMNS.index(column)])
    pool = {}
    for day, c, k, n, _res, _rel, _blk, level, _closed in data.pool_history:
        if level is not None:
            pool.setdefault(f"{c} {k} {'open' if n == rules.OPEN else n}", {})[day] = float(level)
    return [
        draw("Outstanding liability at the end of each " + ("month" if mode == "monthly" else "day"),
                      [("Liability per currency", liability)], mode, True,
                      "No certificate was outstanding in this period."),
        draw("Sold and redeemed per channel" + (" per month" if mode == "monthly" else " per day"),
                      [("Sold", sold), ("Redeemed", redeemed)], mode, False,
                      "Nothing was sold or redeemed in this period."),
        draw("Breakage: balances of expired certificates", [("Breakage per selling channel", breakage)], mode, False,
                      "No certificate expired with a balance in this period, so there is no breakage to show."),
        draw("Pool level per segment against the low-water mark", [("Available", pool)], mode, True,
                      "No reservation, release or blocked issue in this period told a pool level.",
                      mark=data.mark, ylabel="certificates"),
    ]
