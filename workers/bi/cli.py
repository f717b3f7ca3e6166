"""The BI commands: ``report`` and ``reconcile`` (hooked into ``python app.py``; also
``python -m workers.bi.cli report|reconcile`` on their own)."""
from __future__ import annotations

import datetime as dt
import sys

import click


def _date(_ctx, _param, value):
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@click.group("bi")
def bi_cli():
    """BI mart: report and reconciliation."""
    import config

    config.load_stack_env()


@click.command()
@click.option("--from", "start", callback=_date, help="first day (YYYY-MM-DD; default: the mart's first)")
@click.option("--to", "end", callback=_date, help="last day (YYYY-MM-DD; default: today)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="directory for report.html and the CSVs (default: .local/report)")
@click.option("--with-test-currencies", "with_test", is_flag=True,
              help="also show ISO 4217 test currencies (XTS), left out by default")
def report(start, end, out_dir, with_test):
    """Write report.html (charts and tables of the mart) and a CSV of every table beside it."""
    import config
    from workers.bi.report import write_report

    config.load_stack_env()
    if start and end and start > end:
        raise click.BadParameter("--from is after --to")
    page = write_report(start, end, out_dir, with_test=with_test)
    click.echo(str(page.resolve()))


@click.command()
@click.option("--date", "date", callback=_date, help="compare that day's flows (default: everything, and "
                                                       "the current balances)")
@click.option("--currency", default=None, help="only this currency")
@click.option("--sources", is_flag=True, help="compare sales, redemptions and refunds per day, channel, currency "
                                               "and order with All_SalesOrder and All_Payments instead")
def reconcile(date, currency, sources):
    """Compare the mart with the service's ledger and certificates, and with the orders and
    payments it has seen; print every difference to the kopeck; exit 1 if there is any."""
    import config
    from workers.bi.reconcile import reconcile as run

    config.load_stack_env()
    diffs = run(date, currency, sources=sources)
    for d in diffs:
        click.echo(str(d))
    if diffs:
        click.echo(f"{len(diffs)} difference(s)", err=True)
        sys.exit(1)
    click.echo("no differences")


bi_cli.add_command(report)
bi_cli.add_command(reconcile)

if __name__ == "__main__":
    bi_cli()
