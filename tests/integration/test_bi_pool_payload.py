"""Contract revision 3: ``reserve``, ``release`` and ``issue.blocked`` carry their pool segment's
level after the change (``pool: {kind, currency, nominal, available}``), which is what
``GET /pool`` says right after, also under racing reservations."""
import threading
from decimal import Decimal

import jsonschema

from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import OutboxEvent
from tests.helpers import uid, unique_code, unique_currency
from tests.integration.apikit import auth
from tests.integration.batchkit import post
from tests.integration.test_batches_pool import STREAM_SCHEMA


def _load(client, currency, n, nominal="100.00", kind="ELECTRONIC"):
    items = [{"code": unique_code("V"), "nominal": nominal} for _ in range(n)]
    if kind == "PHYSICAL":
        items = [{**i, "cvc": "123456"} for i in items]
    assert post(client, {"batchId": uid("pv-"), "kind": kind, "currency": currency,
                         "certificates": items}).status_code == 201


def _pool(client, currency) -> dict:
    resp = client.get("/pool", headers=auth("certificates:read"))
    return {(s["kind"], s["nominal"]): s["available"] for s in resp.json["byNominal"] if s["currency"] == currency}


def _reserve(currency, nominal="100.00", code=None, channel="ONLINE_STORE"):
    with db.connection_context():
        return messagebus.handle(commands.Reserve(channel, uid("o-"), "1", Decimal(nominal), currency, code))


def _events(currency, etype):
    with db.connection_context():
        out = [e.envelope for e in OutboxEvent.select().where(OutboxEvent.event_type == etype).order_by(OutboxEvent.id)]
    return [e for e in out if e["payload"].get("currency") == currency]


def test_reserve_release_and_blocked_carry_the_level_get_pool_shows(client):
    # given 3 codes of 100.00, 2 open-value and 2 PHYSICAL of 100.00 in a currency of its own
    currency = unique_currency()
    _load(client, currency, 3)
    _load(client, currency, 2, nominal=None)
    _load(client, currency, 2, kind="PHYSICAL")
    # when one of 100.00 is reserved
    first = _reserve(currency)
    # then its event carries the segment's level, as GET /pool says it
    [reserve] = _events(currency, "reserve")
    jsonschema.validate(reserve, STREAM_SCHEMA)
    level = reserve["payload"]["pool"]
    assert {k: level[k] for k in ("kind", "currency", "nominal", "available")} == {
        "kind": "ELECTRONIC", "currency": currency, "nominal": "100.00", "available": 2}
    assert _pool(client, currency)[("ELECTRONIC", "100.00")] == 2
    # when the other two go, then an open-value one (the fixed segment is empty)
    _reserve(currency), _reserve(currency)
    _reserve(currency, "250.00")
    levels = [(e["payload"]["pool"]["nominal"], e["payload"]["pool"]["available"]) for e in _events(currency, "reserve")]
    assert levels == [("100.00", 2), ("100.00", 1), ("100.00", 0), (None, 1)]
    assert _pool(client, currency)[("ELECTRONIC", None)] == 1
    # when a physical card is reserved by its code, its own segment is told
    physical = next(iter(_codes(currency, "PHYSICAL")))
    _reserve(currency, code=physical, channel="POS")
    assert _events(currency, "reserve")[-1]["payload"]["pool"]["kind"] == "PHYSICAL"
    assert _events(currency, "reserve")[-1]["payload"]["pool"]["available"] == _pool(client, currency)[("PHYSICAL", "100.00")] == 1
    # when a reservation is released, the level after it comes back
    with db.connection_context():
        messagebus.handle(commands.Release(first["code"], "ORDER_CANCELLED"))
    [release] = _events(currency, "release")
    jsonschema.validate(release, STREAM_SCHEMA)
    assert release["payload"]["pool"]["available"] == 1 == _pool(client, currency)[("ELECTRONIC", "100.00")]
    # when the last open-value one goes and a nominal nobody has is asked for: issue.blocked, 0
    _reserve(currency, "250.00")
    try:
        _reserve(currency, "777.00")
    except Exception:  # POOL_EMPTY, refused after the event was committed
        pass
    [blocked] = _events(currency, "issue.blocked")
    jsonschema.validate(blocked, STREAM_SCHEMA)
    assert blocked["payload"]["pool"] == {**blocked["payload"]["pool"], "kind": "ELECTRONIC", "currency": currency,
                                          "nominal": "777.00", "available": 0}


def _codes(currency, kind):
    from models.store.tables import GiftCertificate
    with db.connection_context():
        return [r.code for r in GiftCertificate.select().where(
            (GiftCertificate.currency == currency) & (GiftCertificate.kind == kind)
            & (GiftCertificate.status == "AVAILABLE"))]


def test_racing_reservations_the_last_count_is_the_final_level(client):
    # given 20 codes; when 12 reservations race
    currency = unique_currency()
    _load(client, currency, 20)
    threads = [threading.Thread(target=_reserve, args=(currency,)) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then every level told is distinct (each count saw the commits before it), and the one
    # counted last is what GET /pool says
    levels = sorted((e["payload"]["pool"]["countedAt"], -e["payload"]["pool"]["available"])
                    for e in _events(currency, "reserve"))
    assert len(levels) == 12
    assert [-lv for _at, lv in levels] == list(range(19, 7, -1))
    assert -levels[-1][1] == _pool(client, currency)[("ELECTRONIC", "100.00")] == 8
