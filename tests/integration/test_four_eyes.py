"""Four eyes that cannot be walked around (issue 27, contract revision 3 section 3), through HTTP
against real PostgreSQL and Redis: a transfer above ADJUST_APPROVAL_LIMIT waits for a second
admin; the limit counts what a certificate moved without one within ADJUST_APPROVAL_WINDOW (no
splitting); "another admin" is another person by ADMIN_IDENTITY_CLAIM, case-insensitively; two
approvals racing apply once."""
import datetime as dt
import time
from decimal import Decimal

import jwt

from config import get_settings, reset_settings
from models.store.db import db
from models.store.tables import BalanceAdjustment, CertificateTransfer, OutboxEvent, TransferRequest
from tests.e2e import flow
from tests.helpers import issued, load, uid, unique_currency
from tests.integration.apikit import auth, issued_with_cvc
from tests.integration.supportkit import (
    adjust,
    admin,
    assert_ledger_is_the_balance,
    events,
    load_card,
    run_at_once,
    spend,
    transfer,
    view,
)

D = Decimal


def big(client, amount="9000.00", currency=None):
    """An issued certificate whose whole balance is ``amount`` (above the 5000.00 limit)."""
    return issued(amount, currency or unique_currency())


# ---- transfers above the limit ---------------------------------------------------------------

def test_a_transfer_above_the_limit_waits_for_another_admin(client):
    currency = unique_currency()
    code = big(client, currency=currency)
    card = load_card(client, currency)
    author, approver = admin("support-1"), admin("support-2")
    # when one admin moves 9000.00 onto an open-value card they hold
    asked = transfer(client, code, card, headers=author)
    # then nothing moves: 202 PENDING_APPROVAL, audited, no event
    assert asked.status_code == 202, asked.json
    body = asked.json
    assert body["status"] == "PENDING_APPROVAL" and body["amount"] == "9000.00"
    assert (body["fromCode"], body["to"], body["requestedBy"]) == (code, card, "support-1")
    assert view(client, code)["status"] == "ISSUED" and view(client, card)["status"] == "AVAILABLE"
    assert "transfer" not in [e["eventType"] for e in events(code)]
    audit = client.get(f"/certificates/{code}/audit", headers=author).json["items"]
    assert audit[-1]["action"] == "transfer.requested" and audit[-1]["details"]["amount"] == "9000.00"
    listed = client.get("/transfers?status=PENDING_APPROVAL", headers=approver).json["items"]
    assert body["transferId"] in [t["transferId"] for t in listed]
    # when its author approves it: refused
    own = client.post(f"/transfers/{body['transferId']}/approve", headers=author)
    assert own.status_code == 403 and own.json["code"] == "SELF_APPROVAL_FORBIDDEN"
    assert view(client, code)["remainingBalance"] == "9000.00"
    # when another admin approves it: carried out, once
    done = client.post(f"/transfers/{body['transferId']}/approve", headers=approver,
                       json={"comment": "ticket 7781"})
    assert done.status_code == 200, done.json
    assert done.json["status"] == "APPLIED" and done.json["approvedBy"] == "support-2"
    assert done.json["transferId"] == body["transferId"] and done.json["toCode"] == card
    assert view(client, code)["status"] == "CANCELLED" and view(client, card)["remainingBalance"] == "9000.00"
    again = client.post(f"/transfers/{body['transferId']}/approve", headers=admin("support-3"))
    assert again.status_code == 409 and again.json["code"] == "TRANSFER_NOT_PENDING"
    with db.connection_context():
        record = TransferRequest.get_by_id(body["transferId"])
        assert (record.status, record.decided_by, record.decision_comment) == ("APPLIED", "support-2", "ticket 7781")
        assert CertificateTransfer.get_by_id(body["transferId"]).approved_by == "support-2"
    flow.assert_valid_stream(events(code) + events(card))
    assert_ledger_is_the_balance(client, code)
    assert_ledger_is_the_balance(client, card)


def test_a_pending_transfer_onto_the_pool_rejected_or_refused_once_the_balance_moved(client):
    currency = unique_currency()
    code, cvc = issued_with_cvc("9000.00", currency)
    load(2, None, currency)
    first = transfer(client, code, headers=admin("support-1")).json
    assert first["status"] == "PENDING_APPROVAL" and first["to"] is None
    # when someone rejects it, nothing moves and it cannot be approved any more
    rejected = client.post(f"/transfers/{first['transferId']}/reject", headers=admin("support-2"))
    assert rejected.status_code == 200 and rejected.json["status"] == "REJECTED"
    late = client.post(f"/transfers/{first['transferId']}/approve", headers=admin("support-2"))
    assert late.status_code == 409 and late.json["code"] == "TRANSFER_NOT_PENDING"
    # when the balance moves after a second request, its approval is refused and it stays pending
    second = transfer(client, code, headers=admin("support-1")).json
    spend(client, code, cvc, "100.00")
    refused = client.post(f"/transfers/{second['transferId']}/approve", headers=admin("support-2"))
    assert refused.status_code == 409 and refused.json["code"] == "BALANCE_CHANGED"
    assert refused.json["details"] == {"approved": "9000.00", "remainingBalance": "8900.00"}
    listed = client.get(f"/transfers?code={code}", headers=admin()).json["items"]
    assert [t["status"] for t in listed] == ["PENDING_APPROVAL", "REJECTED"]
    assert view(client, code)["remainingBalance"] == "8900.00"


