"""Reading certificates through HTTP against real PostgreSQL and Redis: one certificate (its
contract fields, and a cached copy never stale after a write, Redis away or not), the search,
the ledger of operations and the audit trail."""
import json
from decimal import Decimal

from models.store.db import db
from tests.helpers import issued, uid, unique_currency
from tests.integration.apikit import auth, authorize, cvc_of, issued_with_cvc, row


def test_get_certificate_has_the_contract_fields_and_no_cvc(client):
    # given an issued certificate
    code = issued("1500.00")
    # when it is read
    resp = client.get(f"/certificates/{code}", headers=auth("certificates:read"))
    # then every contract field is there and the CVC is not
    assert resp.status_code == 200
    body = resp.json
    for name in ("code", "status", "nominal", "remainingBalance", "available", "currency", "channel",
                 "orderId", "issuedAt", "expiresAt", "lockReason", "notificationStatus"):
        assert name in body
    assert "cvc" not in {k.lower() for k in body} and cvc_of(code) not in str(body)
    assert body["status"] == "ISSUED" and body["remainingBalance"] == "1500.00"
    assert body["available"] == "1500.00" and body["expiresAt"] is None


def test_cached_read_is_never_stale_after_a_write(client):
    # given a certificate read once (now cached in Redis)
    code, cvc = issued_with_cvc("1000.00")
    assert client.get(f"/certificates/{code}", headers=auth()).json["available"] == "1000.00"
    # when a hold is placed and then captured
    hold = authorize(client, code, cvc, "250.00").json
    after_hold = client.get(f"/certificates/{code}", headers=auth()).json
    client.post(f"/authorizations/{hold['authorizationId']}/capture", json={}, headers=auth())
    after_capture = client.get(f"/certificates/{code}", headers=auth()).json
    # then each read shows the latest state
    assert after_hold["available"] == "750.00" and after_hold["remainingBalance"] == "1000.00"
    assert after_capture["remainingBalance"] == "750.00" and after_capture["available"] == "750.00"
    assert after_capture["status"] == "PARTIALLY_REDEEMED"


def test_a_write_while_redis_is_away_leaves_no_stale_copy_once_it_is_back(client):
    """Found by the chaos suite (redis scenario): a copy cached before the outage kept its
    stamp when the writer's bump failed, and was served, stale, once Redis came back."""
    import redis

    from devstack import free_port
    from models.store import cache
    from models.store.liveness import Heartbeat

    code = issued("1000.00")
    admin = auth("certificates:admin certificates:read")
    assert client.get(f"/certificates/{code}", headers=admin).json["status"] == "ISSUED"  # cached now
    # when the certificate is locked while Redis does not answer
    real = cache.client()
    cache._client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        resp = client.post(f"/certificates/{code}/actions/lock", json={"reason": "FRAUD_SUSPECTED"},
                           headers={**admin, "Idempotency-Key": uid("k-")})
        assert resp.status_code == 200, resp.json
        assert code in cache._missed  # the bump failed and is kept
    finally:
        cache._client = real
    # then, Redis back, the stale copy is still there until the bump goes through ...
    assert json.loads(real.get(f"gcp:cert:{code}"))["view"]["status"] == "ISSUED"
    # ... which the writer's next heartbeat sends (any process reading it now sees the lock)
    Heartbeat("test").beat()
    assert not cache._missed and real.get(f"gcp:cert:{code}") is None
    assert client.get(f"/certificates/{code}", headers=admin).json["status"] == "LOCKED"


def test_a_read_of_a_certificate_whose_bump_is_still_missing_is_not_served_from_the_cache(client):
    from models.store import cache

    code = issued("1000.00")
    admin = auth("certificates:admin certificates:read")
    client.get(f"/certificates/{code}", headers=admin)  # cached
    with db.connection_context():
        db.execute_sql("UPDATE gift_certificate SET status = 'LOCKED', status_before_lock = status,"
                       " lock_reason = 'X' WHERE code = %s", (code,))
    with cache._missed_lock:
        cache._missed.add(code)  # as after a failed bump; and Redis refuses the retry too
    real, cache._client = cache.client(), None
    try:
        import redis

        from devstack import free_port

        cache._client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
        assert client.get(f"/certificates/{code}", headers=admin).json["status"] == "LOCKED"
    finally:
        cache._client = real
        cache.retry_missed()


