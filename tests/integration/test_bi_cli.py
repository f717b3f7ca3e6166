"""``report`` and ``reconcile`` as the operator runs them (click), against a real mart and the
service's real database."""
from __future__ import annotations

import datetime as dt
from click.testing import CliRunner

from tests.integration.test_bi_consumer import Cert, mart  # noqa: F401  (the fixture)


def test_reconcile_prints_every_difference_to_the_kopeck_and_exits_1(mart):  # noqa: F811
    from workers.bi.cli import bi_cli

    # given the mart saw a sale and a redemption the service's ledger does not have
    cert = Cert("1500.50", "POS", currency="XRC")
    for e in cert.sold() + [cert.event("redeem.partial", "PARTIALLY_REDEEMED", "1000.25", amount="500.25")]:
        mart.send(e)
    mart.drain(mart.consumer(), 3)
    # when reconcile runs for that currency
    result = CliRunner().invoke(bi_cli, ["reconcile", "--currency", "XRC"])
    # then it prints each difference to the kopeck and exits 1
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "ledger.sold POS XRC: mart 1500.50, source 0.00, difference 1500.50" in lines
    assert "ledger.redeemed POS XRC: mart 500.25, source 0.00, difference 500.25" in lines
    assert any(l.startswith("certificates.liability POS XRC: mart 1000.25") for l in lines)
    assert any(l.startswith("orders.sold POS XRC (stream vs paid orders seen): mart 1500.50") for l in lines)
    # and with a date of no activity, the flows agree
    result = CliRunner().invoke(bi_cli, ["reconcile", "--currency", "XRC", "--date", "2020-01-01"])
    assert result.exit_code == 0 and "no differences" in result.output


def test_report_writes_the_page_and_a_csv_of_every_table(mart, tmp_path):  # noqa: F811
    from workers.bi.cli import bi_cli

    cert = Cert("1000.00", "ONLINE_STORE", currency="XRP")
    for e in cert.sold():
        mart.send(e)
    mart.drain(mart.consumer(), 2)
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    result = CliRunner().invoke(bi_cli, ["report", "--from", today, "--to", today, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = tmp_path / "report.html"
    assert result.output.strip() == str(page.resolve())
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == [
        "aging.csv", "anomalies.csv", "daily_snapshot.csv", "pool_daily.csv", "pool_levels.csv", "rollforward.csv"]
    daily = (tmp_path / "daily_snapshot.csv").read_text().splitlines()
    assert any(l.startswith(f"{today},ONLINE_STORE,XRP,1,1000.00,") for l in daily)
    assert "1,000.00" in page.read_text()
    assert any(l.startswith(f"{today},XRP,ONLINE_STORE,0.00,1000.00,") for l in
               (tmp_path / "rollforward.csv").read_text().splitlines())
    bad = CliRunner().invoke(bi_cli, ["report", "--from", "yesterday"])
    assert bad.exit_code == 2 and "is not a date" in bad.output