def test_a_pending_transfer_expires(client):
    code = big(client)
    asked = transfer(client, code, headers=admin("support-1")).json
    with db.connection_context():
        (TransferRequest.update(expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1))
         .where(TransferRequest.id == asked["transferId"]).execute())
    resp = client.post(f"/transfers/{asked['transferId']}/approve", headers=admin("support-2"))
    assert resp.status_code == 409 and resp.json["code"] == "TRANSFER_EXPIRED"
    listed = client.get(f"/transfers?status=EXPIRED&code={code}", headers=admin()).json["items"]
    assert [t["transferId"] for t in listed] == [asked["transferId"]]
    assert view(client, code)["status"] == "ISSUED"


def test_unknown_and_malformed_transfer_ids(client):
    for bad in ("trf-" + "0" * 32, "nope"):
        resp = client.post(f"/transfers/{bad}/approve", headers=admin())
        assert resp.status_code == 404 and resp.json["code"] == "TRANSFER_NOT_FOUND"


# ---- the window: no splitting ----------------------------------------------------------------

def test_split_credits_do_not_pass_under_the_limit(client):
    # given a certificate of 30000.00 with 25000.00 spent
    code, cvc = issued_with_cvc("30000.00")
    spend(client, code, cvc, "25000.00")
    # when one admin credits 5000.00 four times
    answers = [adjust(client, code, "CREDIT", "5000.00", headers=admin("support-1")).json for _ in range(4)]
    # then the first applies (5000.00 is the limit), every later one waits for a second admin
    assert [a["status"] for a in answers] == ["APPLIED"] + ["PENDING_APPROVAL"] * 3
    assert view(client, code)["remainingBalance"] == "10000.00"
    # and an approved one does not count towards the window: after approval, still one at a time
    ok = client.post(f"/adjustments/{answers[1]['adjustmentId']}/approve", headers=admin("support-2"))
    assert ok.status_code == 200 and ok.json["remainingBalance"] == "15000.00"
    assert adjust(client, code, "DEBIT", "0.01", headers=admin("support-1")).json["status"] == "PENDING_APPROVAL"


def test_debits_count_too_and_the_window_forgets_old_moves(client):
    code = issued("9000.00")
    first = adjust(client, code, "DEBIT", "3000.00", headers=admin("support-1")).json
    assert first["status"] == "APPLIED"
    assert adjust(client, code, "DEBIT", "3000.00", headers=admin("support-1")).json["status"] == "PENDING_APPROVAL"
    # when the first one is older than ADJUST_APPROVAL_WINDOW (24 h), it no longer counts
    with db.connection_context():
        (BalanceAdjustment.update(requested_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=25))
         .where(BalanceAdjustment.id == first["adjustmentId"]).execute())
    assert adjust(client, code, "DEBIT", "3000.00", headers=admin("support-1")).json["status"] == "APPLIED"


def test_the_window_setting(client, monkeypatch):
    code = issued("9000.00")
    first = adjust(client, code, "DEBIT", "3000.00", headers=admin()).json
    with db.connection_context():
        (BalanceAdjustment.update(requested_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2))
         .where(BalanceAdjustment.id == first["adjustmentId"]).execute())
    monkeypatch.setenv("ADJUST_APPROVAL_WINDOW", "3h")
    reset_settings()
    try:
        within = adjust(client, code, "DEBIT", "3000.00", headers=admin()).json
    finally:
        monkeypatch.delenv("ADJUST_APPROVAL_WINDOW")
        reset_settings()
    assert within["status"] == "PENDING_APPROVAL"


def test_a_transfer_counts_what_was_adjusted_at_once_before_it(client):
    # given a certificate credited 3000.00 at once, then transferred whole (4000.00, under the limit)
    code, cvc = issued_with_cvc("4000.00")
    spend(client, code, cvc, "3000.00")
    assert adjust(client, code, "CREDIT", "3000.00", headers=admin("support-1")).json["status"] == "APPLIED"
    load(1, None, "RUB")
    # then the transfer waits: 3000.00 + 4000.00 moved without a second approver is above 5000.00
    asked = transfer(client, code, headers=admin("support-1"))
    assert asked.status_code == 202 and asked.json["amount"] == "4000.00"


def test_a_transfer_at_once_counts_for_its_target(client):
    currency = unique_currency()
    code = issued("4000.00", currency)
    card = load_card(client, currency)
    assert transfer(client, code, card, headers=admin("support-1")).status_code == 200
    # the card received 4000.00 without a second approver: a further 1000.01 debit waits
    assert adjust(client, card, "DEBIT", "1000.01", headers=admin("support-1")).json["status"] == "PENDING_APPROVAL"