def test_search_filters_and_paginates(client):
    # given three certificates issued for POS in an isolated currency, one for ONLINE_STORE
    currency = unique_currency()
    pos = [issued("100.00", currency, "POS") for _ in range(3)]
    online = issued("100.00", currency, "ONLINE_STORE")
    admin = auth("certificates:admin")
    order = row(pos[0]).order_id
    # when searching by channel with pages of two, and by order id
    page1 = client.get("/certificates?channel=POS&status=ISSUED&page_size=2&page=1", headers=admin).json
    by_order = client.get(f"/certificates?orderId={order}", headers=admin).json
    # then pages hold at most two, newest first, and the order filter finds its certificate
    assert page1["page"] == 1 and page1["pageSize"] == 2 and len(page1["items"]) == 2
    assert page1["total"] >= 3 and all(i["channel"] == "POS" for i in page1["items"])
    assert [i["code"] for i in by_order["items"]] == [pos[0]] and by_order["total"] == 1
    assert online not in [i["code"] for i in page1["items"]]


def test_search_by_issue_time_window(client):
    # given a certificate issued now
    code = issued("100.00")
    issued_at = client.get(f"/certificates/{code}", headers=auth()).json["issuedAt"]
    # when searching a window around it and one before it
    inside = client.get("/certificates", query_string={"issuedFrom": issued_at, "orderId": row(code).order_id},
                        headers=auth()).json
    before = client.get("/certificates", query_string={"issuedTo": issued_at, "orderId": row(code).order_id},
                        headers=auth()).json
    # then only the window containing the issue time finds it
    assert [i["code"] for i in inside["items"]] == [code]
    assert before["items"] == []


def test_channel_token_search_is_limited_to_its_channel(client):
    # given a certificate issued for ONLINE_STORE
    code = issued("100.00", channel="ONLINE_STORE")
    order = row(code).order_id
    pos = auth("certificates:read", channel="POS")
    # when POS searches for that order, or asks for ONLINE_STORE explicitly
    found = client.get(f"/certificates?orderId={order}", headers=pos)
    other = client.get("/certificates?channel=ONLINE_STORE", headers=pos)
    # then it sees nothing of the other channel, and asking is refused
    assert found.status_code == 200 and found.json["items"] == []
    assert other.status_code == 403 and other.json["code"] == "CHANNEL_FORBIDDEN"
    # but a balance read of that certificate is allowed (not personalised)
    assert client.get(f"/certificates/{code}", headers=pos).status_code == 200


def test_empty_query_filters_count_as_not_given(client):
    # given an issued certificate
    code = issued("100.00")
    order = row(code).order_id
    # when searching with the contract's template of empty filters
    resp = client.get(f"/certificates?status=&channel=&orderId={order}&issuedFrom=&issuedTo=&page=&page_size=",
                      headers=auth())
    # then the empty ones are ignored
    assert resp.status_code == 200, resp.json
    assert [i["code"] for i in resp.json["items"]] == [code] and resp.json["pageSize"] == 20


def test_operations_ledger_oldest_first_sums_to_the_balance(client):
    # given a certificate of 1000.00 with two captures
    code, cvc = issued_with_cvc("1000.00")
    for amount in ("100.00", "250.50"):
        hold = authorize(client, code, cvc, amount).json
        client.post(f"/authorizations/{hold['authorizationId']}/capture", headers=auth())
    # when the ledger is read
    resp = client.get(f"/certificates/{code}/operations", headers=auth("certificates:read"))
    # then it lists issue and the two debits, oldest first, adding up to the balance
    items = resp.json["items"]
    assert [(i["kind"], i["amount"]) for i in items] == [
        ("ISSUE", "1000.00"), ("REDEEM", "-100.00"), ("REDEEM", "-250.50")]
    assert items[-1]["balanceAfter"] == "649.50" and resp.json["total"] == 3
    assert sum(Decimal(i["amount"]) for i in items) == Decimal("649.50")
    assert items[1]["authorizationId"].startswith("auth-")


def test_audit_trail_records_who_what_when_request_id_before_after(client):
    # given a certificate locked by a support user with a known request id
    code = issued("100.00")
    admin = {**auth("certificates:admin", client_id="support-7"), "X-Request-ID": "req-audit-1"}
    client.post(f"/certificates/{code}/actions/lock", json={"reason": "FRAUD_SUSPECTED"}, headers=admin)
    # when the audit trail is read
    resp = client.get(f"/certificates/{code}/audit", headers=admin)
    # then the lock is there with actor, request id, before and after
    assert resp.status_code == 200
    lock = [a for a in resp.json["items"] if a["action"] == "lock"][0]
    assert lock["actor"] == "support-7" and lock["requestId"] == "req-audit-1"
    assert lock["before"]["status"] == "ISSUED" and lock["after"]["status"] == "LOCKED"
    assert lock["details"]["reason"] == "FRAUD_SUSPECTED" and lock["at"].endswith("Z")
    assert [a["action"] for a in resp.json["items"]][:2] == ["reserve", "issue"]
