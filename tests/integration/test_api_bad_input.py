"""Bad input never gives a 500: malformed bodies, fields, queries, codes and headers are 4xx in the
contract's error model."""
import pytest

from tests.integration.apikit import (
    auth,
    authorize,
    is_error,
    issued_with_cvc,
    reserve_body,
)


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
