"""The correlation rules, pure: decisions from an order's state, no I/O."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from models.domain import correlation
from models.domain.order import RefundRequest, Tender

D = Decimal
T = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)


def order(lines=(), tenders=(), total="2000.00", cancelled=None, refunds=()):
    return correlation.Order("o-1", "ONLINE_STORE", "RUB", D(total), tuple(lines), tuple(tenders),
                      cancelled, tuple(refunds))


GC_LINE = correlation.Line("1", "GIFT_CERTIFICATE", D("1500.00"), "C0DE000001")
MUG = correlation.Line("2", "PRODUCT", D("500.00"))


def pay(amount, event_type=correlation.CAPTURED, pid="p1", minute=0, seq=0, **gc):
    return correlation.Payment(f"e-{pid}-{event_type}-{minute}", pid, event_type, D(amount), gc.pop("currency", "RUB"),
                        T + timedelta(minutes=minute), seq, **gc)


def keys(decisions):
    return [d.key for d in decisions]


def test_nothing_is_decided_before_the_order_is_known():
    # given only a payment, when deciding, then nothing happens yet
    assert correlation.decide(None, [pay("2000.00")], {}) == []


def test_issue_once_captured_payments_reach_the_total():
    # given an order with a certificate line and a mug
    o = order([GC_LINE, MUG])
    # when only part is captured, then nothing is issued
    assert correlation.decide(o, [pay("1000.00")], {}) == []
    # when a second capture completes the total, then the line is issued
    decisions = correlation.decide(o, [pay("1000.00"), pay("1000.00", pid="p2")], {})
    assert keys(decisions) == ["issue:1"]
    assert decisions[0].params == {"line_id": "1", "code": "C0DE000001", "nominal": D("1500.00")}
    # and once done, it is not decided again
    assert correlation.decide(o, [pay("2000.00")], {"issue:1": "APPLIED"}) == []


def test_a_repeated_payment_id_counts_once_and_other_currencies_not_at_all():
    o = order([GC_LINE, MUG])
    # given the same payment reported twice under two event ids, and one in another currency
    payments = [pay("1000.00"), pay("1000.00", minute=1), pay("1000.00", pid="p9", currency="USD")]
    # then the order is not paid in full
    assert not correlation.paid_in_full(o, payments)
    # and the payment in another currency is said once, as a CURRENCY_MISMATCH error
    (said,) = correlation.decide(o, payments, {})
    assert said.key == "currency_mismatch:p9" and said.action == "currency_error"
    assert "1000.00 USD" in said.params["message"] and "in RUB" in said.params["message"]
    assert correlation.decide(o, payments, {"currency_mismatch:p9": "APPLIED"}) == []


def test_cancelled_order_releases_unless_a_payment_was_seen():
    o = order([GC_LINE], total="1500.00", cancelled="e-cancel")
    # when cancelled without any payment, then the reservation is released
    assert keys(correlation.decide(o, [], {})) == ["release"]
    # when a payment was authorized before, then support is alerted and nothing is released
    d = correlation.decide(o, [pay("1500.00", correlation.AUTHORIZED)], {})
    assert keys(d) == ["alert:cancelled-after-payment"]
    # when paid in full after the cancellation, then nothing is issued and support is alerted
    d = correlation.decide(o, [pay("1500.00")], {"release": "APPLIED"})
    assert keys(d) == ["alert:cancelled-after-payment", "alert:paid-after-cancel"]
    assert not any(k.startswith("issue") for k in keys(d))


def test_redeem_needs_the_tender_and_the_redemption_capture():
    tender = Tender("GIFT_CERTIFICATE", D("600.00"), "C0DE000001")
    o = order([MUG], [tender, Tender("CARD", D("300.00"))], total="900.00")
    redemption = pay("600.00", pid="p2", gc_code="C0DE000001", gc_operation="REDEMPTION", gc_amount=D("600.00"))
    # when only the card capture is there, then nothing is debited
    assert correlation.decide(o, [pay("300.00")], {}) == []
    # when the redemption capture is there, then the certificate is debited once, caused by it
    d = correlation.decide(o, [pay("300.00"), redemption], {})
    assert keys(d) == ["redeem:C0DE000001:p2"]
    assert d[0].cause == redemption.event_id and d[0].params["amount"] == D("600.00")
    # and a capture for a certificate the order did not tender is not ours to debit
    other = pay("10.00", pid="p3", gc_code="OTHER00001", gc_operation="REDEMPTION")
    assert keys(correlation.decide(o, [other], {})) == []


def test_a_tender_naming_an_api_authorization_is_confirmed_never_debited():
    tender = Tender("GIFT_CERTIFICATE", D("250.00"), "C0DE000001", "auth-1")
    o = order([MUG], [tender], total="250.00")
    redemption = pay("250.00", pid="p2", gc_code="C0DE000001", gc_operation="REDEMPTION")
    # then the authorization is confirmed and the capture event debits nothing more
    assert keys(correlation.decide(o, [redemption], {})) == ["confirm:auth-1"]


def test_capture_mismatch_explains_itself():
    hold = {"code": "C0DE000001", "status": "CAPTURED", "captured": D("200.00")}
    assert correlation.capture_mismatch("C0DE000001", D("200.00"), "auth-1", hold) is None
    assert (correlation.capture_mismatch("C0DE000001", D("250.00"), "auth-1", hold)
            == "tender 250.00 differs from captured authorization auth-1 (200.00)")
    assert "unknown authorization" in correlation.capture_mismatch("C0DE000001", D("1.00"), "auth-x", None)
    assert "is on C0DE000001" in correlation.capture_mismatch("OTHER00001", D("200.00"), "auth-1", hold)
    assert "ACTIVE" in correlation.capture_mismatch("C0DE000001", D("200.00"), "auth-1", {**hold, "status": "ACTIVE"})


def refund_of(line_id="1", amount="1500.00", minute=5):
    return RefundRequest(f"e-refund-{minute}", T + timedelta(minutes=minute), ((line_id, D(amount)),))


def test_purchase_refund_waits_for_the_issue_then_asks_then_confirms():
    o = order([GC_LINE, MUG], refunds=[refund_of()])
    paid = pay("2000.00")
    refunded = pay("1500.00", correlation.REFUNDED, pid="p1r", minute=9, gc_code="C0DE000001", gc_operation="PURCHASE")
    # when the line was not sold yet, then only the issue is decided
    assert keys(correlation.decide(o, [paid, refunded], {})) == ["issue:1"]
    # when it was, then the refund is requested and confirmed, in that order
    d = correlation.decide(o, [paid, refunded], {"issue:1": "APPLIED"})
    assert keys(d) == ["refund_request:1", "refund_confirm:1"]
    assert d[0].params["amount"] == D("1500.00") and d[1].cause == refunded.event_id


def test_refund_outcomes_follow_the_payments_time_and_a_late_needs_details_is_dropped():
    o = order([GC_LINE, MUG], refunds=[refund_of()])
    failed = pay("1500.00", correlation.REFUND_FAILED, pid="p1r", minute=7, gc_code="C0DE000001",
                 gc_operation="PURCHASE", requisites_required=True, reason="card expired")
    refunded = pay("1500.00", correlation.REFUNDED, pid="p1r", minute=9, gc_code="C0DE000001", gc_operation="PURCHASE")
    done = {"issue:1": "APPLIED"}
    # given both outcomes known, in either arrival order, then details come before the confirmation
    for payments in ([pay("2000.00"), failed, refunded], [pay("2000.00"), refunded, failed]):
        assert keys(correlation.decide(o, payments, done)) == ["refund_request:1", "refund_details:1", "refund_confirm:1"]
    # when the refund was already confirmed, then a needs-details arriving later changes nothing
    done = {"issue:1": "APPLIED", "refund_request:1": "APPLIED", "refund_confirm:1": "APPLIED"}
    assert correlation.decide(o, [pay("2000.00"), refunded, failed], done) == []
    # when the request was refused (a fully redeemed certificate), then nothing is confirmed
    done = {"issue:1": "APPLIED", "refund_request:1": "REFUSED"}
    assert correlation.decide(o, [pay("2000.00"), refunded], done) == []


def test_refund_to_certificate_needs_the_order_refund_and_comes_after_the_debit():
    tender = Tender("GIFT_CERTIFICATE", D("600.00"), "C0DE000001")
    redemption = pay("600.00", pid="p2", gc_code="C0DE000001", gc_operation="REDEMPTION")
    back = pay("200.00", correlation.REFUNDED, pid="p2r", minute=30, gc_code="C0DE000001", gc_operation="REFUND",
               gc_amount=D("200.00"))
    # when the order was not refunded, then the refund payment waits
    o = order([MUG], [tender], total="900.00")
    assert keys(correlation.decide(o, [redemption, back], {})) == ["redeem:C0DE000001:p2"]
    # when it was, then the debit comes first and the credit only once the debit is done
    o = order([MUG], [tender], total="900.00", refunds=[refund_of("1", "200.00")])
    assert keys(correlation.decide(o, [back, redemption], {})) == ["redeem:C0DE000001:p2"]
    d = correlation.decide(o, [back, redemption], {"redeem:C0DE000001:p2": "APPLIED"})
    assert keys(d) == ["refund_credit:C0DE000001:p2r"] and d[0].params["amount"] == D("200.00")


def test_payment_line_lookup_uses_the_certificate_actually_issued():
    o = order([GC_LINE, MUG], refunds=[refund_of()])
    refunded = pay("1500.00", correlation.REFUNDED, pid="p1r", gc_code="FRESH00001", gc_operation="PURCHASE")
    done = {"issue:1": "APPLIED", "refund_request:1": "APPLIED"}
    # when the lost reservation was replaced by FRESH00001, then Payments' code still finds the line
    assert keys(correlation.decide(o, [pay("2000.00"), refunded], done, {"1": "FRESH00001"})) == ["refund_confirm:1"]
    assert correlation.line_for_code(o, None, {}) == GC_LINE


# ---- any arrival order, any duplication: the same effects in the same order -----------------

STORY = ["created", "paid", "refunded", "failed", "payment_refunded", "created_dup", "paid_dup"]


def replay(arrivals):
    """Feed the story's messages in ``arrivals`` order, applying decisions as an actor would."""
    lines = (GC_LINE, MUG)
    have_order, refunds, payments, done, applied = False, [], [], {}, []
    for name in arrivals:
        if name.startswith("created"):
            have_order = True
        elif name == "refunded":
            have_order = True
            refunds = [refund_of()]
        elif name.startswith("paid"):
            payments.append(pay("2000.00", minute=1, seq=len(payments)))
        elif name == "failed":
            payments.append(pay("1500.00", correlation.REFUND_FAILED, pid="p1r", minute=7, seq=len(payments),
                                gc_code="C0DE000001", gc_operation="PURCHASE", requisites_required=True))
        elif name == "payment_refunded":
            payments.append(pay("1500.00", correlation.REFUNDED, pid="p1r", minute=9, seq=len(payments),
                                gc_code="C0DE000001", gc_operation="PURCHASE"))
        o = order(lines, refunds=refunds) if have_order else None
        for _ in range(8):
            decisions = correlation.decide(o, payments, done)
            if not decisions:
                break
            for d in decisions:
                done[d.key] = "APPLIED"
                applied.append(d.key)
    return applied


