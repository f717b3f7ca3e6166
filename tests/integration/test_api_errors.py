"""Every error code the API answers, in the contract's error model, and no 500 for bad input."""
import dataclasses
import datetime as dt
import json
import re
import time

import jwt
import pytest

from api.errors import ERROR_STATUS
from app import create_app
from config import get_settings
from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import AuthorizationHold
from tests.helpers import issued, load, uid, unique_currency
from tests.integration.apikit import auth, authorize, issued_with_cvc, reserve_body


@pytest.fixture(scope="module")
def client(stack):
    return create_app(get_settings()).test_client()


def is_error(resp, status: int, code: str) -> bool:
    body = resp.get_json(silent=True)
    assert resp.status_code == status, (resp.status_code, body)
    assert isinstance(body, dict) and set(body) == {"code", "message", "details"}, body
    assert body["code"] == code and isinstance(body["message"], str) and isinstance(body["details"], dict)
    assert ERROR_STATUS.get(code, status) == status
    return True


# ---- one scenario per error code -------------------------------------------------------------

def s_validation_error(c):
    body = reserve_body("RUB", nominal=1500.0)  # a float, not the money string
    return is_error(c.post("/certificates/next", json=body, headers=auth()), 422, "VALIDATION_ERROR")


def s_bad_request(c):
    return is_error(c.post("/certificates/next", data=b'{"channel": ', content_type="application/json",
                           headers=auth()), 400, "BAD_REQUEST")


def s_payload_too_large(c):
    big = json.dumps({"reason": "x" * (get_settings().max_body_bytes + 10)})
    return is_error(c.post(f"/certificates/{issued()}/actions/lock", data=big,
                           content_type="application/json", headers=auth()), 413, "PAYLOAD_TOO_LARGE")


def s_unsupported_media_type(c):
    return is_error(c.post("/certificates/next", data="channel=POS", content_type="application/x-www-form-urlencoded",
                           headers=auth()), 415, "UNSUPPORTED_MEDIA_TYPE")


def s_unauthorized(c):
    return is_error(c.get("/certificates/ABCDEF1"), 401, "UNAUTHORIZED")


def s_forbidden(c):
    return is_error(c.get("/certificates/ABCDEF1/audit", headers=auth("certificates:read")), 403, "FORBIDDEN")


def s_channel_forbidden(c):
    body = reserve_body("RUB", channel="ONLINE_STORE")
    return is_error(c.post("/certificates/next", json=body, headers=auth(channel="POS")), 403, "CHANNEL_FORBIDDEN")


def s_cvc_mismatch(c):
    code, cvc = issued_with_cvc()
    return is_error(authorize(c, code, "1" + cvc, "1.00"), 403, "CVC_MISMATCH")


def s_not_found(c):
    return is_error(c.get("/no/such/route", headers=auth()), 404, "NOT_FOUND")


def s_certificate_not_found(c):
    return is_error(c.get("/certificates/NOSUCHCODE1", headers=auth()), 404, "CERTIFICATE_NOT_FOUND")


def s_authorization_not_found(c):
    return is_error(c.post("/authorizations/auth-" + "f" * 32 + "/void", headers=auth()), 404,
                    "AUTHORIZATION_NOT_FOUND")


def s_method_not_allowed(c):
    resp = c.delete("/certificates/ABCDEF1", headers=auth())
    return is_error(resp, 405, "METHOD_NOT_ALLOWED") and "GET" in resp.headers["Allow"]


def s_pool_empty(c):
    return is_error(c.post("/certificates/next", json=reserve_body(unique_currency()), headers=auth()),
                    409, "POOL_EMPTY")


def s_invalid_state(c):
    return is_error(c.post(f"/certificates/{issued()}/actions/unlock", headers=auth()), 409, "INVALID_STATE")


def s_not_redeemable(c):
    code = load(1)[0]  # still AVAILABLE: not sold
    return is_error(authorize(c, code, "123456", "1.00"), 409, "NOT_REDEEMABLE")


def s_insufficient_funds(c):
    code, cvc = issued_with_cvc("100.00")
    return is_error(authorize(c, code, cvc, "100.01"), 409, "INSUFFICIENT_FUNDS")


def s_cvc_already_disclosed(c):
    code = issued()
    c.get(f"/certificates/{code}/cvc", headers=auth())
    return is_error(c.get(f"/certificates/{code}/cvc", headers=auth()), 409, "CVC_ALREADY_DISCLOSED")


