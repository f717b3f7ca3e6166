"""Support's balance adjustments through HTTP against real PostgreSQL and Redis: the nominal cap,
the debit bound, four eyes above ADJUST_APPROVAL_LIMIT, expiry of a pending one, the list, and
bad input."""
import datetime as dt
from decimal import Decimal

from models.store.db import db
from models.store.tables import AuditLog, BalanceAdjustment, Operation
from tests.e2e import flow
from tests.helpers import issued, load
from tests.integration.apikit import authorize, issued_with_cvc
from tests.integration.supportkit import (
    adjust,
    admin,
    assert_ledger_is_the_balance,
    events,
    ledger,
    spend,
    view,
)

D = Decimal


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