EXPECTED = ["issue:1", "refund_request:1", "refund_details:1", "refund_confirm:1"]


@settings(max_examples=300, deadline=None)
@given(st.permutations(STORY))
def test_any_arrival_order_gives_the_same_effects_and_the_same_end(arrivals):
    applied = replay(arrivals)
    # then the certificate always ends refunded, each effect applied at most once
    assert applied[-1] == "refund_confirm:1" and len(applied) == len(set(applied))
    assert applied[:2] == EXPECTED[:2]
    # and the very same effects in the same order whenever Payments' own two reports arrive in
    # their order (one key, one partition) or both before the order's refund
    if arrivals.index("failed") < arrivals.index("payment_refunded") or \
            max(arrivals.index("failed"), arrivals.index("payment_refunded")) < arrivals.index("refunded"):
        assert applied == EXPECTED


def test_the_story_delivered_in_reverse_gives_the_same_effects():
    assert replay(STORY) == replay(list(reversed(STORY))) == EXPECTED


def test_refund_onto_a_certificate_waits_for_the_order_that_tendered_it():
    back = pay("200.00", correlation.REFUNDED, pid="p2r", gc_code="C0DE000001", gc_operation="REFUND")
    redemption = pay("600.00", pid="p2", gc_code="C0DE000001", gc_operation="REDEMPTION")
    # given only the refund message of the order is known (its lines, no tenders yet)
    o = order([MUG], [], total="900.00", refunds=[refund_of("1", "200.00")])
    # then nothing is credited: the certificate may not be one this order was paid with
    assert correlation.decide(o, [redemption, back], {}) == []


