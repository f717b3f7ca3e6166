"""The certificate routes through HTTP against real PostgreSQL and Redis: reserve, read,
search, ledger, audit, CVC disclosure, support actions, notifications."""
import json
from decimal import Decimal

import pytest

from app import create_app
from config import get_settings
from models.store.db import db
from models.store.tables import OutboxEvent
from tests.helpers import issued, load, uid, unique_currency
from tests.integration.apikit import auth, authorize, cvc_of, issued_with_cvc, reserve_body, row


@pytest.fixture(scope="module")
def client(stack):
    return create_app(get_settings()).test_client()


def test_reserve_next_is_201_then_200_for_the_same_order_line(client):
    # given a pool of two certificates in an isolated currency
    currency = unique_currency()
    codes = load(2, "1500.00", currency)
    body = reserve_body(currency, "1500.00")
    headers = auth(channel="ONLINE_STORE")
    # when the order line is reserved twice
    first = client.post("/certificates/next", json=body, headers=headers)
    again = client.post("/certificates/next", json=body, headers=headers)
    # then the first is a new reservation and the second the same certificate
    assert first.status_code == 201, first.json
    assert first.json["code"] == codes[0] and first.json["status"] == "RESERVED"
    assert first.json["nominal"] == "1500.00" and first.json["reservedUntil"].endswith("Z")
    assert again.status_code == 200 and again.json["code"] == codes[0]
    assert row(codes[1]).status == "AVAILABLE"


def test_reserve_prefers_printed_nominal_then_open_value(client):
    # given an open-value certificate loaded before one printed for 500.00
    currency = unique_currency()
    open_code = load(1, None, currency)[0]
    printed = load(1, "500.00", currency)[0]
    # when two lines of 500.00 and one of 700.00 are reserved
    a = client.post("/certificates/next", json=reserve_body(currency, "500.00"), headers=auth())
    b = client.post("/certificates/next", json=reserve_body(currency, "700.00"), headers=auth())
    c = client.post("/certificates/next", json=reserve_body(currency, "500.00"), headers=auth())
    # then the printed one goes first, the open-value one takes 700.00, and the pool is empty
    assert a.json["code"] == printed
    assert b.status_code == 201 and b.json["code"] == open_code and b.json["nominal"] == "700.00"
    assert c.status_code == 409 and c.json["code"] == "POOL_EMPTY"


def test_reserve_given_code_of_a_physical_card_and_default_currency(client):
    # given a physical card in RUB (the default currency)
    code = load(1, "3000.00", "RUB", kind="PHYSICAL")[0]
    body = {"channel": "POS", "orderId": uid("order-"), "lineId": "7", "nominal": "3000.00",
            "code": code}
    # when POS reserves that scanned card without naming the currency
    resp = client.post("/certificates/next", json=body, headers=auth(channel="POS"))
    # then exactly that card is reserved for the POS order line
    assert resp.status_code == 201, resp.json
    assert resp.json["code"] == code and resp.json["currency"] == "RUB"
    stored = row(code)
    assert (stored.channel, stored.order_id, stored.line_id) == ("POS", body["orderId"], "7")


def test_deprecated_get_alias_reserves_like_the_post(client):
    # given a pool in an isolated currency
    currency = unique_currency()
    code = load(1, "1000.00", currency)[0]
    order = uid("order-")
    query = f"channel=ONLINE_STORE&orderId={order}&lineId=1&nominal=1000.00&currency={currency}"
    # when the first-draft GET form is used twice
    first = client.get("/certificates/next?" + query, headers=auth())
    again = client.get("/certificates/next?" + query, headers=auth())
    # then it reserves once and is marked deprecated in the OpenAPI document
    assert first.status_code == 201 and first.json["code"] == code
    assert again.status_code == 200 and again.json["code"] == code
    spec = client.get("/openapi.json").json
    assert spec["paths"]["/certificates/next"]["get"]["deprecated"] is True


def test_empty_pool_is_409_with_issue_blocked_event(client):
    # given a currency with no pool
    currency = unique_currency()
    body = reserve_body(currency, "100.00")
    # when a reservation is asked for
    resp = client.post("/certificates/next", json=body, headers=auth())
    # then POOL_EMPTY and an issue.blocked event keyed by the order
    assert resp.status_code == 409
    assert resp.json == {"code": "POOL_EMPTY", "message": resp.json["message"],
                         "details": {"nominal": "100.00", "currency": currency}}
    with db.connection_context():
        event = OutboxEvent.get(OutboxEvent.message_key == body["orderId"])
    assert event.event_type == "issue.blocked"
    assert event.envelope["payload"]["orderId"] == body["orderId"]


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
    from observability import Heartbeat

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


