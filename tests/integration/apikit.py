"""Helpers for the HTTP API tests: tokens, a JSON client, certificates in a given state, and the
check of an answer in the contract's error model."""
from __future__ import annotations

from decimal import Decimal

from api.auth import issue_token
from api.errors import ERROR_STATUS
from models.store import cvc as cvc_secret
from models.store.db import db
from models.store.tables import GiftCertificate
from tests.helpers import issued, uid

ALL_SCOPES = ("certificates:reserve", "certificates:read", "certificates:redeem",
              "certificates:cvc", "certificates:admin", "batches:write")


def auth(scopes=ALL_SCOPES, channel: str | None = None, client_id: str | None = None) -> dict:
    """An Authorization header for a fresh client (so rate limits and keys never collide)."""
    scope = scopes if isinstance(scopes, str) else " ".join(scopes)
    return {"Authorization": "Bearer " + issue_token(client_id or uid("client-"), scope, channel)}


def row(code: str) -> GiftCertificate:
    with db.connection_context():
        return GiftCertificate.get(GiftCertificate.code == code)


def cvc_of(code: str) -> str:
    """The CVC of an issued electronic certificate (from its encrypted copy)."""
    return cvc_secret.decrypt(row(code).cvc_encrypted)


def issued_with_cvc(nominal: str = "1000.00", currency: str = "RUB",
                    channel: str = "ONLINE_STORE") -> tuple[str, str]:
    code = issued(nominal, currency, channel)
    return code, cvc_of(code)


def reserve_body(currency: str, nominal: str = "1000.00", channel: str = "ONLINE_STORE", **extra) -> dict:
    return {"channel": channel, "orderId": uid("order-"), "lineId": "1", "nominal": nominal,
            "currency": currency, **extra}


def authorize(client, code: str, cvc: str, amount: str, channel: str = "POS", headers=None, **extra):
    body = {"channel": channel, "orderId": uid("order-"), "amount": amount, "cvc": cvc, **extra}
    return client.post(f"/certificates/{code}/authorizations", json=body,
                       headers=headers or auth(channel=channel))


def money(value) -> Decimal:
    return Decimal(value)


def is_error(resp, status: int, code: str) -> bool:
    body = resp.get_json(silent=True)
    assert resp.status_code == status, (resp.status_code, body)
    assert isinstance(body, dict) and set(body) == {"code", "message", "details"}, body
    assert body["code"] == code and isinstance(body["message"], str) and isinstance(body["details"], dict)
    assert ERROR_STATUS.get(code, status) == status
    return True
