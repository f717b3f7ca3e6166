"""Safe to deploy, the credentials: CVC keys (the hash and the copy under separate keys, a JWT
secret change, a key rotation), tokens naming a real channel, and wrong CVCs budgeted per
client."""
from __future__ import annotations

import os
import time

import jwt
import pytest
from click.testing import CliRunner

from app import cli
from config import get_settings
from models.store import cvc
from models.store.db import db
from models.store.tables import GiftCertificate, OutboxEvent
from tests.helpers import issued, uid
from tests.integration.apikit import auth, cvc_of, row


# ---- CVC keys ------------------------------------------------------------------------------

def test_the_hash_and_the_copy_use_separate_keys_and_record_the_key_id():
    key = cvc.derive("k" * 40)
    assert key.hmac_key != cvc.derive("l" * 40).hmac_key
    assert len({key.id, key.hmac_key.hex()[:12]}) == 2
    code = issued()
    stored = row(code)
    assert stored.cvc_key_id == cvc.current_key_id() and stored.cvc_encrypted
    secret = cvc_of(code)
    assert cvc.matches(code, secret, stored.cvc_hash, stored.cvc_key_id)
    assert not cvc.matches(code, secret, stored.cvc_hash, "unknownkey00")


def test_changing_jwt_secret_never_invalidates_a_cvc(env):
    code = issued()
    secret, stored = cvc_of(code), row(code)
    env(JWT_SECRET="another-jwt-secret-for-the-suite-0123456789")
    assert cvc.matches(code, secret, stored.cvc_hash, stored.cvc_key_id)
    assert cvc.decrypt(stored.cvc_encrypted) == secret


def authorize(client, code, secret, headers=None, amount="10.00"):
    return client.post(f"/certificates/{code}/authorizations", headers=headers or auth(channel="ONLINE_STORE"),
                       json={"channel": "ONLINE_STORE", "orderId": uid("o-"), "amount": amount, "cvc": secret})


def test_rotating_the_cvc_key_keeps_old_rows_working_and_reseals_them(client, env):
    old_key = os.environ["CVC_ENCRYPTION_KEY"]
    old_id = cvc.current_key_id()
    pending, sent = issued(), issued()
    pending_cvc, sent_cvc = cvc_of(pending), cvc_of(sent)
    with db.connection_context():  # the second one was delivered: only its hash is left
        GiftCertificate.update(cvc_encrypted=None).where(GiftCertificate.code == sent).execute()
    # when the key is rotated: the new one current, the old one kept to read old rows
    env(CVC_ENCRYPTION_KEY="a-brand-new-cvc-key-for-the-suite-0123456789", CVC_OLD_KEYS=old_key)
    new_id = cvc.current_key_id()
    assert new_id != old_id
    # then old rows still verify and decrypt
    assert cvc.decrypt(row(pending).cvc_encrypted) == pending_cvc
    # and the rotation re-seals what it can read, and counts the hash-only rows
    result = CliRunner().invoke(cli, ["rotate-cvc-key"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "re-sealed with key " + new_id in result.output and "hash made with an older key" in result.output
    assert row(pending).cvc_key_id == new_id and row(sent).cvc_key_id == old_id
    # a hash-only row is re-sealed at its next correct CVC
    assert authorize(client, sent, sent_cvc).status_code == 201
    assert row(sent).cvc_key_id == new_id
    # and once the old key is dropped, both still verify
    env(CVC_OLD_KEYS=None)
    assert authorize(client, pending, pending_cvc).status_code == 201
    assert authorize(client, sent, sent_cvc).status_code == 201


# ---- the token's channel claim ------------------------------------------------------------

@pytest.mark.parametrize("channel", [["POS"], "SYSTEM", "pos", 7, ""])
def test_a_channel_claim_that_names_no_known_channel_is_refused(client, channel):
    now = int(time.time())
    token = jwt.encode({"sub": uid("c-"), "scope": "certificates:read", "channel": channel, "iat": now,
                        "exp": now + 60, "aud": get_settings().jwt_audience}, get_settings().jwt_secret,
                       algorithm="HS256")
    resp = client.get(f"/certificates/{issued()}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401 and resp.json["code"] == "UNAUTHORIZED"
    assert "channel claim" in resp.json["message"]


def test_a_known_channel_claim_and_no_claim_are_accepted(client):
    code = issued()
    assert client.get(f"/certificates/{code}", headers=auth("certificates:read", "POS")).status_code == 200
    assert client.get(f"/certificates/{code}", headers=auth("certificates:read")).status_code == 200


# ---- the per-client budget of wrong CVCs ---------------------------------------------------

def test_wrong_cvcs_spread_over_many_certificates_exhaust_the_clients_budget(client, env):
    env(CVC_CLIENT_BUDGET="3/minute")
    guesser, honest = uid("guesser-"), uid("honest-")
    codes = [issued() for _ in range(4)]
    headers = auth(channel="ONLINE_STORE", client_id=guesser)
    # given three wrong CVCs, each on another certificate (none is locked: 1 wrong each)
    for code in codes[:3]:
        resp = authorize(client, code, "000000" if cvc_of(code) != "000000" else "111111", headers)
        assert resp.status_code == 403 and resp.json["code"] == "CVC_MISMATCH"
    # then the client's next try is refused before any CVC is checked, even a right one
    resp = authorize(client, codes[3], cvc_of(codes[3]), headers)
    assert resp.status_code == 429 and resp.json["code"] == "CVC_ATTEMPTS_EXCEEDED"
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    assert row(codes[3]).cvc_failed_attempts == 0
    # and the stream got one alert naming the client
    with db.connection_context():
        found = [e.envelope["payload"] for e in OutboxEvent.select().where(OutboxEvent.event_type == "alert")
                 if e.envelope["payload"].get("clientId") == guesser]
    assert len(found) == 1 and found[0]["code"] == "CVC_ATTEMPTS_EXCEEDED"
    # another client is not affected
    honest_headers = auth(channel="ONLINE_STORE", client_id=honest)
    assert authorize(client, codes[3], cvc_of(codes[3]), honest_headers).status_code == 201
