"""RS256 tokens checked through a JWKS URL, with issuer and audience, against a real JWKS endpoint
on 127.0.0.1: key rotation and withdrawal within JWKS_CACHE_SECONDS, and no fetch storm for
unknown kids or an unreachable JWKS."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest

from app import create_app
from config import get_settings
from tests.helpers import issued, uid


# ---- RS256 through JWKS, with issuer and audience -------------------------------------------

@pytest.fixture
def jwks_server():
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update(kid="test-kid", use="sig", alg="RS256")
    body = json.dumps({"keys": [public]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield key, f"http://127.0.0.1:{server.server_port}/jwks.json"
    server.shutdown()
    server.server_close()


def test_rs256_tokens_through_jwks_with_issuer_and_audience(stack, monkeypatch, jwks_server):
    import api.auth as api_auth
    from config import reset_settings

    key, url = jwks_server
    # given the service configured for a real OAuth2 server
    monkeypatch.setenv("JWKS_URL", url)
    monkeypatch.setenv("JWT_ISSUER", "https://idp.test/")
    monkeypatch.setenv("JWT_AUDIENCE", "gcp")
    monkeypatch.setenv("GCP_ENV", "development")  # a JWKS over http:// is refused outside development
    monkeypatch.delenv("JWT_ALGORITHMS", raising=False)
    monkeypatch.setattr(api_auth, "_key_set", None)
    reset_settings()
    try:
        client = create_app(get_settings()).test_client()
        now = int(time.time())

        def token(**over):
            claims = {"sub": "pos-1", "scope": "certificates:read", "channel": "POS",
                      "iss": "https://idp.test/", "aud": "gcp", "iat": now, "exp": now + 300, **over}
            return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm="RS256",
                                                            headers={"kid": "test-kid"})}

        code = issued()
        # when tokens are presented
        good = client.get(f"/certificates/{code}", headers=token())
        wrong_aud = client.get(f"/certificates/{code}", headers=token(aud="other"))
        wrong_iss = client.get(f"/certificates/{code}", headers=token(iss="https://evil/"))
        hs256 = client.get(f"/certificates/{code}", headers={
            "Authorization": "Bearer " + jwt.encode({"sub": "x", "scope": "certificates:read", "exp": now + 60,
                                                     "iss": "https://idp.test/", "aud": "gcp"},
                                                    "test-secret", algorithm="HS256")})
        # then only the RS256 token from the right issuer for this audience is accepted
        assert good.status_code == 200 and good.json["code"] == code
        assert wrong_aud.status_code == 401 and wrong_iss.status_code == 401
        assert hs256.status_code == 401
    finally:
        monkeypatch.undo()
        reset_settings()
        api_auth._key_set = None


# ---- JWKS keys: rotation, withdrawal, and no fetch storm ------------------------------------

class JwksEndpoint:
    """A real JWKS endpoint on 127.0.0.1: serves the public keys a test publishes (or ``status``)
    and counts the fetches."""

    def __init__(self):
        self.body, self.status, self.fetches = b'{"keys": []}', 200, 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                endpoint.fetches += 1
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(endpoint.body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, **keys):
        """Serve the public halves of ``keys`` (kid -> RSA private key) from now on."""
        public = []
        for kid, key in keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            public.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        self.body = json.dumps({"keys": public}).encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def rsa_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed(key, kid: str) -> dict:
    """A fresh RS256 token (a new client id each time: never one the service remembers)."""
    now = int(time.time())
    claims = {"sub": uid("c-"), "scope": "certificates:read", "iss": "https://idp.test/", "aud": "gcp",
              "iat": now, "exp": now + 300}
    return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})}


@pytest.fixture
def jwks(stack, monkeypatch):
    """A JWKS endpoint and ``app(**env)``: a client of the service verifying tokens with it."""
    import api.auth as api_auth
    from config import reset_settings

    endpoint = JwksEndpoint()

    def app(**env):
        for name, value in {"JWKS_URL": endpoint.url, "JWT_ISSUER": "https://idp.test/", "JWT_AUDIENCE": "gcp",
                            "GCP_ENV": "development", **env}.items():  # http:// is for development only
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("JWT_ALGORITHMS", raising=False)
        monkeypatch.setattr(api_auth, "_key_set", None)
        reset_settings()
        return create_app(get_settings()).test_client()

    endpoint.app = app
    yield endpoint
    endpoint.close()
    monkeypatch.undo()
    reset_settings()
    api_auth._key_set = None


def test_a_new_key_verifies_at_once_and_a_withdrawn_one_stops_within_jwks_cache_seconds(jwks):
    from api.auth import KID_REFETCH_S

    a, b = rsa_key(), rsa_key()
    jwks.publish(A=a)
    # given the service trusting the JWKS's keys for 1 s, and a token signed with A it remembers
    client = jwks.app(JWKS_CACHE_SECONDS="1")
    code = issued()
    remembered = signed(a, "A")
    assert client.get(f"/certificates/{code}", headers=remembered).status_code == 200
    assert client.get(f"/certificates/{code}", headers=remembered).status_code == 200
    # when the issuer adds key B and signs with it, then B's token is accepted at once
    jwks.publish(A=a, B=b)
    b_token = signed(b, "B")
    assert client.get(f"/certificates/{code}", headers=b_token).status_code == 200
    # and tokens naming kids the JWKS lacks do not make each request fetch it
    fetches, started = jwks.fetches, time.monotonic()
    for i in range(20):
        resp = client.get(f"/certificates/{code}", headers=signed(b, f"made-up-{i}"))
        assert resp.status_code == 401 and resp.json["code"] == "UNAUTHORIZED"
    elapsed = time.monotonic() - started
    assert jwks.fetches - fetches <= 1 + int(elapsed) + int(elapsed / KID_REFETCH_S), jwks.fetches - fetches
    # when A is withdrawn from the JWKS
    jwks.publish(B=b)
    withdrawn = time.monotonic()
    # then within JWKS_CACHE_SECONDS the remembered token and a newly signed one are refused
    while True:
        old = client.get(f"/certificates/{code}", headers=remembered)
        new = client.get(f"/certificates/{code}", headers=signed(a, "A"))
        if old.status_code == new.status_code == 401 or time.monotonic() - withdrawn > 5:
            break
        time.sleep(0.05)
    assert (old.status_code, new.status_code) == (401, 401), (old.json, new.json)
    assert time.monotonic() - withdrawn < 1 + 0.5
    assert old.headers["WWW-Authenticate"].startswith("Bearer")
    # and B still verifies
    assert client.get(f"/certificates/{code}", headers=b_token).status_code == 200
    assert client.get(f"/certificates/{code}", headers=signed(b, "B")).status_code == 200


def test_an_unreachable_jwks_refuses_tokens_without_a_fetch_per_request(jwks):
    from api.auth import FETCH_RETRY_S

    key = rsa_key()
    jwks.publish(K=key)
    client = jwks.app(JWKS_CACHE_SECONDS="1")
    code, remembered = issued(), signed(key, "K")
    assert client.get(f"/certificates/{code}", headers=remembered).status_code == 200
    # given the JWKS endpoint failing for longer than JWKS_CACHE_SECONDS
    jwks.status = 500
    time.sleep(1.1)
    fetches, started = jwks.fetches, time.monotonic()
    # when 20 requests arrive, then each is refused, remembered token or not: a key set that
    # cannot be fetched again verifies nothing
    for headers in [remembered] * 10 + [signed(key, "K") for _ in range(10)]:
        resp = client.get(f"/certificates/{code}", headers=headers)
        assert resp.status_code == 401 and resp.json["code"] == "UNAUTHORIZED"
    # and the JWKS was asked about once per FETCH_RETRY_S, not once per request
    assert jwks.fetches - fetches <= 1 + int((time.monotonic() - started) / FETCH_RETRY_S), jwks.fetches
    # when it answers again, then tokens verify again
    jwks.status = 200
    time.sleep(FETCH_RETRY_S)
    assert client.get(f"/certificates/{code}", headers=signed(key, "K")).status_code == 200
