"""``reconcile --sources`` against real Kafka and PostgreSQL: the mart's sales and redemptions
per day, channel, currency and order against All_SalesOrder and All_Payments, with one input
deliberately missing and one deliberately doubled; and the roll-forward check of every closed
day, which a kopeck changed in a closed snapshot breaks."""
from __future__ import annotations

import datetime as dt
import json
import uuid

from click.testing import CliRunner

from tests.e2e import flow
from tests.integration.test_bi_consumer import Cert, mart  # noqa: F401  (the fixture)

WHEN = "2026-11-22T10:05:00.000Z"


def _send_input(mart, kind: str, msg: dict) -> None:  # noqa: F811
    from config import get_settings

    topic = get_settings().topic_sales_order if kind == "order" else get_settings().topic_payments
    mart.send_raw(topic, msg["orderId"], json.dumps(msg).encode())


def _sale(mart, cur: str, nominal: str, channel: str, with_issue: bool = True) -> tuple[Cert, int]:  # noqa: F811
    cert = Cert(nominal, channel, currency=cur)
    _send_input(mart, "order", flow.order(cert.order_id, [flow.gc_line(cert.code, nominal)], nominal,
                                          channel=channel, currency=cur))
    _send_input(mart, "payment", flow.payment(cert.order_id, nominal, channel=channel, currency=cur, minute=1))
    events = [cert.event("reserve", "RESERVED", occurred_at=WHEN)]
    if with_issue:
        events.append(cert.event("issue", "ISSUED", nominal, occurred_at=WHEN))
    for e in events:
        mart.send(e)
    return cert, 2 + len(events)


def test_sources_list_a_missing_and_a_doubled_input_with_their_orders_and_exit_1(mart):  # noqa: F811
    from workers.bi.cli import bi_cli

    cur = "XSR"
    # given two sales, both paid; the stream lacks the second one's issue (a missing input)
    a, n_a = _sale(mart, cur, "1000.00", "ONLINE_STORE")
    b, n_b = _sale(mart, cur, "500.00", "POS", with_issue=False)
    # and a redemption of 300.00 of a, whose capture the payments topic carries twice (doubled)
    redemption = "order-r-" + uuid.uuid4().hex[:6]
    _send_input(mart, "order", flow.order(redemption, [flow.product_line("300.00", "1")], "300.00", channel="POS",
                                          currency=cur, tenders=[flow.gc_tender(a.code, "300.00")]))
    for _ in range(2):
        _send_input(mart, "payment", flow.payment(redemption, "300.00", channel="POS", currency=cur, minute=2,
                                                  method="GIFT_CERTIFICATE",
                                                  gc={"code": a.code, "operation": "REDEMPTION", "amount": "300.00"}))
    mart.send(a.event("redeem.partial", "PARTIALLY_REDEEMED", "700.00", channel="POS", occurred_at=WHEN,
                      amount="300.00", orderId=redemption))
    mart.drain(mart.consumer(), n_a + n_b + 4)
    # when reconcile --sources runs
    result = CliRunner().invoke(bi_cli, ["reconcile", "--sources", "--currency", cur])
    # then it lists both differences, each with its day and order, to the kopeck, and exits 1
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("sources.")]
    assert lines == [
        f"sources.sold POS {cur} (2026-11-22 order {b.order_id}): mart 0.00, source 500.00, difference -500.00",
        f"sources.redeemed POS {cur} (2026-11-22 order {redemption}): mart 300.00, source 600.00, "
        "difference -300.00"]
    # and the sale that is on both sides is not listed; another day has no difference
    assert a.order_id not in result.output
    clean = CliRunner().invoke(bi_cli, ["reconcile", "--sources", "--currency", cur, "--date", "2026-11-21"])
    assert clean.exit_code == 0 and "no differences" in clean.output