def test_cvc_disclosed_once_per_notification_request_and_audited(client):
    # given an issued electronic certificate waiting for its notification
    code = issued("100.00")
    crm = auth("certificates:cvc", client_id="crm")
    # when CRM fetches the CVC twice
    first = client.get(f"/certificates/{code}/cvc", headers=crm)
    second = client.get(f"/certificates/{code}/cvc", headers=crm)
    # then it gets it once, uncached, and the disclosure is audited
    assert first.status_code == 200 and first.json["code"] == code
    assert first.json["cvc"].isdigit() and len(first.json["cvc"]) == get_settings().cvc_length
    assert first.headers["Cache-Control"] == "no-store"
    assert second.status_code == 409 and second.json["code"] == "CVC_ALREADY_DISCLOSED"
    trail = client.get(f"/certificates/{code}/audit", headers=auth("certificates:admin")).json["items"]
    disclosed = [a for a in trail if a["action"] == "audit"]
    assert disclosed and disclosed[0]["actor"] == "crm"
    assert first.json["cvc"] not in str(trail)


def test_lock_unlock_returns_to_previous_status_and_cancel_is_terminal(client):
    # given a partially redeemed certificate
    code, cvc = issued_with_cvc("1000.00")
    hold = authorize(client, code, cvc, "100.00").json
    client.post(f"/authorizations/{hold['authorizationId']}/capture", headers=auth())
    admin = auth("certificates:admin")
    # when support locks, unlocks, then cancels it
    locked = client.post(f"/certificates/{code}/actions/lock", json={"reason": "CHECK"}, headers=admin)
    refused = authorize(client, code, cvc, "1.00")
    unlocked = client.post(f"/certificates/{code}/actions/unlock", headers=admin)
    cancelled = client.post(f"/certificates/{code}/actions/cancel", json={"reason": "ANNULLED"}, headers=admin)
    again = client.post(f"/certificates/{code}/actions/unlock", headers=admin)
    # then each answers the certificate in its new status
    assert locked.status_code == 200 and locked.json["status"] == "LOCKED"
    assert locked.json["lockReason"] == "CHECK"
    assert refused.status_code == 409 and refused.json["code"] == "NOT_REDEEMABLE"
    assert unlocked.json["status"] == "PARTIALLY_REDEEMED" and unlocked.json["lockReason"] is None
    assert cancelled.json["status"] == "CANCELLED"
    assert again.status_code == 409 and again.json["code"] == "INVALID_STATE"


def test_cancel_voids_active_holds(client):
    # given a certificate with an active hold
    code, cvc = issued_with_cvc("500.00")
    hold = authorize(client, code, cvc, "200.00").json
    # when it is cancelled
    resp = client.post(f"/certificates/{code}/actions/cancel", json={"reason": "X"},
                       headers=auth("certificates:admin"))
    # then the hold is gone and cannot be captured
    assert resp.status_code == 200 and resp.json["available"] == "500.00"
    cap = client.post(f"/authorizations/{hold['authorizationId']}/capture", headers=auth())
    assert cap.status_code == 409 and cap.json["code"] == "AUTHORIZATION_NOT_ACTIVE"


def test_notification_requested_again_after_failure_resends_the_same_cvc(client):
    # given a certificate whose notification failed, after CRM fetched its CVC
    from models.domain import commands
    from models.service import messagebus

    code = issued("100.00")
    old_cvc = client.get(f"/certificates/{code}/cvc", headers=auth("certificates:cvc")).json["cvc"]
    admin = auth("certificates:admin")
    early = client.post(f"/certificates/{code}/notifications", headers=admin)
    with db.connection_context():
        messagebus.handle(commands.NotificationResult(code, delivered=False, reason="UNREACHABLE"))
    # when support requests the notification again
    resp = client.post(f"/certificates/{code}/notifications", headers=admin)
    # then it is accepted, and CRM can fetch the very same CVC once more (the buyer may hold it)
    assert early.status_code == 409 and early.json["code"] == "INVALID_STATE"
    assert resp.status_code == 202 and resp.json["notificationStatus"] == "NOTIFICATION_REQUESTED"
    new = client.get(f"/certificates/{code}/cvc", headers=auth("certificates:cvc"))
    assert new.status_code == 200 and new.json["cvc"] == old_cvc == cvc_of(code)
    again = client.get(f"/certificates/{code}/cvc", headers=auth("certificates:cvc"))
    assert again.status_code == 409 and again.json["code"] == "CVC_ALREADY_DISCLOSED"
    # and the buyer's CVC still authorizes
    assert authorize(client, code, old_cvc, "1.00").status_code == 201