def test_an_order_whose_certificate_lines_exceed_its_total_issues_nothing():
    # given an order of total 1.00 with one certificate line of 100000.00, and a 1.00 capture
    line = correlation.Line("1", "GIFT_CERTIFICATE", D("100000.00"), "C0DE000001")
    o = order([line], total="1.00")
    (said,) = correlation.decide(o, [pay("1.00")], {})
    # then nothing is issued, and one ORDER_TOTAL_MISMATCH alert names both sums
    assert said.key == "alert:order-total-mismatch" and said.action == "alert"
    assert said.params["alert"] == "ORDER_TOTAL_MISMATCH"
    assert said.params["details"] == {"linesTotal": "100000.00", "orderTotal": "1.00", "currency": "RUB"}
    assert "100000.00" in said.params["message"] and "1.00" in said.params["message"]
    # and however much more is captured, nothing is issued and the alert is not said again
    assert correlation.decide(o, [pay("1.00"), pay("200000.00", pid="p2")],
                       {"alert:order-total-mismatch": "APPLIED"}) == []
    # when an ORDER_UPDATED corrects the total and a capture covers it, the line is issued
    fixed = order([line], total="100000.00")
    assert keys(correlation.decide(fixed, [pay("1.00"), pay("99999.00", pid="p2")],
                            {"alert:order-total-mismatch": "APPLIED"})) == ["issue:1"]


