"""Bad bearer tokens are 401 UNAUTHORIZED in the contract's error model: garbage, expired, forged,
without a subject or unsigned; a remembered token once expired or under another secret; a token
for another audience."""
import dataclasses
import time

import jwt

from config import get_settings
from tests.helpers import uid
from tests.integration.apikit import is_error


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
