"""Support tools through HTTP against real PostgreSQL and Redis: balance adjustments (the
nominal cap, the debit bound, four eyes above ADJUST_APPROVAL_LIMIT, expiry of a pending one,
the list) and balance transfers (refusals, onto a given card or the pool, racing a capture)."""
import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from app import create_app
from config import get_settings
from models.store import queries
from models.store.db import db
from models.store.tables import (
    AuditLog,
    BalanceAdjustment,
    CertificateTransfer,
    GiftCertificate,
    Operation,
    OutboxEvent,
)
from tests.e2e import flow
from tests.helpers import issued, load, uid, unique_code, unique_currency
from tests.integration.apikit import auth, authorize, issued_with_cvc, row

D = Decimal
PRINTED = "482913"
#: The check of docs/support-tools.md: every transfer's two ledger rows sum to zero (no row).
UNBALANCED_TRANSFERS = """
SELECT t.id, t.amount, sum(o.amount) AS net, count(o.id) AS rows
FROM certificate_transfer t
LEFT JOIN gift_certificate_operation o ON o.transfer_id = t.id
GROUP BY t.id, t.amount
HAVING sum(o.amount) IS DISTINCT FROM 0 OR count(o.id) <> 2
    OR max(o.amount) IS DISTINCT FROM t.amount"""


@pytest.fixture(scope="module")
def app(stack):
    return create_app(get_settings())


@pytest.fixture
def client(app):
    return app.test_client()


def admin(name: str | None = None) -> dict:
    return auth(("certificates:admin", "certificates:read"), client_id=name or uid("support-"))


def events(code: str) -> list[dict]:
    with db.connection_context():
        return [e.envelope for e in OutboxEvent.select().where(OutboxEvent.message_key == code)
                .order_by(OutboxEvent.id)]


def ledger(client, code: str) -> list[dict]:
    return client.get(f"/certificates/{code}/operations", headers=auth("certificates:read")).json["items"]


def view(client, code: str) -> dict:
    return client.get(f"/certificates/{code}", headers=auth("certificates:read")).json


def adjust(client, code, direction, amount, headers=None, reason="SUPPORT_CORRECTION", **extra):
    return client.post(f"/certificates/{code}/actions/adjust", headers=headers or admin(),
                       json={"direction": direction, "amount": amount, "reason": reason, **extra})


def spend(client, code, cvc, amount):
    hold = authorize(client, code, cvc, amount).json["authorizationId"]
    assert client.post(f"/authorizations/{hold}/capture", headers=auth()).status_code == 200


def assert_ledger_is_the_balance(client, code):
    items = ledger(client, code)
    balance = D(view(client, code)["remainingBalance"])
    assert sum((D(i["amount"]) for i in items), D("0.00")) == balance
    with db.connection_context():
        assert queries.ledger_sum(code) == balance


# ---- adjustments -------------------------------------------------------------------------------

def test_a_credit_never_lifts_the_balance_above_nominal(client):
    # given a certificate of 1000.00 with 300.00 spent
    code, cvc = issued_with_cvc("1000.00")
    spend(client, code, cvc, "300.00")
    # when support credits 300.01, then exactly 300.00
    over = adjust(client, code, "CREDIT", "300.01")
    ok = adjust(client, code, "CREDIT", "300.00", comment="wrong redemption at till 4")
    # then the first is refused and the second applied at once, back to ISSUED
    assert over.status_code == 409 and over.json["code"] == "EXCEEDS_NOMINAL"
    assert over.json["details"]["maxCredit"] == "300.00"
    assert ok.status_code == 201, ok.json
    assert ok.json["status"] == "APPLIED" and ok.json["remainingBalance"] == "1000.00"
    assert ok.json["certificateStatus"] == "ISSUED" and ok.json["comment"] == "wrong redemption at till 4"
    assert view(client, code)["status"] == "ISSUED"
    # and the ledger names the adjustment and sums to the balance
    last = ledger(client, code)[-1]
    assert (last["kind"], last["amount"], last["adjustmentId"]) == ("ADJUST_CREDIT", "300.00",
                                                                     ok.json["adjustmentId"])
    assert_ledger_is_the_balance(client, code)