MONEY = st.decimals(min_value=D("0.01"), max_value=D("99999.99"), places=2)


@settings(max_examples=300, deadline=None)
@given(st.lists(MONEY, min_size=1, max_size=4), st.lists(MONEY, max_size=3), MONEY,
       st.lists(MONEY, min_size=1, max_size=4))
def test_a_certificate_is_never_issued_below_what_its_lines_sell_it_for(gc_amounts, other_amounts,
                                                                         total, captures):
    # given any order (certificate lines, other lines, a total) and any captures
    lines = [correlation.Line(f"g{i}", "GIFT_CERTIFICATE", a, f"C0DE00000{i}") for i, a in enumerate(gc_amounts)]
    lines += [correlation.Line(f"p{i}", "PRODUCT", a) for i, a in enumerate(other_amounts)]
    o = order(lines, total=str(total))
    payments = [pay(str(a), pid=f"p{i}") for i, a in enumerate(captures)]
    decided = keys(correlation.decide(o, payments, {}))
    issued = [k for k in decided if k.startswith("issue:")]
    paid = sum(captures) >= total
    # then lines are issued only when paid in full and the total covers the certificate lines
    if issued:
        assert paid and sum(gc_amounts) <= total
        assert sorted(issued) == sorted(f"issue:g{i}" for i in range(len(gc_amounts)))
    # and a paid order whose certificate lines exceed its total raises the alert instead, once
    mismatch = paid and sum(gc_amounts) > total
    assert decided.count("alert:order-total-mismatch") == (1 if mismatch else 0)
    assert bool(issued) == (paid and not mismatch)


def test_effect_keys_keep_their_stored_spelling_and_read_back():
    from models.domain.effects import Action, effect_key, parse_effect_key

    # the keys stored in order_effect, spelt as they always were
    written = {effect_key(Action.ISSUE, "1"): "issue:1",
               effect_key(Action.RELEASE): "release",
               effect_key(Action.REDEEM, "C0DE000001", "pay:1"): "redeem:C0DE000001:pay:1",
               effect_key(Action.REFUND_CREDIT, "C0DE000001", "pay-2"): "refund_credit:C0DE000001:pay-2",
               effect_key(Action.CURRENCY_ERROR, "p9"): "currency_mismatch:p9",
               effect_key(Action.ALERT, "paid-after-cancel"): "alert:paid-after-cancel",
               effect_key(Action.CONFIRM, "auth-1"): "confirm:auth-1",
               effect_key(Action.REFUND_REQUEST, "2"): "refund_request:2"}
    assert list(written) == list(written.values())
    # and each reads back as what wrote it (a payment id may hold a colon)
    assert parse_effect_key("redeem:C0DE000001:pay:1") == (Action.REDEEM, ("C0DE000001", "pay:1"))
    assert parse_effect_key("currency_mismatch:p9") == (Action.CURRENCY_ERROR, ("p9",))
    assert parse_effect_key("release") == (Action.RELEASE, ())
    assert parse_effect_key("something:else") is None


def test_every_action_has_its_applier():
    from models.domain.commands import Context
    from models.domain.effects import Action
    from models.service.handlers.order_effects import EffectApplier

    applier = EffectApplier(None, correlation.Order("o-1", "POS", "RUB", D("1.00")), Context(), "test")
    assert set(applier._actions) == set(Action)