def s_authorization_not_active(c):
    code, cvc = issued_with_cvc()
    hold = authorize(c, code, cvc, "1.00").json["authorizationId"]
    c.post(f"/authorizations/{hold}/void", headers=auth())
    return is_error(c.post(f"/authorizations/{hold}/capture", headers=auth()), 409, "AUTHORIZATION_NOT_ACTIVE")


def s_authorization_expired(c):
    code, cvc = issued_with_cvc()
    hold = authorize(c, code, cvc, "1.00").json["authorizationId"]
    with db.connection_context():
        AuthorizationHold.update(expires_at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)).where(
            AuthorizationHold.id == hold).execute()
    return is_error(c.post(f"/authorizations/{hold}/capture", headers=auth()), 409, "AUTHORIZATION_EXPIRED")


def s_nominal_mismatch(c):
    code = load(1, "500.00")[0]
    body = reserve_body("RUB", "700.00", code=code)
    return is_error(c.post("/certificates/next", json=body, headers=auth()), 409, "NOMINAL_MISMATCH")


def s_already_reserved(c):
    code = load(1, "500.00")[0]
    c.post("/certificates/next", json=reserve_body("RUB", "500.00", code=code), headers=auth())
    return is_error(c.post("/certificates/next", json=reserve_body("RUB", "500.00", code=code), headers=auth()),
                    409, "ALREADY_RESERVED")


def s_idempotency_in_progress(c, monkeypatch=None):
    import api.idempotency as idem

    headers = {**auth(client_id="idem-slow"), "Idempotency-Key": uid("k-")}
    body = reserve_body(unique_currency())
    app = c.application
    with app.test_request_context("/certificates/next", method="POST", json=body):
        digest = idem.request_hash()
    from models.store.tables import IdempotencyKey
    with db.connection_context():
        IdempotencyKey.create(client_id="idem-slow", key=headers["Idempotency-Key"], method="POST",
                              path="/certificates/next", request_hash=digest, status="IN_PROGRESS",
                              created_at=dt.datetime.now(dt.timezone.utc))
    resp = c.post("/certificates/next", json=body, headers=headers)
    return is_error(resp, 409, "IDEMPOTENCY_IN_PROGRESS") and "Retry-After" in resp.headers


def s_currency_mismatch(c):
    card = load(1, "100.00", "RUB", kind="PHYSICAL")[0]
    body = reserve_body("EUR", "100.00", code=card)
    assert is_error(c.post("/certificates/next", json=body, headers=auth()), 422, "CURRENCY_MISMATCH")
    code, cvc = issued_with_cvc("100.00", "RUB")
    return is_error(authorize(c, code, cvc, "1.00", currency="EUR"), 422, "CURRENCY_MISMATCH")


def s_amount_exceeds_hold(c):
    code, cvc = issued_with_cvc()
    hold = authorize(c, code, cvc, "10.00").json["authorizationId"]
    return is_error(c.post(f"/authorizations/{hold}/capture", json={"amount": "10.01"}, headers=auth()),
                    422, "AMOUNT_EXCEEDS_HOLD")


def s_idempotency_key_reused(c):
    headers = {**auth(), "Idempotency-Key": uid("k-")}
    c.post("/certificates/next", json=reserve_body(unique_currency()), headers=headers)
    return is_error(c.post("/certificates/next", json=reserve_body(unique_currency()), headers=headers),
                    422, "IDEMPOTENCY_KEY_REUSED")