def test_a_debit_never_takes_more_than_available(client):
    # given a certificate of 1000.00 with a hold of 600.00
    code, cvc = issued_with_cvc("1000.00")
    authorize(client, code, cvc, "600.00")
    # when support debits 400.01, then 400.00
    over = adjust(client, code, "DEBIT", "400.01", reason="FRAUD_RECOVERY")
    ok = adjust(client, code, "DEBIT", "400.00", reason="FRAUD_RECOVERY")
    # then only what is available is taken
    assert over.status_code == 409 and over.json["code"] == "INSUFFICIENT_FUNDS"
    assert over.json["details"]["available"] == "400.00"
    assert ok.status_code == 201 and ok.json["remainingBalance"] == "600.00"
    assert ok.json["available"] == "0.00" and ok.json["certificateStatus"] == "PARTIALLY_REDEEMED"
    assert ledger(client, code)[-1]["kind"] == "ADJUST_DEBIT"
    assert_ledger_is_the_balance(client, code)


def test_adjust_only_a_working_certificate(client):
    cancelled, locked, pool = issued(), issued(), load(1)[0]
    client.post(f"/certificates/{cancelled}/actions/cancel", json={"reason": "X"}, headers=admin())
    client.post(f"/certificates/{locked}/actions/lock", json={"reason": "X"}, headers=admin())
    for code in (cancelled, locked, pool):
        resp = adjust(client, code, "DEBIT", "1.00")
        assert resp.status_code == 409 and resp.json["code"] == "INVALID_STATE", resp.json
    # a fully redeemed one can be credited back
    code, cvc = issued_with_cvc("100.00")
    spend(client, code, cvc, "100.00")
    resp = adjust(client, code, "CREDIT", "10.00")
    assert resp.status_code == 201 and resp.json["certificateStatus"] == "PARTIALLY_REDEEMED"


def test_above_the_limit_a_second_admin_approves_and_never_the_author(client):
    # given a certificate of 9000.00 with 7000.00 spent
    code, cvc = issued_with_cvc("9000.00")
    spend(client, code, cvc, "7000.00")
    author, approver = admin("support-1"), admin("support-2")
    # when support-1 credits 6000.00 (above the 5000.00 limit)
    asked = adjust(client, code, "CREDIT", "6000.00", headers=author)
    # then it waits, and nothing moved
    assert asked.status_code == 201, asked.json
    assert asked.json["status"] == "PENDING_APPROVAL" and asked.json["remainingBalance"] == "2000.00"
    assert asked.json["requestedBy"] == "support-1" and asked.json["expiresAt"].endswith("Z")
    assert "adjust" not in [e["eventType"] for e in events(code)]
    adj = asked.json["adjustmentId"]
    # when its author approves it: refused (four eyes)
    self_approval = client.post(f"/adjustments/{adj}/approve", headers=author)
    assert self_approval.status_code == 403 and self_approval.json["code"] == "SELF_APPROVAL_FORBIDDEN"
    assert view(client, code)["remainingBalance"] == "2000.00"
    # when another admin approves it
    approved = client.post(f"/adjustments/{adj}/approve", headers=approver, json={"comment": "ok, ticket 5521"})
    # then it is applied, once
    assert approved.status_code == 200, approved.json
    assert approved.json["status"] == "APPLIED" and approved.json["decidedBy"] == "support-2"
    assert approved.json["remainingBalance"] == "8000.00"
    again = client.post(f"/adjustments/{adj}/approve", headers=approver)
    assert again.status_code == 409 and again.json["code"] == "ADJUSTMENT_NOT_PENDING"
    assert view(client, code)["remainingBalance"] == "8000.00"
    # and the event names the amount, the reason and the approver
    (event,) = [e for e in events(code) if e["eventType"] == "adjust"]
    p = event["payload"]
    assert (p["direction"], p["amount"], p["reason"], p["adjustmentId"], p["approvedBy"]) == (
        "CREDIT", "6000.00", "SUPPORT_CORRECTION", adj, "support-2")
    assert event["status"] == p["status"] == "PARTIALLY_REDEEMED" and p["remainingBalance"] == "8000.00"
    flow.assert_valid_stream(events(code))
    # and the ledger row's adjustment records its reason, author and approver
    with db.connection_context():
        op = Operation.get(Operation.adjustment == adj)
        record = BalanceAdjustment.get_by_id(adj)
        trail = [a.action for a in AuditLog.select().where(AuditLog.code == code).order_by(AuditLog.id)]
    assert op.amount == D("6000.00") and op.kind == "ADJUST_CREDIT"
    assert (record.reason, record.requested_by, record.decided_by) == ("SUPPORT_CORRECTION", "support-1", "support-2")
    assert trail[-2:] == ["adjust.requested", "adjust"]
    assert_ledger_is_the_balance(client, code)


