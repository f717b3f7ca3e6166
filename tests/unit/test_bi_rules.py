"""The mart's pure rules: sequence checks, measures, closed-day booking, daily aggregation,
pool levels and the reconciliation's comparisons. No I/O."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

from workers.bi import rules
from workers.bi.reconcile import Difference, backed_sales, compare, paid_orders

D = Decimal
DAY = dt.date(2026, 12, 1)


def ev(etype, status, balance, seq=None, channel="ONLINE_STORE", code="C1", nominal="1000.00", **payload):
    body = {"code": code, "status": status, "nominal": nominal, "remainingBalance": balance, "currency": "RUB",
            "channel": "ONLINE_STORE", **payload}
    e = {"eventId": f"{code}-{etype}-{seq}", "eventType": etype, "occurredAt": "2026-12-01T10:00:00.000Z",
         "channel": channel, "status": status, "payload": body}
    if seq is not None:
        e["sequence"] = seq
    return e


def play(*events):
    state, out = None, []
    for e in events:
        a = rules.apply_event(state, e)
        if a.applied and a.state is not None:
            state = a.state
        out.append(a)
    return state, out


# ---- sequences ------------------------------------------------------------------------------

def test_check_sequence_in_order_gap_and_repeat():
    assert rules.check_sequence(0, 1) == (None, True)
    assert rules.check_sequence(3, 4) == (None, True)
    assert rules.check_sequence(3, 6) == (rules.SEQUENCE_GAP, True)
    assert rules.check_sequence(3, 3) == (rules.SEQUENCE_REPEAT, False)
    assert rules.check_sequence(3, 1) == (rules.SEQUENCE_REPEAT, False)
    assert rules.check_sequence(0, 2) == (rules.SEQUENCE_GAP, True)  # the first seen is not 1
    assert rules.check_sequence(5, None) == (None, True)


def test_a_gap_is_applied_with_the_payload_state_and_a_repeat_is_not_counted():
    state, out = play(ev("reserve", "RESERVED", "0.00", 1), ev("issue", "ISSUED", "1000.00", 2),
                      ev("redeem.partial", "PARTIALLY_REDEEMED", "700.00", 4, amount="300.00"),
                      ev("redeem.partial", "PARTIALLY_REDEEMED", "400.00", 4, amount="300.00"))
    assert [a.anomaly.kind if a.anomaly else None for a in out] == [None, None, "SEQUENCE_GAP", "SEQUENCE_REPEAT"]
    assert (out[2].anomaly.expected, out[2].anomaly.got) == (3, 4)
    assert out[2].applied and out[2].measures.redeemed_amount == D("300.00")
    assert not out[3].applied and out[3].measures == rules.Measures()
    assert (state.status, state.balance, state.last_sequence) == ("PARTIALLY_REDEEMED", D("700.00"), 4)


# ---- measures -------------------------------------------------------------------------------

def test_a_certificate_life_gives_each_figure_once_and_the_liability_follows_the_balance():
    state, out = play(
        ev("reserve", "RESERVED", "0.00", 1),
        ev("issue", "ISSUED", "1000.00", 2),
        ev("notification.requested", "ISSUED", "1000.00", 3),
        ev("redeem.partial", "PARTIALLY_REDEEMED", "400.00", 4, channel="POS", amount="600.00"),
        ev("refund", "PARTIALLY_REDEEMED", "500.00", 5, channel="POS", amount="100.00"),
        ev("lock", "LOCKED", "500.00", 6),
        ev("unlock", "PARTIALLY_REDEEMED", "500.00", 7),
        ev("expire", "EXPIRED", "500.00", 8, channel="SYSTEM"))
    m = [a.measures for a in out]
    assert (m[1].sold_count, m[1].sold_amount, m[1].liability_delta, m[1].balance_delta) == (
        1, D("1000.00"), D("1000.00"), D("1000.00"))
    assert m[2] == rules.Measures()
    assert (m[3].redeemed_count, m[3].redeemed_amount, m[3].liability_delta) == (1, D("600.00"), D("-600.00"))
    assert (m[4].refunded_cert_count, m[4].refunded_cert_amount, m[4].liability_delta) == (1, D("100.00"), D("100.00"))
    assert (m[5].locked_count, m[5].locked_delta, m[5].liability_delta) == (1, 1, D("0.00"))
    assert m[6].locked_delta == -1
    # expiry: the balance stays on the certificate (no ledger row) but leaves the liability as breakage
    assert (m[7].expired_count, m[7].breakage_amount, m[7].liability_delta, m[7].balance_delta) == (
        1, D("500.00"), D("-500.00"), D("0.00"))
    assert sum((x.liability_delta for x in m), D(0)) == D("0.00")
    assert state.channel == "ONLINE_STORE" and state.status == "EXPIRED"


def test_purchase_refund_is_counted_when_the_money_goes_back_and_a_cancellation_takes_the_balance():
    _, out = play(ev("reserve", "RESERVED", "0.00", 1), ev("issue", "ISSUED", "700.00", 2, nominal="700.00"),
                  ev("refund", "REFUND_PENDING", "700.00", 3, nominal="700.00", refundableAmount="700.00"),
                  ev("refund", "REFUNDED", "0.00", 4, nominal="700.00", amount="700.00"))
    pending, refunded = out[2].measures, out[3].measures
    assert pending.refunded_buyer_count == 0 and pending.liability_delta == 0  # still owed while pending
    assert (refunded.refunded_buyer_count, refunded.refunded_buyer_amount, refunded.liability_delta) == (
        1, D("700.00"), D("-700.00"))
    _, out = play(ev("reserve", "RESERVED", "0.00", 1, code="C2"), ev("issue", "ISSUED", "800.00", 2, code="C2"),
                  ev("lock", "LOCKED", "800.00", 3, code="C2"), ev("cancel", "CANCELLED", "800.00", 4, code="C2"))
    cancel = out[3].measures
    assert (cancel.cancelled_count, cancel.cancelled_amount, cancel.liability_delta, cancel.locked_delta) == (
        1, D("800.00"), D("-800.00"), -1)


def test_adjust_and_transfer_move_the_liability_by_their_balances():
    _, out = play(ev("reserve", "RESERVED", "0.00", 1), ev("issue", "ISSUED", "1000.00", 2),
                  ev("adjust", "PARTIALLY_REDEEMED", "900.00", 3, direction="DEBIT", amount="100.00"),
                  ev("transfer", "CANCELLED", "0.00", 4, toCode="C9", amount="900.00"))
    assert (out[2].measures.adjusted_amount, out[2].measures.liability_delta) == (D("-100.00"), D("-100.00"))
    assert out[3].measures.liability_delta == D("-900.00")
    _, target = play(ev("transfer", "ISSUED", "900.00", 1, code="C9", nominal="900.00", fromCode="C1",
                        amount="900.00", channel="POS"))
    assert target[0].measures.liability_delta == D("900.00") and target[0].measures.sold_count == 0


def test_events_without_a_certificate():
    blocked = {"eventId": "b", "eventType": "issue.blocked", "occurredAt": "2026-12-01T10:00:00Z",
               "channel": "POS", "status": "ISSUE_BLOCKED",
               "payload": {"orderId": "o", "lineId": "1", "nominal": "300.00", "currency": "RUB"}}
    a = rules.apply_event(None, blocked)
    assert a.applied and a.state is None and a.measures == rules.Measures(blocked_count=1)


# ---- days -----------------------------------------------------------------------------------

def test_book_date_keeps_open_days_and_moves_late_events_to_the_arrival_day():
    yesterday, today = DAY - dt.timedelta(days=1), DAY
    assert rules.book_date(yesterday, today, None) == yesterday
    assert rules.book_date(yesterday, today, yesterday - dt.timedelta(days=1)) == yesterday
    assert rules.book_date(yesterday, today, yesterday) == today            # closed: booked on arrival
    assert rules.book_date(yesterday - dt.timedelta(days=5), today, yesterday) == today
    # arriving "before" the first open day (a clock behind) still never lands on a closed day
    assert rules.book_date(yesterday, yesterday, yesterday) == today
    assert rules.book_date(today, today, yesterday) == today


def test_days_close_after_the_grace_period_and_only_once_caught_up():
    now = dt.datetime(2026, 12, 3, 0, 20, tzinfo=dt.timezone.utc)
    grace = dt.timedelta(minutes=10)
    first = dt.date(2026, 11, 30)
    assert rules.days_to_close(None, first, now, grace, True) == [first, DAY, dt.date(2026, 12, 2)]
    assert rules.days_to_close(DAY, first, now, grace, True) == [dt.date(2026, 12, 2)]
    assert rules.days_to_close(None, first, now, grace, False) == []
    early = dt.datetime(2026, 12, 3, 0, 5, tzinfo=dt.timezone.utc)  # 2 December is still in its grace period
    assert rules.days_to_close(DAY, first, early, grace, True) == []
    assert rules.days_to_close(None, None, now, grace, True) == []


def test_fold_books_flows_on_the_event_channel_and_stocks_on_the_selling_channel():
    rows = {}
    _, out = play(ev("reserve", "RESERVED", "0.00", 1), ev("issue", "ISSUED", "1000.00", 2),
                  ev("redeem.full", "REDEEMED", "0.00", 3, channel="POS", amount="1000.00"))
    for e, a in zip(("ONLINE_STORE", "ONLINE_STORE", "POS"), out):
        rules.fold(rows, DAY, e, "ONLINE_STORE", "RUB", a.measures)
    online, pos = rows[(DAY, "ONLINE_STORE", "RUB")], rows[(DAY, "POS", "RUB")]
    assert (online.flows["sold_count"], online.flows["sold_amount"], online.flows["redeemed_amount"]) == (
        1, D("1000.00"), D(0))
    assert pos.flows["redeemed_amount"] == D("1000.00") and pos.flows["redeemed_count"] == 1
    assert online.liability_change == D("0.00") and pos.liability_change == D(0)  # sold then spent: nothing owed


def test_roll_carries_the_stocks_from_the_last_closed_day():
    changes = [(DAY + dt.timedelta(days=1), D("-50.00"), -1), (DAY, D("200.00"), 1)]
    assert rules.roll(changes, (D("1000.00"), 2)) == [(DAY, D("1200.00"), 3),
                                                      (DAY + dt.timedelta(days=1), D("1150.00"), 2)]


# ---- pool -----------------------------------------------------------------------------------

def test_pool_levels_are_taken_as_told_by_segment_never_counted():
    def ev(etype, kind, nominal, available, at, occurred="2026-12-07T10:00:00.000Z"):
        return {"eventType": etype, "occurredAt": occurred,
                "payload": {"currency": "RUB", "nominal": "250.00",
                            "pool": {"kind": kind, "currency": "RUB", "nominal": nominal, "available": available,
                                     "countedAt": at}}}
    reserve = ev("reserve", "ELECTRONIC", None, 49, "2026-12-07T10:00:00.000200Z")
    physical = ev("release", "PHYSICAL", "500.00", 7, "2026-12-07T10:00:00.000100Z")
    # the open-value code reserved for 250.00 is the OPEN segment, and the kind keeps them apart
    assert rules.pool_key(reserve) == ("RUB", "ELECTRONIC", rules.OPEN)
    assert rules.pool_key(physical) == ("RUB", "PHYSICAL", "500.00")
    assert rules.pool_key({"eventType": "issue", "payload": {}}) is None
    assert rules.pool_key({"eventType": "alert", "payload": {"code": "POOL_LOW_WATER"}}) is None
    # a level is the one told, and of two the one counted last wins, in whatever order they come
    earlier = rules.pool_level_of(ev("reserve", "ELECTRONIC", None, 50, "2026-12-07T10:00:00.000100Z"))
    later = rules.pool_level_of(reserve)
    assert later[0] == 49
    assert rules.newer_level(later, earlier) == later and rules.newer_level(earlier, later) == later
    assert rules.newer_level(None, earlier) == earlier and rules.newer_level(later, None) == later
    # an event of before revision 3 tells no level
    assert rules.pool_level_of({"eventType": "reserve", "occurredAt": "x", "payload": {"nominal": "1.00"}}) is None
    assert rules.pool_flows({"eventType": "issue.blocked"}) == {"reserved": 0, "released": 0, "blocked": 1}


# ---- reconciliation ---------------------------------------------------------------------------

def test_compare_lists_every_difference_to_the_kopeck():
    diffs = compare("ledger.sold", {("POS", "RUB"): D("1500.00"), ("ONLINE_STORE", "RUB"): D("10.00")},
                    {("POS", "RUB"): D("1499.99"), ("ONLINE_STORE", "RUB"): D("10.00"), ("POS", "EUR"): D("5.00")})
    assert diffs == [Difference("ledger.sold", "POS", "EUR", 0, D("5.00")),
                     Difference("ledger.sold", "POS", "RUB", D("1500.00"), D("1499.99"))]
    assert str(diffs[1]) == "ledger.sold POS RUB: mart 1500.00, source 1499.99, difference 0.01"
    assert compare("x", {("POS", "RUB"): D("1.00")}, {("POS", "RUB"): D("1.00")}) == []


def test_sales_are_backed_by_paid_orders_seen():
    orders = [("o1", "ORDER_CREATED", "POS", "RUB", D("1500.00"),
               [{"type": "GIFT_CERTIFICATE", "amount": "1000.00"}, {"type": "PRODUCT", "amount": "500.00"}]),
              ("o2", "ORDER_CREATED", "POS", "RUB", D("700.00"), [{"type": "GIFT_CERTIFICATE", "amount": "700.00"}])]
    payments = [("o1", "PAYMENT_CAPTURED", "RUB", D("1500.00")), ("o2", "PAYMENT_CAPTURED", "RUB", D("600.00")),
                ("o2", "PAYMENT_CAPTURED", "EUR", D("100.00"))]  # another currency does not count
    paid = paid_orders(orders, payments)
    assert set(paid) == {"o1"}
    issues = [("POS", "RUB", "o1", D("1000.00")), ("POS", "RUB", "o1", D("1000.00")), ("POS", "RUB", "o2", D("700.00"))]
    assert backed_sales(issues, paid) == {("POS", "RUB"): D("1000.00")}  # one line backs one issue
