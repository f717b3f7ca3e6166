"""POST /batches refusing a request as a whole: a malformed body is 422 naming the field and writes
nothing, too many certificates or too large a body, and the tokens and scopes of
``POST /batches`` and ``GET /pool``."""
import pytest

from tests.integration.apikit import auth
from tests.integration.batchkit import batch, post, record

BAD = [
    ({"certificates": [{"code": "ABCDEF1"}]}, "batchId"),
    ({"batchId": "", "certificates": [{"code": "ABCDEF1"}]}, "batchId"),
    ({"batchId": "x" * 65, "certificates": [{"code": "ABCDEF1"}]}, "batchId"),
    ({"batchId": "a\nb", "certificates": [{"code": "ABCDEF1"}]}, "batchId"),
    ({"batchId": "b", "kind": "PAPER", "certificates": [{"code": "ABCDEF1"}]}, "kind"),
    ({"batchId": "b", "currency": "rub", "certificates": [{"code": "ABCDEF1"}]}, "currency"),
    ({"batchId": "b", "dryRun": "yes", "certificates": [{"code": "ABCDEF1"}]}, "dryRun"),
    ({"batchId": "b", "extra": 1, "certificates": [{"code": "ABCDEF1"}]}, "extra"),
    ({"batchId": "b"}, "certificates"),
    ({"batchId": "b", "certificates": []}, "certificates"),
    ({"batchId": "b", "certificates": {"code": "ABCDEF1"}}, "certificates"),
    ({"batchId": "b", "certificates": ["ABCDEF1"]}, "certificates.0._schema"),
    ({"batchId": "b", "certificates": [{"code": "abcdef1"}]}, "certificates.0.code"),
    ({"batchId": "b", "certificates": [{"code": "ABC"}]}, "certificates.0.code"),
    ({"batchId": "b", "certificates": [{"nominal": "1.00"}]}, "certificates.0.code"),
    ({"batchId": "b", "certificates": [{"code": "ABCDEF1", "nominal": 1500}]}, "certificates.0.nominal"),
    ({"batchId": "b", "certificates": [{"code": "ABCDEF1", "nominal": "1500"}]}, "certificates.0.nominal"),
    ({"batchId": "b", "certificates": [{"code": "ABCDEF1", "nominal": "0.00"}]}, "certificates.0.nominal"),
    ({"batchId": "b", "certificates": [{"code": "ABCDEF1", "nominal": ["1.00"]}]}, "certificates.0.nominal"),
    ({"batchId": "b", "certificates": [{"code": "ABCDEF1", "expiresAt": "tomorrow"}]}, "certificates.0.expiresAt"),
    ({"batchId": "b", "certificates": [{"code": "ABCDEF1", "expiresAt": "2031-02-30T00:00:00Z"}]},
     "certificates.0.expiresAt"),
    ({"batchId": "b", "certificates": [{"code": "ABCDEF1", "expiresAt": 20310101}]}, "certificates.0.expiresAt"),
    ({"batchId": "b", "certificates": [{"code": "ABCDEF1", "colour": "red"}]}, "certificates.0.colour"),
    # a pattern's "$" also matches before a trailing newline: never let one through
    ({"batchId": "b", "certificates": [{"code": "ABCDEF1\n"}]}, "certificates.0.code"),
    ({"batchId": "b\n", "certificates": [{"code": "ABCDEF1"}]}, "batchId"),
    ({"batchId": "b", "currency": "RUB\n", "certificates": [{"code": "ABCDEF1"}]}, "currency"),
    ({"batchId": "b", "certificates": [{"code": "ABCDEF1", "expiresAt": "2031-01-01T00:00:00Z\n"}]},
     "certificates.0.expiresAt"),
]


@pytest.mark.parametrize("body,field", BAD, ids=[f for _, f in BAD])
def test_a_malformed_body_is_422_naming_the_field_and_writes_nothing(client, body, field):
    # given a body with one problem; when posted; then 422 VALIDATION_ERROR whose details name the field, and no batch exists
    resp = post(client, body)
    assert resp.status_code == 422 and resp.json["code"] == "VALIDATION_ERROR", resp.json
    node = resp.json["details"]["fields"]["json"]
    for part in field.split("."):
        node = node[part]
    assert node
    assert record("b") is None


def test_many_bad_certificates_are_counted_beyond_the_first_fifty(client):
    body = {"batchId": "b", "certificates": [{"code": "bad"}] * 60}
    resp = post(client, body)
    assert resp.status_code == 422
    assert len(resp.json["details"]["fields"]["json"]["certificates"]) == 50
    assert resp.json["details"]["invalidCertificates"] == 60


def test_too_many_certificates_or_a_body_too_large(client, monkeypatch):
    # given more than MAX_CERTIFICATES items (the limit lowered for the test)
    import api.batches as api_batches
    monkeypatch.setattr(api_batches, "MAX_CERTIFICATES", 2)
    assert post(client, batch(3)).status_code == 422
    # and a body beyond MAX_BODY_BYTES: 413 in the error model
    huge = batch(1)
    huge["batchId"] = "b" * 2_000_000
    resp = post(client, huge)
    assert resp.status_code == 413 and resp.json["code"] == "PAYLOAD_TOO_LARGE"


def test_auth_and_scopes(client):
    body = batch(1)
    # no token: 401; another scope: 403; batches:write: 201
    assert client.post("/batches", json=body).status_code == 401
    refused = post(client, body, headers=auth("certificates:admin"))
    assert refused.status_code == 403 and refused.json["details"]["required"] == ["batches:write"]
    assert post(client, body).status_code == 201
    # GET /pool: readers and the loader, not a reserving channel
    assert client.get("/pool").status_code == 401
    for scope, status in (("batches:write", 200), ("certificates:read", 200),
                          ("certificates:admin", 200), ("certificates:reserve", 403)):
        assert client.get("/pool", headers=auth(scope)).status_code == status