def test_at_the_limit_it_is_applied_at_once(client):
    code = issued("9000.00")
    resp = adjust(client, code, "DEBIT", "5000.00")
    assert resp.status_code == 201 and resp.json["status"] == "APPLIED" and resp.json["expiresAt"] is None


def test_a_second_admin_rejects_and_nothing_moves(client):
    code = issued("9000.00")
    asked = adjust(client, code, "DEBIT", "5000.01", headers=admin("support-1")).json
    rejected = client.post(f"/adjustments/{asked['adjustmentId']}/reject", headers=admin("support-3"),
                           json={"comment": "no ticket"})
    assert rejected.status_code == 200, rejected.json
    assert rejected.json["status"] == "REJECTED" and rejected.json["decidedBy"] == "support-3"
    assert rejected.json["decisionComment"] == "no ticket" and rejected.json["remainingBalance"] == "9000.00"
    late = client.post(f"/adjustments/{asked['adjustmentId']}/approve", headers=admin("support-2"))
    assert late.status_code == 409 and late.json["code"] == "ADJUSTMENT_NOT_PENDING"
    assert [i["kind"] for i in ledger(client, code)] == ["ISSUE"]


def test_approval_checks_the_bounds_again_and_leaves_it_pending(client):
    # given a debit of 6000.00 asked for, then 5000.00 spent meanwhile
    code, cvc = issued_with_cvc("9000.00")
    adj = adjust(client, code, "DEBIT", "6000.00", headers=admin("support-1")).json["adjustmentId"]
    spend(client, code, cvc, "5000.00")
    # when a second admin approves: refused, and it is still pending
    resp = client.post(f"/adjustments/{adj}/approve", headers=admin("support-2"))
    assert resp.status_code == 409 and resp.json["code"] == "INSUFFICIENT_FUNDS"
    with db.connection_context():
        assert BalanceAdjustment.get_by_id(adj).status == "PENDING_APPROVAL"
    assert view(client, code)["remainingBalance"] == "4000.00"


def test_a_pending_adjustment_expires(client):
    # given a pending adjustment whose ADJUST_APPROVAL_TTL has passed
    code = issued("9000.00")
    adj = adjust(client, code, "DEBIT", "0.01", headers=admin()).json  # applied: the control
    asked = adjust(client, code, "DEBIT", "6000.00", headers=admin("support-1")).json
    with db.connection_context():
        BalanceAdjustment.update(expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).where(
            BalanceAdjustment.id == asked["adjustmentId"]).execute()
    # then the list shows it EXPIRED, before anyone touches it
    listed = client.get("/adjustments", query_string={"code": code}, headers=admin()).json["items"]
    assert {i["adjustmentId"]: i["status"] for i in listed} == {asked["adjustmentId"]: "EXPIRED",
                                                                adj["adjustmentId"]: "APPLIED"}
    expired = client.get("/adjustments", query_string={"code": code, "status": "EXPIRED"}, headers=admin())
    assert [i["adjustmentId"] for i in expired.json["items"]] == [asked["adjustmentId"]]
    # when a second admin approves it: refused, and it is recorded EXPIRED
    resp = client.post(f"/adjustments/{asked['adjustmentId']}/approve", headers=admin("support-2"))
    assert resp.status_code == 409 and resp.json["code"] == "ADJUSTMENT_EXPIRED"
    with db.connection_context():
        assert BalanceAdjustment.get_by_id(asked["adjustmentId"]).status == "EXPIRED"
        assert AuditLog.select().where((AuditLog.code == code) & (AuditLog.action == "adjust.expired")).exists()
    again = client.post(f"/adjustments/{asked['adjustmentId']}/reject", headers=admin("support-2"))
    assert again.status_code == 409 and again.json["code"] == "ADJUSTMENT_NOT_PENDING"
    assert view(client, code)["remainingBalance"] == "8999.99"


