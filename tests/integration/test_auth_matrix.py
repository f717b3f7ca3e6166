"""Authorization matrix: every route with every scope, without a token, and with another
channel's token. (RS256 tokens through a JWKS URL: ``test_auth_jwks.py``.)"""
import pytest

from api.auth import SCOPES
from tests.helpers import issued, load, uid, unique_currency
from tests.integration.apikit import auth, authorize, issued_with_cvc


def _hold(client, channel="POS"):
    code, cvc = issued_with_cvc("100.00", channel=channel)
    return authorize(client, code, cvc, "10.00", channel=channel).json["authorizationId"]


def _reserve_args(channel):
    currency = unique_currency()
    load(1, "100.00", currency)
    return {"channel": channel, "orderId": uid("o-"), "lineId": "1", "nominal": "100.00", "currency": currency}


# route -> (allowed scopes, how to call it for a channel: fn(client, headers, channel) -> response,
#           what another channel's token gets)
def r_reserve_post(c, h, ch):
    return c.post("/certificates/next", json=_reserve_args(ch), headers=h)


def r_reserve_get(c, h, ch):
    return c.get("/certificates/next", query_string=_reserve_args(ch), headers=h)


def r_search(c, h, ch):
    return c.get("/certificates", query_string={"channel": ch}, headers=h)


def r_get(c, h, ch):
    return c.get(f"/certificates/{issued(channel=ch)}", headers=h)


def r_operations(c, h, ch):
    return c.get(f"/certificates/{issued(channel=ch)}/operations", headers=h)


def r_audit(c, h, ch):
    return c.get(f"/certificates/{issued(channel=ch)}/audit", headers=h)


def r_cvc(c, h, ch):
    return c.get(f"/certificates/{issued(channel=ch)}/cvc", headers=h)


def r_lock(c, h, ch):
    return c.post(f"/certificates/{issued(channel=ch)}/actions/lock", json={"reason": "R"}, headers=h)


def r_unlock(c, h, ch):
    code = issued(channel=ch)
    c.post(f"/certificates/{code}/actions/lock", json={"reason": "R"}, headers=auth("certificates:admin"))
    return c.post(f"/certificates/{code}/actions/unlock", headers=h)


def r_cancel(c, h, ch):
    return c.post(f"/certificates/{issued(channel=ch)}/actions/cancel", json={"reason": "R"}, headers=h)


def r_notify(c, h, ch):
    from models.domain import commands
    from models.service import messagebus
    from models.store.db import db

    code = issued(channel=ch)
    with db.connection_context():
        messagebus.handle(commands.NotificationResult(code, delivered=False))
    return c.post(f"/certificates/{code}/notifications", headers=h)


def r_authorize(c, h, ch):
    code, cvc = issued_with_cvc("100.00", channel=ch)
    return c.post(f"/certificates/{code}/authorizations",
                  json={"channel": ch, "orderId": uid("o-"), "amount": "1.00", "cvc": cvc}, headers=h)


def r_capture(c, h, ch):
    return c.post(f"/authorizations/{_hold(c, ch)}/capture", headers=h)


def r_void(c, h, ch):
    return c.post(f"/authorizations/{_hold(c, ch)}/void", headers=h)


def r_adjust(c, h, ch):
    return c.post(f"/certificates/{issued(channel=ch)}/actions/adjust", headers=h,
                  json={"direction": "DEBIT", "amount": "1.00", "reason": "OTHER"})


def r_adjustments(c, h, ch):
    return c.get("/adjustments", query_string={"status": "PENDING_APPROVAL"}, headers=h)


def _pending_adjustment(c, ch):
    """An adjustment above the limit, asked for by another admin than the caller."""
    return c.post(f"/certificates/{issued('9000.00', channel=ch)}/actions/adjust",
                  headers=auth("certificates:admin"),
                  json={"direction": "DEBIT", "amount": "6000.00", "reason": "OTHER"}).json["adjustmentId"]


def r_approve(c, h, ch):
    return c.post(f"/adjustments/{_pending_adjustment(c, ch)}/approve", headers=h)


def r_reject(c, h, ch):
    return c.post(f"/adjustments/{_pending_adjustment(c, ch)}/reject", headers=h)


def r_transfer(c, h, ch):
    return c.post(f"/certificates/{issued(channel=ch)}/actions/transfer", headers=h,
                  json={"to": load(1, None)[0], "reason": "DAMAGED_CARD"})


READ = {"certificates:read", "certificates:admin"}