def test_the_roll_forward_balances_every_closed_day_and_a_changed_kopeck_is_found(mart):  # noqa: F811
    from workers.bi.sources import check_roll_forward

    cur = "XRF"
    # given sales, a redemption, a refund onto the certificate, an expiry and a cancellation
    # over two past days, and those days closed
    a, b, c = Cert("1000.00", "POS", currency=cur), Cert("500.00", "ONLINE_STORE", currency=cur), \
        Cert("300.00", "POS", currency=cur)
    day1, day2 = "2026-11-20T10:00:00.000Z", "2026-11-21T10:00:00.000Z"
    events = [a.event("reserve", "RESERVED", occurred_at=day1), a.event("issue", "ISSUED", "1000.00", occurred_at=day1),
              b.event("reserve", "RESERVED", occurred_at=day1), b.event("issue", "ISSUED", "500.00", occurred_at=day1),
              c.event("reserve", "RESERVED", occurred_at=day1), c.event("issue", "ISSUED", "300.00", occurred_at=day1),
              a.event("redeem.partial", "PARTIALLY_REDEEMED", "600.00", channel="ONLINE_STORE", occurred_at=day2,
                      amount="400.00"),
              a.event("refund", "PARTIALLY_REDEEMED", "700.00", channel="ONLINE_STORE", occurred_at=day2,
                      amount="100.00"),
              b.event("expire", "EXPIRED", "500.00", channel="SYSTEM", occurred_at=day2),
              c.event("cancel", "CANCELLED", "0.00", channel="SYSTEM", occurred_at=day2)]
    for e in events:
        mart.send(e)
    consumer = mart.consumer()
    mart.drain(consumer, len(events))
    consumer.mart.close_due_days(dt.datetime(2026, 11, 22, 12, tzinfo=dt.timezone.utc), caught_up=True)
    # then every closed day balances, per selling channel
    assert [d for d in check_roll_forward(mart.db, cur)] == []
    rows = mart.rows("SELECT day, channel, liability FROM bi.daily_snapshot WHERE currency = %s AND closed"
                     " ORDER BY 1, 2", cur)
    assert [(str(d), ch, str(v)) for d, ch, v in rows] == [
        ("2026-11-20", "ONLINE_STORE", "500.00"), ("2026-11-20", "POS", "1300.00"),
        ("2026-11-21", "ONLINE_STORE", "0.00"), ("2026-11-21", "POS", "700.00"), ("2026-11-21", "SYSTEM", "0.00")]
    # when a kopeck of a closed day's liability is changed behind the mart's back
    mart.rows("UPDATE bi.daily_snapshot SET liability = liability + 0.01 WHERE currency = %s AND channel = 'POS'"
              " AND day = '2026-11-20' RETURNING 1", cur)
    # then the check finds it on that day and on the next (whose opening no longer follows)
    found = [(d.check, d.channel, d.detail[:10], str(d.delta)) for d in check_roll_forward(mart.db, cur)]
    assert found == [("rollforward.closing", "POS", "2026-11-20", "-0.01"),
                     ("rollforward.closing", "POS", "2026-11-21", "0.01")]


def test_an_api_capture_is_backed_by_the_order_that_names_its_authorization(mart):  # noqa: F811
    from workers.bi.cli import bi_cli

    cur = "XAC"
    # given a sale, and two captures through the API of 250.00 each (authorization.captured)
    a, n_a = _sale(mart, cur, "1000.00", "ONLINE_STORE")
    confirmed, unconfirmed = ("order-c-" + uuid.uuid4().hex[:6] for _ in range(2))
    mart.send(a.event("authorization.captured", "PARTIALLY_REDEEMED", "750.00", channel="ONLINE_STORE",
                      occurred_at=WHEN, amount="250.00", orderId=confirmed))
    mart.send(a.event("authorization.captured", "PARTIALLY_REDEEMED", "500.00", channel="ONLINE_STORE",
                      occurred_at=WHEN, amount="250.00", orderId=unconfirmed))
    # and the first order names its authorization in a tender (contract §4 Redeem, example 05);
    # the second order never arrives
    _send_input(mart, "order", flow.order(confirmed, [flow.product_line("250.00", "1")], "250.00",
                                          currency=cur, tenders=[flow.gc_tender(a.code, "250.00", "auth-1")]))
    mart.drain(mart.consumer(), n_a + 3)
    # when reconcile --sources runs
    result = CliRunner().invoke(bi_cli, ["reconcile", "--sources", "--currency", cur])
    # then the confirmed capture is backed, and only the unconfirmed one is listed
    lines = [line for line in result.output.splitlines() if line.startswith("sources.")]
    assert lines == [f"sources.redeemed ONLINE_STORE {cur} (2026-11-22 order {unconfirmed}): mart 250.00, "
                     "source 0.00, difference 250.00"], result.output
    assert result.exit_code == 1
