"""Authorize, capture and void through HTTP: holds, partial capture, CVC attempts, expiry."""
import datetime as dt
from decimal import Decimal

from config import get_settings
from models.store.db import db
from models.store.tables import AuthorizationHold, OutboxEvent
from tests.integration.apikit import auth, authorize, issued_with_cvc, row


def test_authorize_places_a_hold_that_lowers_available(client):
    # given a certificate of 1000.00
    code, cvc = issued_with_cvc("1000.00")
    # when 300.00 is authorized
    resp = authorize(client, code, cvc, "300.00")
    # then a hold of 300.00 expiring in 15 minutes leaves 700.00 available
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert body["amount"] == "300.00" and body["available"] == "700.00" and body["status"] == "ACTIVE"
    expires = dt.datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    ttl = (expires - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert get_settings().hold_ttl_seconds - 60 < ttl <= get_settings().hold_ttl_seconds
    view = client.get(f"/certificates/{code}", headers=auth()).json
    assert view["remainingBalance"] == "1000.00" and view["available"] == "700.00"


def test_partial_capture_debits_and_releases_the_rest(client):
    # given a hold of 400.00 on 1000.00
    code, cvc = issued_with_cvc("1000.00")
    hold = authorize(client, code, cvc, "400.00").json
    # when 150.00 of it is captured
    resp = client.post(f"/authorizations/{hold['authorizationId']}/capture", json={"amount": "150.00"},
                       headers=auth(channel="POS"))
    # then 150.00 is debited and 250.00 goes back to available
    assert resp.status_code == 200, resp.json
    assert resp.json == {"authorizationId": hold["authorizationId"], "code": code, "captured": "150.00",
                         "remainingBalance": "850.00", "status": "PARTIALLY_REDEEMED", "currency": "RUB"}
    assert client.get(f"/certificates/{code}", headers=auth()).json["available"] == "850.00"
    again = client.post(f"/authorizations/{hold['authorizationId']}/capture", headers=auth())
    assert again.status_code == 409 and again.json["code"] == "AUTHORIZATION_NOT_ACTIVE"


def test_full_capture_redeems_and_void_releases(client):
    # given two holds on 500.00
    code, cvc = issued_with_cvc("500.00")
    h1 = authorize(client, code, cvc, "200.00").json
    h2 = authorize(client, code, cvc, "300.00").json
    # when the first is voided and the second captured in full
    void = client.post(f"/authorizations/{h1['authorizationId']}/void", headers=auth())
    cap = client.post(f"/authorizations/{h2['authorizationId']}/capture", headers=auth())
    # then the void released 200.00 and the capture left 200.00
    assert void.status_code == 200 and void.json["status"] == "VOIDED" and void.json["available"] == "200.00"
    assert cap.json["captured"] == "300.00" and cap.json["remainingBalance"] == "200.00"
    void_again = client.post(f"/authorizations/{h1['authorizationId']}/void", headers=auth())
    assert void_again.status_code == 409 and void_again.json["code"] == "AUTHORIZATION_NOT_ACTIVE"
    types = _stream_types(code)
    assert types[-3:] == ["authorization.created", "authorization.voided", "authorization.captured"]


def test_capture_of_all_leaves_redeemed(client):
    code, cvc = issued_with_cvc("100.00")
    hold = authorize(client, code, cvc, "100.00").json
    resp = client.post(f"/authorizations/{hold['authorizationId']}/capture", headers=auth())
    assert resp.json["status"] == "REDEEMED" and resp.json["remainingBalance"] == "0.00"
    assert authorize(client, code, cvc, "1.00").json["code"] == "NOT_REDEEMABLE"


def test_five_wrong_cvcs_in_a_row_lock_with_an_alert(client):
    # given a certificate and its CVC
    code, cvc = issued_with_cvc("100.00")
    wrong = "0" * len(cvc) if cvc != "0" * len(cvc) else "1" * len(cvc)
    # when four wrong CVCs, a right one, then five wrong ones are presented
    answers = [authorize(client, code, wrong, "1.00") for _ in range(4)]
    ok = authorize(client, code, cvc, "1.00")
    answers += [authorize(client, code, wrong, "1.00") for _ in range(5)]
    # then the right one reset the run, and only the fifth wrong one in a row locked it
    assert ok.status_code == 201
    assert [a.status_code for a in answers] == [403] * 9
    assert all(a.json["code"] == "CVC_MISMATCH" for a in answers)
    assert answers[3].json["details"]["attemptsLeft"] == 1
    stored = row(code)
    assert stored.status == "LOCKED" and stored.lock_reason == "CVC_ATTEMPTS"
    with db.connection_context():
        alerts = OutboxEvent.select().where((OutboxEvent.message_key == code)
                                            & (OutboxEvent.event_type == "alert")).count()
    assert alerts == 1
    refused = authorize(client, code, cvc, "1.00")
    assert refused.status_code == 409 and refused.json["code"] == "NOT_REDEEMABLE"


def test_correct_cvc_resets_the_count_even_when_funds_are_short(client):
    # given four wrong CVCs in a row
    code, cvc = issued_with_cvc("100.00")
    for _ in range(4):
        authorize(client, code, "9" * 7, "1.00")
    # when the right CVC comes with too large an amount
    short = authorize(client, code, cvc, "500.00")
    # then funds are short but the wrong-CVC run is over
    assert short.status_code == 409 and short.json["code"] == "INSUFFICIENT_FUNDS"
    assert row(code).cvc_failed_attempts == 0


def test_overdue_hold_no_longer_reserves_money(client):
    # given a hold of 800.00 of 1000.00 whose time is up (the scheduler has not run)
    code, cvc = issued_with_cvc("1000.00")
    hold = authorize(client, code, cvc, "800.00").json
    with db.connection_context():
        AuthorizationHold.update(expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).where(
            AuthorizationHold.id == hold["authorizationId"]).execute()
    # when it is captured, and another 900.00 is authorized
    cap = client.post(f"/authorizations/{hold['authorizationId']}/capture", headers=auth())
    other = authorize(client, code, cvc, "900.00")
    # then the capture is refused as expired and the new hold finds the money free again
    assert cap.status_code == 409 and cap.json["code"] == "AUTHORIZATION_EXPIRED"
    assert other.status_code == 201 and other.json["available"] == "100.00"
    with db.connection_context():
        assert AuthorizationHold.get_by_id(hold["authorizationId"]).status == "EXPIRED"
    assert "authorization.expired" in _stream_types(code)


def test_capture_amount_rules(client):
    code, cvc = issued_with_cvc("1000.00")
    hold = authorize(client, code, cvc, "100.00").json
    url = f"/authorizations/{hold['authorizationId']}/capture"
    more = client.post(url, json={"amount": "100.01"}, headers=auth())
    zero = client.post(url, json={"amount": "0.00"}, headers=auth())
    other_currency = client.post(url, json={"amount": "50.00", "currency": "USD"}, headers=auth())
    assert more.status_code == 422 and more.json["code"] == "AMOUNT_EXCEEDS_HOLD"
    assert zero.status_code == 422 and zero.json["code"] == "VALIDATION_ERROR"
    assert other_currency.status_code == 422 and other_currency.json["code"] == "CURRENCY_MISMATCH"
    assert client.post(url, json={"amount": "100.00", "currency": "RUB"}, headers=auth()).status_code == 200


def test_channel_token_captures_only_its_own_channel_holds(client):
    # given a POS hold
    code, cvc = issued_with_cvc("1000.00")
    hold = authorize(client, code, cvc, "100.00", channel="POS").json
    # when ONLINE_STORE tries to capture or void it, then POS captures it
    online = auth("certificates:redeem", channel="ONLINE_STORE")
    cap = client.post(f"/authorizations/{hold['authorizationId']}/capture", headers=online)
    void = client.post(f"/authorizations/{hold['authorizationId']}/void", headers=online)
    mine = client.post(f"/authorizations/{hold['authorizationId']}/capture",
                       headers=auth("certificates:redeem", channel="POS"))
    # then the other channel is told the hold does not exist
    assert cap.status_code == 404 and cap.json["code"] == "AUTHORIZATION_NOT_FOUND"
    assert void.status_code == 404 and void.json["code"] == "AUTHORIZATION_NOT_FOUND"
    assert mine.status_code == 200


def test_unknown_or_malformed_authorization_is_404(client):
    for ident in ("auth-" + "0" * 32, "nope", "auth-%00", "x" * 300):
        resp = client.post(f"/authorizations/{ident}/capture", headers=auth())
        assert resp.status_code == 404 and resp.json["code"] == "AUTHORIZATION_NOT_FOUND"


def _stream_types(code):
    from models.store.tables import GiftCertificate

    with db.connection_context():
        return [e.event_type for e in OutboxEvent.select().join(GiftCertificate)
                .where(GiftCertificate.code == code).order_by(OutboxEvent.id)]


def test_hold_money_is_exact_decimal(client):
    code, cvc = issued_with_cvc("0.30")
    a = authorize(client, code, cvc, "0.10").json
    b = authorize(client, code, cvc, "0.20").json
    assert b["available"] == "0.00"
    for h in (a, b):
        client.post(f"/authorizations/{h['authorizationId']}/capture", headers=auth())
    view = client.get(f"/certificates/{code}", headers=auth()).json
    assert Decimal(view["remainingBalance"]) == Decimal("0.00") and view["status"] == "REDEEMED"