def test_the_ttl_setting_gives_the_pending_time(client, monkeypatch):
    from config import reset_settings

    monkeypatch.setenv("ADJUST_APPROVAL_TTL", "2h")
    monkeypatch.setenv("ADJUST_APPROVAL_LIMIT", "100.00")
    reset_settings()
    try:
        code = issued("1000.00")
        asked = adjust(client, code, "DEBIT", "100.01").json
    finally:
        monkeypatch.delenv("ADJUST_APPROVAL_TTL")
        monkeypatch.delenv("ADJUST_APPROVAL_LIMIT")
        reset_settings()
    assert asked["status"] == "PENDING_APPROVAL"
    waits = (dt.datetime.fromisoformat(asked["expiresAt"].replace("Z", "+00:00"))
             - dt.datetime.fromisoformat(asked["requestedAt"].replace("Z", "+00:00")))
    assert waits == dt.timedelta(hours=2)


def test_list_by_status(client):
    # given one adjustment of each status on one certificate
    code = issued("9000.00")
    applied = adjust(client, code, "DEBIT", "10.00").json["adjustmentId"]
    pending = adjust(client, code, "DEBIT", "5001.00", headers=admin("support-1")).json["adjustmentId"]
    approved = adjust(client, code, "CREDIT", "10.00").json["adjustmentId"]  # back to nominal
    rejected = adjust(client, code, "DEBIT", "5002.00", headers=admin("support-1")).json["adjustmentId"]
    client.post(f"/adjustments/{rejected}/reject", headers=admin("support-2"))
    # when support lists them by status
    def listed(status=None):
        query = {"code": code, **({"status": status} if status else {})}
        resp = client.get("/adjustments", query_string=query, headers=admin())
        assert resp.status_code == 200, resp.json
        return [i["adjustmentId"] for i in resp.json["items"]]
    # then each filter finds its own, newest first
    assert listed("PENDING_APPROVAL") == [pending]
    assert listed("REJECTED") == [rejected]
    assert listed("APPLIED") == [approved, applied]
    assert listed() == [rejected, approved, pending, applied]
    assert listed("EXPIRED") == []
    page = client.get("/adjustments", query_string={"code": code, "page_size": 1, "page": 2}, headers=admin()).json
    assert page["total"] == 4 and [i["adjustmentId"] for i in page["items"]] == [approved]
    # and the pending one is found among every certificate's
    everyone = client.get("/adjustments?status=PENDING_APPROVAL&page_size=100", headers=admin()).json
    assert everyone["total"] >= 1 and all(i["status"] == "PENDING_APPROVAL" for i in everyone["items"])
    bad = client.get("/adjustments?status=DONE", headers=admin())
    assert bad.status_code == 422 and bad.json["code"] == "VALIDATION_ERROR"


def test_adjust_refuses_bad_input(client):
    code = issued()
    for body in ({"direction": "UP", "amount": "1.00", "reason": "OTHER"},
                 {"direction": "CREDIT", "amount": 1.0, "reason": "OTHER"},
                 {"direction": "CREDIT", "amount": "0.00", "reason": "OTHER"},
                 {"direction": "CREDIT", "amount": "1.00", "reason": "BECAUSE"},
                 {"direction": "CREDIT", "amount": "1.00"}):
        resp = client.post(f"/certificates/{code}/actions/adjust", json=body, headers=admin())
        assert resp.status_code == 422 and resp.json["code"] == "VALIDATION_ERROR", body
    unknown = client.post("/adjustments/adj-" + "0" * 32 + "/approve", headers=admin())
    malformed = client.post("/adjustments/nope/reject", headers=admin())
    assert unknown.status_code == 404 and unknown.json["code"] == "ADJUSTMENT_NOT_FOUND"
    assert malformed.status_code == 404 and malformed.json["code"] == "ADJUSTMENT_NOT_FOUND"


# ---- transfers ----------------------------------------------------------------------------------

def transfer(client, code, to=None, reason="DAMAGED_CARD", headers=None):
    body = {"reason": reason, **({"to": to} if to else {})}
    return client.post(f"/certificates/{code}/actions/transfer", json=body, headers=headers or admin())


def load_card(client, currency, nominal=None, cvc=PRINTED):
    """A printed card (PHYSICAL, open value unless ``nominal``) in the pool."""
    code = unique_code("PC")
    item = {"code": code, "cvc": cvc, **({"nominal": nominal} if nominal else {})}
    resp = client.post("/batches", headers=auth("batches:write"), json={
        "batchId": uid("cards-"), "kind": "PHYSICAL", "currency": currency, "certificates": [item]})
    assert resp.status_code == 201, resp.json
    return code


