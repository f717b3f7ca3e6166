"""The support tools through HTTP against real PostgreSQL and Redis, repeated under one
Idempotency-Key: an adjustment, its approval, a transfer and a refusal each take effect once and
are replayed."""
from tests.e2e import flow
from tests.helpers import issued, load, uid
from tests.integration.supportkit import adjust, admin, events, ledger, view


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