def test_expired_certificate_cannot_be_authorized(client):
    # given an issued certificate whose expiresAt has passed
    import datetime as dt

    from models.store.tables import GiftCertificate

    code, cvc = issued_with_cvc("100.00")
    with db.connection_context():
        GiftCertificate.update(expires_at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)).where(
            GiftCertificate.code == code).execute()
    from models.store import cache
    cache.invalidate([code])
    # when it is authorized
    resp = authorize(client, code, cvc, "1.00")
    # then it is not redeemable
    assert resp.status_code == 409 and resp.json["code"] == "NOT_REDEEMABLE"


def test_access_log_line_per_call_and_the_cvc_never_logged(client, caplog):
    # given a certificate whose CVC CRM fetches
    import logging

    code = issued("100.00")
    caplog.set_level(logging.INFO)
    # when the CVC is disclosed with a known request id
    resp = client.get(f"/certificates/{code}/cvc",
                      headers={**auth("certificates:cvc", client_id="crm-log"), "X-Request-ID": "req-log-1"})
    # then one structured access line names client, route, status and duration, and no log has the CVC
    assert resp.status_code == 200
    lines = [r for r in caplog.records if r.name == "gcp.access"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.client, line.route, line.status, line.method) == (
        "crm-log", "/certificates/<code>/cvc", 200, "GET")
    assert line.durationMs >= 0 and resp.headers["X-Request-ID"] == "req-log-1"
    from observability import JsonFormatter, request_id_var

    token = request_id_var.set("req-log-1")
    try:
        assert '"requestId": "req-log-1"' in JsonFormatter().format(line)
    finally:
        request_id_var.reset(token)
    assert all(resp.json["cvc"] not in r.getMessage() + str(r.__dict__) for r in caplog.records)


def test_reservation_expiry_returns_to_pool_unless_payment_seen(client):
    # given two reservations past reservedUntil, one of whose orders has a payment
    import datetime as dt

    from models.domain import commands
    from models.service import messagebus
    from models.store.tables import GiftCertificate, OrderPayment

    currency = unique_currency()
    load(2, "100.00", currency)
    lapsed, paid = (client.post("/certificates/next", json=reserve_body(currency, "100.00"), headers=auth()).json
                    for _ in range(2))
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    with db.connection_context():
        GiftCertificate.update(reserved_until=past).where(
            GiftCertificate.code.in_([lapsed["code"], paid["code"]])).execute()
        OrderPayment.create(event_id=uid("evt-"), order_id=paid["orderId"], payment_id=uid("pay-"),
                            event_type="PAYMENT_CAPTURED", channel="ONLINE_STORE", amount=Decimal("100.00"),
                            currency=currency, method="CARD", payload={}, created_at=past)
        # when the scheduler expires both reservations
        results = {code: messagebus.handle(commands.ExpireReservation(code)) for code in (lapsed["code"], paid["code"])}
    # then the unpaid one is back in the pool, the paid one stays reserved
    assert results[lapsed["code"]]["status"] == "AVAILABLE" and results[paid["code"]] is None
    assert row(lapsed["code"]).status == "AVAILABLE" and row(lapsed["code"]).order_id is None
    assert row(paid["code"]).status == "RESERVED"
    with db.connection_context():
        release = OutboxEvent.select().where((OutboxEvent.message_key == lapsed["code"])
                                             & (OutboxEvent.event_type == "release")).get()
    assert release.envelope["payload"]["reason"] == "RESERVATION_EXPIRED"
    assert release.envelope["correlationId"] == lapsed["orderId"]


def test_validity_days_give_issued_certificates_an_expiry(client, monkeypatch):
    # given CERTIFICATE_VALIDITY_DAYS=30 (certificates have no expiry by default)
    import datetime as dt

    from config import reset_settings

    monkeypatch.setenv("CERTIFICATE_VALIDITY_DAYS", "30")
    reset_settings()
    try:
        # when a certificate is issued
        code = issued("100.00")
    finally:
        monkeypatch.delenv("CERTIFICATE_VALIDITY_DAYS")
        reset_settings()
    # then it expires 30 days later
    expires = client.get(f"/certificates/{code}", headers=auth()).json["expiresAt"]
    delta = dt.datetime.fromisoformat(expires.replace("Z", "+00:00")) - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=29, hours=23) < delta <= dt.timedelta(days=30)


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