def test_transfer_is_refused_with_active_holds(client):
    code, cvc = issued_with_cvc("1000.00")
    target = load(1, None)[0]
    hold = authorize(client, code, cvc, "10.00").json["authorizationId"]
    resp = transfer(client, code, target)
    assert resp.status_code == 409 and resp.json["code"] == "HOLDS_ACTIVE"
    assert resp.json["details"]["held"] == "10.00"
    assert row(target).status == "AVAILABLE" and view(client, code)["status"] == "ISSUED"
    # once the hold is voided it goes through
    client.post(f"/authorizations/{hold}/void", headers=auth())
    assert transfer(client, code, target).status_code == 200


def test_transfer_is_refused_across_currencies(client):
    code = issued("1000.00", "RUB")
    target = load(1, None, unique_currency())[0]
    resp = transfer(client, code, target)
    assert resp.status_code == 422 and resp.json["code"] == "CURRENCY_MISMATCH"
    assert row(target).status == "AVAILABLE" and row(code).status == "ISSUED"


def test_transfer_is_refused_from_a_terminal_status_and_onto_a_sold_card(client):
    cancelled, sold, fresh = issued(), issued(), issued()
    client.post(f"/certificates/{cancelled}/actions/cancel", json={"reason": "X"}, headers=admin())
    target = load(1, None)[0]
    from_terminal = transfer(client, cancelled, target)
    onto_sold = transfer(client, fresh, sold)
    onto_itself = transfer(client, fresh, fresh)
    unknown = transfer(client, fresh, "NOSUCHCODE42")
    printed = load(1, "999.00")[0]
    wrong_nominal = transfer(client, fresh, printed)
    assert from_terminal.status_code == 409 and from_terminal.json["code"] == "INVALID_STATE"
    assert onto_sold.status_code == 409 and onto_sold.json["code"] == "TARGET_NOT_AVAILABLE"
    assert onto_itself.status_code == 409 and onto_itself.json["code"] == "TARGET_NOT_AVAILABLE"
    assert unknown.status_code == 404 and unknown.json["details"]["role"] == "to"
    assert wrong_nominal.status_code == 409 and wrong_nominal.json["code"] == "NOMINAL_MISMATCH"
    # a transferred certificate is terminal too
    assert transfer(client, fresh, target).status_code == 200
    again = transfer(client, fresh, load(1, None)[0])
    assert again.status_code == 409 and again.json["code"] == "INVALID_STATE"


def test_a_damaged_card_replaced_at_a_pos(client):
    # given a card of 1000.00 with 400.00 spent, locked by support for damage
    currency = unique_currency()
    code, cvc = issued_with_cvc("1000.00", currency, "POS")
    spend(client, code, cvc, "400.00")
    client.post(f"/certificates/{code}/actions/lock", json={"reason": "DAMAGED"}, headers=admin())
    card = load_card(client, currency)
    # when a POS's support token moves the balance onto a new printed card
    pos_admin = auth(("certificates:admin", "certificates:read"), channel="POS", client_id="pos-support")
    resp = transfer(client, code, card, headers=pos_admin)
    # then the source is cancelled with nothing left and the card carries the 600.00
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert (body["fromCode"], body["toCode"], body["amount"], body["currency"]) == (code, card, "600.00", currency)
    assert body["source"]["status"] == "CANCELLED" and body["source"]["lockReason"] == "TRANSFERRED"
    assert body["source"]["remainingBalance"] == "0.00"
    assert body["target"]["status"] == "ISSUED" and body["target"]["nominal"] == "600.00"
    assert body["target"]["remainingBalance"] == body["target"]["available"] == "600.00"
    target = view(client, card)
    assert target["orderId"] == view(client, code)["orderId"] and target["notificationStatus"] is None
    # and one transfer event each, naming the other, valid against the stream schema
    (out,) = [e for e in events(code) if e["eventType"] == "transfer"]
    (into,) = [e for e in events(card) if e["eventType"] == "transfer"]
    assert out["status"] == "CANCELLED" and out["payload"]["toCode"] == card and out["payload"]["amount"] == "600.00"
    assert into["status"] == "ISSUED" and into["payload"]["fromCode"] == code
    assert into["payload"]["nominal"] == into["payload"]["remainingBalance"] == "600.00"
    assert into["sequence"] == 1 and into["channel"] == out["channel"] == "POS"
    assert into["correlationId"] == out["correlationId"] == code
    assert [e["eventType"] for e in events(card)] == ["transfer"]  # a printed card is never notified
    flow.assert_valid_stream(events(code) + events(card))
    # and the ledger rows of the transfer add up to nothing; each ledger is its balance
    assert (ledger(client, code)[-1]["kind"], ledger(client, code)[-1]["amount"]) == ("TRANSFER_OUT", "-600.00")
    assert [(i["kind"], i["amount"]) for i in ledger(client, card)] == [("TRANSFER_IN", "600.00")]
    assert ledger(client, code)[-1]["transferId"] == ledger(client, card)[0]["transferId"] == body["transferId"]
    assert_ledger_is_the_balance(client, code)
    assert_ledger_is_the_balance(client, card)
    # and the buyer pays with the new card and its printed CVC
    spend(client, card, PRINTED, "100.00")
    assert view(client, card)["remainingBalance"] == "500.00"


