"""Helpers of the support tools tests (``test_support_*.py``, ``test_four_eyes.py``), through
HTTP: an admin's token, a certificate's events, ledger and view, asking for an adjustment or a
transfer, spending, loading a printed card, and running calls at the same moment."""
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from models.store import queries
from models.store.db import db
from models.store.tables import OutboxEvent
from tests.helpers import uid, unique_code
from tests.integration.apikit import auth, authorize

D = Decimal
PRINTED = "482913"


def admin(name: str | None = None) -> dict:
    return auth(("certificates:admin", "certificates:read"), client_id=name or uid("support-"))


def events(code: str) -> list[dict]:
    with db.connection_context():
        return [e.envelope for e in OutboxEvent.select().where(OutboxEvent.message_key == code)
                .order_by(OutboxEvent.id)]


def ledger(client, code: str) -> list[dict]:
    return client.get(f"/certificates/{code}/operations", headers=auth("certificates:read")).json["items"]


def view(client, code: str) -> dict:
    return client.get(f"/certificates/{code}", headers=auth("certificates:read")).json


def adjust(client, code, direction, amount, headers=None, reason="SUPPORT_CORRECTION", **extra):
    return client.post(f"/certificates/{code}/actions/adjust", headers=headers or admin(),
                       json={"direction": direction, "amount": amount, "reason": reason, **extra})


def spend(client, code, cvc, amount):
    hold = authorize(client, code, cvc, amount).json["authorizationId"]
    assert client.post(f"/authorizations/{hold}/capture", headers=auth()).status_code == 200


def assert_ledger_is_the_balance(client, code):
    items = ledger(client, code)
    balance = D(view(client, code)["remainingBalance"])
    assert sum((D(i["amount"]) for i in items), D("0.00")) == balance
    with db.connection_context():
        assert queries.ledger_sum(code) == balance


def transfer(client, code, to=None, reason="DAMAGED_CARD", headers=None):
    body = {"reason": reason, **({"to": to} if to else {})}
    return client.post(f"/certificates/{code}/actions/transfer", json=body, headers=headers or admin())


def load_card(client, currency, nominal=None, cvc=PRINTED):
    """A printed card (PHYSICAL, open value unless ``nominal``) in the pool."""
    code = unique_code("PC")
    item = {"code": code, "cvc": cvc, **({"nominal": nominal} if nominal else {})}
    resp = client.post("/batches", headers=auth("batches:write"), json={
        "batchId": uid("cards-"), "kind": "PHYSICAL", "currency": currency, "certificates": [item]})
    assert resp.status_code == 201, resp.json
    return code


def run_at_once(calls):
    barrier = threading.Barrier(len(calls))

    def go(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(go, calls))
