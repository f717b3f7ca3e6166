"""Concurrency through the HTTP API against real PostgreSQL: SKIP LOCKED reservations and
serialized holds on one certificate."""
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from models.store import queries
from models.store.db import db
from tests.helpers import load, uid, unique_currency
from tests.integration.apikit import auth, issued_with_cvc


def run_at_once(n: int, call):
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def test_200_concurrent_reserves_on_a_pool_of_100(app):
    # given a pool of 100 certificates in a currency nobody else uses
    currency = unique_currency()
    pool = set(load(100, "500.00", currency))
    headers = auth("certificates:reserve", channel="ONLINE_STORE")

    def reserve(i):
        body = {"channel": "ONLINE_STORE", "orderId": uid("order-"), "lineId": "1",
                "nominal": "500.00", "currency": currency}
        resp = app.test_client().post("/certificates/next", json=body, headers=headers)
        return resp.status_code, resp.json

    # when 200 order lines are reserved at the same time
    answers = run_at_once(200, reserve)
    # then exactly 100 distinct codes were handed out and 100 calls found the pool empty
    won = [b["code"] for s, b in answers if s == 201]
    empty = [b for s, b in answers if s == 409]
    assert len(won) == 100 and set(won) == pool
    assert len(empty) == 100 and all(b["code"] == "POOL_EMPTY" for b in empty)
    assert sorted({s for s, _ in answers}) == [201, 409]


def test_50_concurrent_authorizations_give_exactly_10_holds(app):
    # given a certificate of 1000.00
    code, cvc = issued_with_cvc("1000.00", channel="POS")
    headers = auth("certificates:redeem", channel="POS")

    def authorize(i):
        body = {"channel": "POS", "orderId": uid("order-"), "amount": "100.00", "cvc": cvc}
        resp = app.test_client().post(f"/certificates/{code}/authorizations", json=body, headers=headers)
        return resp.status_code, resp.json

    # when 50 authorizations of 100.00 arrive at once
    answers = run_at_once(50, authorize)
    holds = [b["authorizationId"] for s, b in answers if s == 201]
    refused = [b for s, b in answers if s != 201]
    # then exactly 10 holds were placed and the rest were refused for funds
    assert len(holds) == 10 and len(set(holds)) == 10
    assert len(refused) == 40 and all(b["code"] == "INSUFFICIENT_FUNDS" for b in refused)

    # when every hold is captured, concurrently
    captures = run_at_once(10, lambda i: app.test_client().post(
        f"/authorizations/{holds[i]}/capture", headers=headers))
    # then the balance is 0.00 and the ledger sums to it
    assert [c.status_code for c in captures] == [200] * 10
    view = app.test_client().get(f"/certificates/{code}", headers=auth("certificates:read")).json
    assert view["remainingBalance"] == "0.00" and view["available"] == "0.00"
    assert view["status"] == "REDEEMED"
    with db.connection_context():
        assert queries.ledger_sum(code) == Decimal("0.00")
    ledger = app.test_client().get(f"/certificates/{code}/operations", headers=auth("certificates:read")).json
    assert len(ledger["items"]) == 11
    assert sum(Decimal(i["amount"]) for i in ledger["items"]) == Decimal("0.00")