MATRIX = {
    ("post", "/certificates/next"): ({"certificates:reserve"}, r_reserve_post, 201, (403, "CHANNEL_FORBIDDEN")),
    ("get", "/certificates/next"): ({"certificates:reserve"}, r_reserve_get, 201, (403, "CHANNEL_FORBIDDEN")),
    ("get", "/certificates"): (READ, r_search, 200, (403, "CHANNEL_FORBIDDEN")),
    ("get", "/certificates/{code}"): (READ, r_get, 200, (200, None)),
    ("get", "/certificates/{code}/operations"): (READ, r_operations, 200, (200, None)),
    ("get", "/certificates/{code}/audit"): ({"certificates:admin"}, r_audit, 200, (200, None)),
    ("get", "/certificates/{code}/cvc"): ({"certificates:cvc"}, r_cvc, 200, (200, None)),
    ("post", "/certificates/{code}/actions/lock"): ({"certificates:admin"}, r_lock, 200, (200, None)),
    ("post", "/certificates/{code}/actions/unlock"): ({"certificates:admin"}, r_unlock, 200, (200, None)),
    ("post", "/certificates/{code}/actions/cancel"): ({"certificates:admin"}, r_cancel, 200, (200, None)),
    ("post", "/certificates/{code}/notifications"): ({"certificates:admin"}, r_notify, 202, (202, None)),
    ("post", "/certificates/{code}/actions/adjust"): ({"certificates:admin"}, r_adjust, 201, (201, None)),
    ("post", "/certificates/{code}/actions/transfer"): ({"certificates:admin"}, r_transfer, 200, (200, None)),
    ("get", "/adjustments"): ({"certificates:admin"}, r_adjustments, 200, (200, None)),
    ("post", "/adjustments/{adjustment_id}/approve"): ({"certificates:admin"}, r_approve, 200, (200, None)),
    ("post", "/adjustments/{adjustment_id}/reject"): ({"certificates:admin"}, r_reject, 200, (200, None)),
    ("post", "/certificates/{code}/authorizations"): ({"certificates:redeem"}, r_authorize, 201,
                                                      (403, "CHANNEL_FORBIDDEN")),
    ("post", "/authorizations/{authorization_id}/capture"): ({"certificates:redeem"}, r_capture, 200,
                                                             (404, "AUTHORIZATION_NOT_FOUND")),
    ("post", "/authorizations/{authorization_id}/void"): ({"certificates:redeem"}, r_void, 200,
                                                          (404, "AUTHORIZATION_NOT_FOUND")),
}


def test_matrix_covers_every_route_of_the_api(client):
    spec = client.get("/openapi.json").json
    routes = {(m, p) for p, ops in spec["paths"].items() for m in ops
              if m in ("get", "post", "put", "patch", "delete")
              and p.startswith(("/certificates", "/authorizations", "/adjustments"))}
    assert routes == set(MATRIX)


@pytest.mark.parametrize("route", sorted(MATRIX), ids=[f"{m} {p}" for m, p in sorted(MATRIX)])
def test_every_scope_on_every_route(client, route):
    allowed, call, ok_status, _ = MATRIX[route]
    # given no token: 401
    resp = call(client, {}, "POS")
    assert resp.status_code == 401 and resp.json["code"] == "UNAUTHORIZED"
    for scope in SCOPES:
        # when the route is called with a token holding only this scope (a trusted backend)
        resp = call(client, auth(scope), "POS")
        # then it runs with an allowed scope, and is 403 FORBIDDEN with any other
        if scope in allowed:
            assert resp.status_code == ok_status, (scope, resp.json)
        else:
            assert resp.status_code == 403 and resp.json["code"] == "FORBIDDEN", (scope, resp.json)
            assert set(resp.json["details"]["required"]) == allowed


@pytest.mark.parametrize("route", sorted(MATRIX), ids=[f"{m} {p}" for m, p in sorted(MATRIX)])
def test_another_channels_token(client, route):
    allowed, call, ok_status, (other_status, other_code) = MATRIX[route]
    scope = sorted(allowed)[0]
    # given a certificate / hold / order line of ONLINE_STORE; when POS's token acts on it
    if route[1].startswith("/authorizations"):
        hold = _hold(client, "ONLINE_STORE")
        resp = client.post(route[1].replace("{authorization_id}", hold),
                           headers=auth(scope, channel="POS"))
    else:  # POS's token acts for / on ONLINE_STORE's
        resp = call(client, auth(scope, channel="POS"), "ONLINE_STORE")
    # then: acting for another channel is refused, reading an unpersonalised certificate is not
    assert resp.status_code == other_status, resp.json
    if other_code:
        assert resp.json["code"] == other_code
    # and its own channel's token is served
    assert call(client, auth(scope, channel="ONLINE_STORE"), "ONLINE_STORE").status_code == ok_status