def test_transfer_onto_the_next_certificate_from_the_pool(client):
    # given a pool of one printed-for-700.00 and one open-value electronic certificate
    currency = unique_currency()
    code, cvc = issued_with_cvc("1000.00", currency)
    spend(client, code, cvc, "300.00")
    open_value = load(1, None, currency)[0]
    printed = load(1, "700.00", currency)[0]
    # when support transfers without naming a target
    resp = transfer(client, code, reason="CUSTOMER_LOST_SMS")
    # then the one printed for the amount is taken, issued, and its CVC is sent as for a sale
    assert resp.status_code == 200, resp.json
    assert resp.json["toCode"] == printed and row(open_value).status == "AVAILABLE"
    target = view(client, printed)
    assert target["status"] == "ISSUED" and target["notificationStatus"] == "NOTIFICATION_REQUESTED"
    assert [e["eventType"] for e in events(printed)] == ["transfer", "notification.requested"]
    cvc_resp = client.get(f"/certificates/{printed}/cvc", headers=auth("certificates:cvc"))
    assert cvc_resp.status_code == 200 and len(cvc_resp.json["cvc"]) == get_settings().cvc_length
    flow.assert_valid_stream(events(code) + events(printed))
    # the next transfer of 500.00 takes the open-value one, then the pool is empty
    other, other_cvc = issued_with_cvc("1000.00", currency)
    spend(client, other, other_cvc, "500.00")
    assert transfer(client, other).json["toCode"] == open_value
    assert view(client, open_value)["nominal"] == "500.00"
    third = issued("100.00", currency)
    empty = transfer(client, third)
    assert empty.status_code == 409 and empty.json["code"] == "POOL_EMPTY"
    assert view(client, third)["status"] == "ISSUED"


def test_a_transfer_keeps_the_expiry(client):
    currency = unique_currency()
    code = issued("100.00", currency)
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)
    with db.connection_context():
        GiftCertificate.update(expires_at=expires).where(GiftCertificate.code == code).execute()
    target = load(1, None, currency)[0]
    assert transfer(client, code, target).status_code == 200
    assert view(client, target)["expiresAt"] == view(client, code)["expiresAt"]


def run_at_once(calls):
    barrier = threading.Barrier(len(calls))

    def go(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(go, calls))