def s_rate_limited(c):
    settings = dataclasses.replace(get_settings(), rate_limit="3/minute")
    limited = create_app(settings).test_client()
    headers = auth()
    answers = [limited.get("/certificates/NOSUCHCODE1", headers=headers) for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [404] * 3
    # the answers let through carry no rate-limit headers (each would cost a Redis round trip)
    assert not [h for a in answers[:3] for h in a.headers.keys() if h.startswith("X-RateLimit") or h == "Retry-After"]
    resp = answers[3]
    # the refusal says when the minute's window lets the client in again
    assert 1 <= int(resp.headers["Retry-After"]) <= 60 and resp.headers["X-Request-ID"].startswith("req-")
    other = limited.get("/certificates/NOSUCHCODE1", headers=auth())  # another client is not limited
    assert other.status_code == 404
    # one budget per client across every call, not one per route
    elsewhere = limited.get("/certificates/NOSUCHCODE1/operations", headers=headers)
    assert elsewhere.status_code == 429, elsewhere.status_code
    return is_error(resp, 429, "RATE_LIMITED")


def s_no_notification_pending(c):
    code = issued()
    crm = auth("certificates:cvc")
    messagebus.handle(commands.NotificationResult(code, True))  # delivered: nothing is pending any more
    return is_error(c.get(f"/certificates/{code}/cvc", headers=crm), 409, "NO_NOTIFICATION_PENDING")


def s_cvc_attempts_exceeded(c):
    import os

    from config import reset_settings

    before = os.environ.get("CVC_CLIENT_BUDGET")
    os.environ["CVC_CLIENT_BUDGET"] = "1/minute"
    reset_settings()
    try:
        headers = auth(channel="POS")
        (code, cvc), (other, other_cvc) = issued_with_cvc(), issued_with_cvc()
        assert authorize(c, code, "1" + cvc, "1.00", headers=headers).status_code == 403
        resp = authorize(c, other, other_cvc, "1.00", headers=headers)
        assert int(resp.headers["Retry-After"]) >= 1
        return is_error(resp, 429, "CVC_ATTEMPTS_EXCEEDED")
    finally:
        os.environ["CVC_CLIENT_BUDGET"] = before
        reset_settings()


# -- support tools (issue 16)

def _adjust(c, code, direction, amount, client_id=None):
    return c.post(f"/certificates/{code}/actions/adjust", headers=auth(client_id=client_id),
                  json={"direction": direction, "amount": amount, "reason": "SUPPORT_CORRECTION"})


def s_exceeds_nominal(c):
    return is_error(_adjust(c, issued("100.00"), "CREDIT", "0.01"), 409, "EXCEEDS_NOMINAL")


def s_holds_active(c):
    code, cvc = issued_with_cvc()
    authorize(c, code, cvc, "1.00")
    return is_error(c.post(f"/certificates/{code}/actions/transfer", json={"reason": "R"}, headers=auth()),
                    409, "HOLDS_ACTIVE")


def s_target_not_available(c):
    return is_error(c.post(f"/certificates/{issued()}/actions/transfer", json={"to": issued(), "reason": "R"},
                           headers=auth()), 409, "TARGET_NOT_AVAILABLE")


def s_adjustment_not_found(c):
    return is_error(c.post("/adjustments/adj-" + "f" * 32 + "/approve", headers=auth()), 404,
                    "ADJUSTMENT_NOT_FOUND")


def _pending(c, author="support-a"):
    return _adjust(c, issued("9000.00"), "DEBIT", "6000.00", client_id=author).json["adjustmentId"]


def s_adjustment_not_pending(c):
    adj = _pending(c)
    c.post(f"/adjustments/{adj}/reject", headers=auth())
    return is_error(c.post(f"/adjustments/{adj}/approve", headers=auth()), 409, "ADJUSTMENT_NOT_PENDING")


def s_adjustment_expired(c):
    from models.store.tables import BalanceAdjustment

    adj = _pending(c)
    with db.connection_context():
        BalanceAdjustment.update(expires_at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)).where(
            BalanceAdjustment.id == adj).execute()
    return is_error(c.post(f"/adjustments/{adj}/approve", headers=auth()), 409, "ADJUSTMENT_EXPIRED")


def s_self_approval_forbidden(c):
    adj = _pending(c, "support-self")
    return is_error(c.post(f"/adjustments/{adj}/approve", headers=auth(client_id="support-self")), 403,
                    "SELF_APPROVAL_FORBIDDEN")


SCENARIOS = {name[2:].upper(): fn for name, fn in dict(globals()).items() if name.startswith("s_")}


@pytest.mark.parametrize("code", sorted(SCENARIOS))
def test_error_code(client, code):
    # given/when the scenario that provokes it; then the contract's error model with that code
    assert SCENARIOS[code](client)


def test_every_documented_error_code_has_a_scenario(client):
    # given the OpenAPI document of the certificate and authorization routes
    spec = client.get("/openapi.json").json
    documented = set()
    for path, ops in spec["paths"].items():
        if not path.startswith(("/certificates", "/authorizations", "/adjustments")):
            continue
        for op in ops.values():
            for resp in op.get("responses", {}).values() if isinstance(op, dict) else ():
                m = re.match(r"error codes: (.*)", resp.get("description", ""))
                if m:
                    documented |= set(m.group(1).split(", "))
    # then each documented code is provoked by a test above, and all are in the error table
    assert documented - set(SCENARIOS) == set()
    assert documented <= set(ERROR_STATUS)


# ---- bad input never gives a 500 --------------------------------------------------------------

def _raw(c, path, data, content_type="application/json", headers=None):
    return c.post(path, data=data, content_type=content_type, headers=headers or auth())