# ---- who is "another admin" --------------------------------------------------------------------

def test_another_admin_is_another_person_whatever_the_case(client):
    code = big(client)
    asked = adjust(client, code, "DEBIT", "6000.00", headers=admin("Alice")).json
    refused = client.post(f"/adjustments/{asked['adjustmentId']}/approve", headers=admin("alice"))
    assert refused.status_code == 403 and refused.json["code"] == "SELF_APPROVAL_FORBIDDEN"
    asked_t = transfer(client, code, headers=admin("BOB")).json
    refused_t = client.post(f"/transfers/{asked_t['transferId']}/approve", headers=admin("bob"))
    assert refused_t.status_code == 403 and refused_t.json["code"] == "SELF_APPROVAL_FORBIDDEN"


def _token(claims: dict) -> dict:
    s = get_settings()
    now = int(time.time())
    body = {"scope": "certificates:admin certificates:read", "iat": now, "exp": now + 600, **claims}
    if s.jwt_audience:
        body["aud"] = s.jwt_audience
    if s.jwt_issuer:
        body["iss"] = s.jwt_issuer
    return {"Authorization": "Bearer " + jwt.encode(body, s.jwt_secret, algorithm="HS256")}


def test_the_identity_claim_names_the_person(client, monkeypatch):
    monkeypatch.setenv("ADMIN_IDENTITY_CLAIM", "email")
    reset_settings()
    try:
        code = big(client)
        # given two client ids of one person (same e-mail, in another case)
        one = _token({"sub": uid("desk-1-"), "email": "Carol@retailer.example"})
        two = _token({"sub": uid("desk-2-"), "email": "carol@RETAILER.example"})
        asked = adjust(client, code, "DEBIT", "6000.00", headers=one).json
        # then the second cannot approve what the first asked for
        refused = client.post(f"/adjustments/{asked['adjustmentId']}/approve", headers=two)
        # and an admin token without the claim names nobody: refused
        anonymous = client.post(f"/adjustments/{asked['adjustmentId']}/approve",
                                headers=_token({"sub": uid("desk-3-")}))
        other = _token({"sub": uid("desk-4-"), "email": "dave@retailer.example"})
        approved = client.post(f"/adjustments/{asked['adjustmentId']}/approve", headers=other)
    finally:
        monkeypatch.delenv("ADMIN_IDENTITY_CLAIM")
        reset_settings()
    assert refused.status_code == 403 and refused.json["code"] == "SELF_APPROVAL_FORBIDDEN"
    assert anonymous.status_code == 401 and "email" in anonymous.json["message"]
    assert approved.status_code == 200 and approved.json["status"] == "APPLIED"


# ---- two approvals at once ---------------------------------------------------------------------

def test_two_approvals_racing_apply_once(app):
    client = app.test_client()
    currency = unique_currency()
    code = big(client, "20000.00", currency)
    load(1, None, currency)
    adj = adjust(client, code, "DEBIT", "6000.00", headers=admin("support-1")).json["adjustmentId"]
    trf = transfer(client, issued("9000.00", currency), headers=admin("support-1")).json["transferId"]
    for path in (f"/adjustments/{adj}/approve", f"/transfers/{trf}/approve"):
        answers = run_at_once([(lambda who: lambda: app.test_client().post(path, headers=admin(who)))(who)
                               for who in ("support-2", "support-3", "support-4")])
        codes = sorted((a.status_code, (a.json or {}).get("code")) for a in answers)
        # one carries it out; the others find it decided (or gave up waiting for the lock)
        assert codes[0][0] == 200, codes
        assert all(c[1] in ("ADJUSTMENT_NOT_PENDING", "TRANSFER_NOT_PENDING", "LOCK_TIMEOUT") for c in codes[1:]), codes
    assert view(client, code)["remainingBalance"] == "14000.00"
    with db.connection_context():
        assert CertificateTransfer.select().where(CertificateTransfer.id == trf).count() == 1
        moved = [e for e in OutboxEvent.select().where(OutboxEvent.event_type.in_(("adjust", "transfer")))
                 if e.envelope["payload"].get("adjustmentId") == adj or e.envelope["payload"].get("transferId") == trf]
    assert sorted(e.event_type for e in moved) == ["adjust", "transfer", "transfer"]


def test_verify_finds_nothing_wrong_after_the_four_eyes_flows(client):
    from workers.verify import Scope, verify

    code = big(client)
    asked = transfer(client, code, headers=admin("support-1")).json
    client.post(f"/transfers/{asked['transferId']}/reject", headers=admin("support-2"))
    again = transfer(client, code, headers=admin("support-1")).json
    load(1, None, view(client, code)["currency"])
    assert client.post(f"/transfers/{again['transferId']}/approve", headers=admin("support-2")).status_code == 200
    with db.connection_context():
        target = CertificateTransfer.get_by_id(again["transferId"]).to_certificate.code
        assert verify(db.connection(), Scope.of(codes=[code, target])) == []