def test_a_transfer_racing_a_capture_never_loses_nor_doubles_money(app):
    # given 10 certificates of 1000.00, each with a hold of 300.00, and a card in the pool for each
    currency = unique_currency()
    client = app.test_client()
    sources, holds = [], []
    for _ in range(10):
        code, cvc = issued_with_cvc("1000.00", currency)
        sources.append(code)
        holds.append(authorize(client, code, cvc, "300.00").json["authorizationId"])
    load(10, None, currency)
    headers = admin()

    # when each certificate gets a capture and a transfer (from the pool) at the same time
    def capture(hold):
        return lambda: app.test_client().post(f"/authorizations/{hold}/capture", headers=auth())

    def move(code):
        return lambda: app.test_client().post(f"/certificates/{code}/actions/transfer",
                                              json={"reason": "RACE"}, headers=headers)
    calls = [capture(h) for h in holds] + [move(c) for c in sources]
    answers = run_at_once(calls)
    captures, transfers = answers[:10], answers[10:]
    seen = [(c.status_code, c.json.get("code"), t.status_code, t.json.get("code"))
            for c, t in zip(captures, transfers)]
    # then a capture goes through, and its transfer comes after it or is refused for the hold
    # (on a loaded machine a request may also give up waiting for the row: 409 LOCK_TIMEOUT)
    for capture_status, capture_code, transfer_status, transfer_code in seen:
        assert capture_status == 200 or capture_code == "LOCK_TIMEOUT", seen
        assert transfer_status == 200 or transfer_code in ("HOLDS_ACTIVE", "LOCK_TIMEOUT"), seen
    assert sum(c.status_code == 200 for c in captures) >= 1, seen
    # and for each certificate: balance + transferred + captured is the 1000.00 sold, to the kopeck
    for code, took, moved in zip(sources, captures, transfers):
        balance = D(view(client, code)["remainingBalance"])
        captured = D(took.json["captured"]) if took.status_code == 200 else D("0.00")
        target_balance = D(view(client, moved.json["toCode"])["remainingBalance"]) if moved.status_code == 200 else D(0)
        assert balance + target_balance + captured == D("1000.00"), (code, took.json, moved.json)
        assert_ledger_is_the_balance(client, code)
        if moved.status_code == 200:
            assert took.status_code == 200 and moved.json["amount"] == "700.00" and balance == 0
            assert_ledger_is_the_balance(client, moved.json["toCode"])
    # and the transfers' ledger rows add up to nothing, pair by pair
    done = [t.json["transferId"] for t in transfers if t.status_code == 200]
    with db.connection_context():
        assert CertificateTransfer.select().where(CertificateTransfer.id.in_(done or [""])).count() == len(done)
        mine = db.execute_sql(f"SELECT * FROM ({UNBALANCED_TRANSFERS}) u WHERE u.id = ANY(%s)", (done,))
        assert mine.fetchall() == []


def test_a_transfer_racing_another_transfer_moves_the_money_once(app):
    currency = unique_currency()
    code = issued("1000.00", currency)
    targets = load(4, None, currency)
    headers = admin()
    answers = run_at_once([
        (lambda t: lambda: app.test_client().post(f"/certificates/{code}/actions/transfer",
                                                  json={"reason": "R", "to": t}, headers=headers))(t)
        for t in targets])
    won = [a for a in answers if a.status_code == 200]
    assert len(won) == 1 and sorted(a.status_code for a in answers) == [200, 409, 409, 409]
    client = app.test_client()
    assert sum(D(view(client, t)["remainingBalance"]) for t in targets) == D("1000.00")


# ---- idempotency ------------------------------------------------------------------------------

def test_a_repeated_request_with_the_same_idempotency_key(client):
    code = issued("9000.00")
    author = {**admin("support-1"), "Idempotency-Key": uid("k-")}
    body = {"direction": "DEBIT", "amount": "100.00", "reason": "OTHER"}
    first = client.post(f"/certificates/{code}/actions/adjust", json=body, headers=author)
    again = client.post(f"/certificates/{code}/actions/adjust", json=body, headers=author)
    other = client.post(f"/certificates/{code}/actions/adjust", json={**body, "amount": "1.00"}, headers=author)
    assert first.status_code == again.status_code == 201 and again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 422 and other.json["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert view(client, code)["remainingBalance"] == "8900.00"
    # approving twice with one key approves once
    adj = adjust(client, code, "DEBIT", "6000.00", headers=admin("support-1")).json["adjustmentId"]
    approver = {**admin("support-2"), "Idempotency-Key": uid("k-")}
    a1 = client.post(f"/adjustments/{adj}/approve", headers=approver)
    a2 = client.post(f"/adjustments/{adj}/approve", headers=approver)
    assert a1.status_code == a2.status_code == 200 and a1.json == a2.json
    assert view(client, code)["remainingBalance"] == "2900.00"
    # a transfer sent twice moves the money once
    target = load(1, None)[0]
    key = {**admin(), "Idempotency-Key": uid("k-")}
    t1 = client.post(f"/certificates/{code}/actions/transfer", json={"to": target, "reason": "R"}, headers=key)
    t2 = client.post(f"/certificates/{code}/actions/transfer", json={"to": target, "reason": "R"}, headers=key)
    assert t1.status_code == t2.status_code == 200 and t1.json == t2.json
    assert t2.headers["Idempotent-Replayed"] == "true"
    assert [e["eventType"] for e in events(target)].count("transfer") == 1
    assert [i["kind"] for i in ledger(client, code)].count("TRANSFER_OUT") == 1
    # and a refusal is replayed too
    r1 = client.post(f"/adjustments/{adj}/reject", headers={**admin(), "Idempotency-Key": "same"})
    assert r1.status_code == 409
    flow.assert_valid_stream(events(code) + events(target))