BAD_BODIES = [
    # (body bytes, expected status)
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":1500}', 422),          # number, not string
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":"1500"}', 422),        # no decimals
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":"-1.00"}', 422),       # negative
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":"0.00"}', 422),        # zero
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":"1e3"}', 422),
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":"9999999999999.00"}', 422),  # 13 digits
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":1e999}', 422),         # infinity
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":' + b"9" * 5000 + b"}", 400),
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":NaN}', 400),
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":"1.00","extra":1}', 422),  # unknown
    (b'{"channel":"WEB","orderId":"o","lineId":"1","nominal":"1.00"}', 422),
    (b'{"channel":"POS","orderId":"' + b"o" * 200 + b'","lineId":"1","nominal":"1.00"}', 422),
    (b'{"channel":"POS","orderId":"a\\u0000b","lineId":"1","nominal":"1.00"}', 422),  # NUL
    (b'{"channel":"POS","orderId":"\\ud800","lineId":"1","nominal":"1.00"}', 422),     # lone surrogate
    (b'{"channel":"POS","orderId":"a\\nb","lineId":"1","nominal":"1.00"}', 422),      # control char
    (b'{"channel":"POS","orderId":{"a":1},"lineId":"1","nominal":"1.00"}', 422),
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":"1.00","code":"lower-case"}', 422),
    (b'{"channel":"POS","orderId":"o","lineId":"1","nominal":"1.00","currency":"rub"}', 422),
    (b'{"a":' * 2000 + b"1" + b"}" * 2000, 400),                                      # too deep
    (b'{"a":' * 40 + b"1" + b"}" * 40, 422),
    (b"[1, 2]", 422),
    (b'"text"', 422),
    (b"", 422),
    (b"{}", 422),
    (b"\xff\xfe{}", 400),                                                             # not UTF-8
    (b'\xef\xbb\xbf{"channel":"POS"}', 400),                                          # BOM
    (b"{'single': 'quotes'}", 400),
    (b"null", 422),
]


