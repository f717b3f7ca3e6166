"""Every error code the API answers, in the contract's error model: one scenario provoking each
code, and each code the OpenAPI document names has a scenario and the status the service
answers it with."""
import dataclasses
import datetime as dt
import json
import re

import pytest

from api.errors import ERROR_STATUS
from app import create_app
from config import get_settings
from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import AuthorizationHold
from tests.helpers import issued, load, uid, unique_currency
from tests.integration.apikit import (
    auth,
    authorize,
    is_error,
    issued_with_cvc,
    reserve_body,
)


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


def test_each_documented_error_answer_is_under_the_status_of_its_codes(client):
    # given the whole OpenAPI document, whose error answers are derived from ERROR_STATUS
    spec = client.get("/openapi.json").json
    answers = 0
    for path, ops in spec["paths"].items():
        for op in (op for op in ops.values() if isinstance(op, dict)):
            for status, resp in op.get("responses", {}).items():
                m = re.match(r"error codes: (.*)", resp.get("description", ""))
                if m:
                    answers += 1
                    # then every code is listed once, under the status the service answers it with
                    codes = m.group(1).split(", ")
                    assert len(codes) == len(set(codes)), (path, status, codes)
                    assert {ERROR_STATUS[c] for c in codes} == {int(status)}, (path, status, codes)
    assert answers > 100
    # and a route's answers are what they always were (the order of the codes included)
    authorize = spec["paths"]["/certificates/{code}/authorizations"]["post"]["responses"]
    assert {status: resp["description"] for status, resp in authorize.items() if status[0] == "4"} == {
        "400": "error codes: BAD_REQUEST",
        "401": "error codes: UNAUTHORIZED",
        "403": "error codes: FORBIDDEN, CHANNEL_FORBIDDEN, CVC_MISMATCH",
        "404": "error codes: CERTIFICATE_NOT_FOUND",
        "409": "error codes: INSUFFICIENT_FUNDS, NOT_REDEEMABLE, IDEMPOTENCY_IN_PROGRESS",
        "413": "error codes: PAYLOAD_TOO_LARGE",
        "415": "error codes: UNSUPPORTED_MEDIA_TYPE",
        "422": "error codes: VALIDATION_ERROR, CURRENCY_MISMATCH, IDEMPOTENCY_KEY_REUSED",
        "429": "error codes: RATE_LIMITED, CVC_ATTEMPTS_EXCEEDED",
    }