@pytest.mark.parametrize("data,status", BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
def test_bad_reserve_bodies_are_4xx_in_the_error_model(client, data, status):
    resp = _raw(client, "/certificates/next", data)
    assert resp.status_code == status, resp.get_json(silent=True)
    assert set(resp.json) == {"code", "message", "details"}


@pytest.mark.parametrize("path", ["/certificates/ABCDEF1/authorizations", "/authorizations/x/capture",
                                  "/certificates/ABCDEF1/actions/lock", "/certificates/ABCDEF1/actions/cancel",
                                  "/certificates/ABCDEF1/actions/unlock", "/certificates/ABCDEF1/notifications",
                                  "/authorizations/x/void"])
def test_other_bodies_refuse_wrong_types_and_unknown_fields(client, path):
    for data in (b'{"amount": 10.5, "cvc": 123, "reason": 5}', b'{"unknown": "x"}', b"[]"):
        resp = _raw(client, path, data)
        assert resp.status_code == 422, (path, data, resp.json)
    assert _raw(client, path, b"x=1", "text/plain").status_code == 415


def test_authorize_field_rules(client):
    code, cvc = issued_with_cvc()
    for amount in ("-1.00", "0.00", "1.001", "1,00", "", " 1.00"):
        resp = authorize(client, code, cvc, amount)
        assert resp.status_code == 422 and resp.json["code"] == "VALIDATION_ERROR", amount
    for bad_cvc in ("12a456", "", "1" * 13):
        assert authorize(client, code, bad_cvc, "1.00").status_code == 422


@pytest.mark.parametrize("query", ["page=0", "page=abc", "page_size=1000", "page=" + "9" * 30,
                                   "page=" + "9" * 5000, "issuedFrom=yesterday", "status=NOPE",
                                   "channel=WEB", "orderId=%00", "orderId=" + "x" * 300, "page=1.5"])
def test_bad_search_queries_are_422(client, query):
    resp = client.get("/certificates?" + query, headers=auth())
    assert resp.status_code == 422 and resp.json["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("code", ["abcdef1", "A" * 33, "AB", "AB%00CD12", "%F0%9F%92%A9ABCDEF", "ABC%2FDEF1"])
def test_malformed_codes_are_404(client, code):
    resp = client.get(f"/certificates/{code}", headers=auth())
    assert resp.status_code == 404 and resp.json["code"] in ("CERTIFICATE_NOT_FOUND", "NOT_FOUND")
    resp = client.post(f"/certificates/{code}/actions/lock", json={"reason": "x"}, headers=auth())
    assert resp.status_code == 404


def test_bad_tokens_are_401(client):
    settings = get_settings()
    now = int(time.time())
    expired = jwt.encode({"sub": "c", "scope": "certificates:read", "exp": now - 3600}, settings.jwt_secret)
    forged = jwt.encode({"sub": "c", "scope": "certificates:read", "exp": now + 60}, "not-the-secret")
    no_sub = jwt.encode({"scope": "certificates:read", "exp": now + 60}, settings.jwt_secret)
    none_alg = jwt.encode({"sub": "c", "scope": "certificates:read", "exp": now + 60}, None, algorithm="none")
    for header in ("Bearer garbage", "Basic dXNlcjpwYXNz", "Bearer ", f"Bearer {expired}",
                   f"Bearer {forged}", f"Bearer {no_sub}", f"Bearer {none_alg}"):
        resp = client.get("/certificates/ABCDEF1", headers={"Authorization": header})
        assert is_error(resp, 401, "UNAUTHORIZED"), header
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_remembered_token_is_still_refused_once_expired_or_under_another_secret(client, monkeypatch):
    from api import auth as auth_module

    # given a token the service verified and remembers (the next call skips the signature check)
    token = auth_module.issue_token(uid("c-"), "certificates:read", None, ttl_seconds=60)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/certificates/NOSUCHCODE1", headers=headers).status_code == 404
    assert auth_module._verified.cache_info().currsize >= 1
    # past its expiry (and the leeway), the remembered token is refused all the same
    later = time.time() + 60 + auth_module.LEEWAY_S + 1
    monkeypatch.setattr(auth_module.time, "time", lambda: later)
    assert is_error(client.get("/certificates/NOSUCHCODE1", headers=headers), 401, "UNAUTHORIZED")
    monkeypatch.undo()
    # and under another secret it is checked again, and refused
    settings = get_settings()
    monkeypatch.setattr(auth_module, "get_settings",
                        lambda: dataclasses.replace(settings, jwt_secret="another-secret-" + "x" * 32))
    assert is_error(client.get("/certificates/NOSUCHCODE1", headers=headers), 401, "UNAUTHORIZED")


def test_bad_idempotency_key_and_request_id(client):
    long_key = {**auth(), "Idempotency-Key": "k" * 256}
    resp = client.post("/certificates/next", json=reserve_body("RUB"), headers=long_key)
    assert is_error(resp, 422, "VALIDATION_ERROR")
    odd_id = {**auth(), "X-Request-ID": "bad id\twith tab"}
    resp = client.get("/certificates/NOSUCHCODE1", headers=odd_id)
    assert resp.status_code == 404 and resp.headers["X-Request-ID"].startswith("req-")
    good_id = {**auth(), "X-Request-ID": "caller-42"}
    assert client.get("/certificates/NOSUCHCODE1", headers=good_id).headers["X-Request-ID"] == "caller-42"


def test_a_trailing_newline_in_a_pattern_field_is_a_422_not_a_500(stack):
    """Regression: `$` with re.match accepted "RUB\\n", which then failed in the database."""
    from api.auth import issue_token
    from app import create_app

    client = create_app().test_client()
    token = issue_token("web-nl", "certificates:reserve", "ONLINE_STORE")
    resp = client.post("/certificates/next", headers={"Authorization": f"Bearer {token}"},
                       json={"channel": "ONLINE_STORE", "orderId": "o-nl", "lineId": "1",
                             "nominal": "100.00", "currency": "RUB\n"})
    assert resp.status_code == 422
    assert resp.json["code"] == "VALIDATION_ERROR"


def test_a_token_for_another_audience_is_refused_even_without_jwt_audience(client, monkeypatch):
    from api import auth as auth_module

    # given the service with no JWT_AUDIENCE (the built-in HS256 set-up; development only now)
    settings = dataclasses.replace(get_settings(), jwt_audience=None)
    monkeypatch.setattr(auth_module, "get_settings", lambda: settings)
    now = int(time.time())
    claims = {"sub": "c", "scope": "certificates:read", "exp": now + 60}
    # when a token signed with the service's secret names another audience, then it is refused
    other = jwt.encode(dict(claims, aud="another-service"), settings.jwt_secret)
    resp = client.get("/certificates/ABCDEF1", headers={"Authorization": f"Bearer {other}"})
    assert is_error(resp, 401, "UNAUTHORIZED") and "audience" in resp.json["message"].lower()
    # and one naming none is taken
    plain = jwt.encode(claims, settings.jwt_secret)
    assert client.get("/certificates/ABCDEF1", headers={"Authorization": f"Bearer {plain}"}).status_code == 404
