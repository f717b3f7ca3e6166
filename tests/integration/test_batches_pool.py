"""The pool against real PostgreSQL: GET /pool by nominal and its gauge, and the low-water alert
(once per crossing, again after a refill, the open-value segment, racing reservations, and off
at a mark of zero)."""
import json
import threading
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest

import config
from config import get_settings
from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import OutboxEvent
from tests.helpers import uid, unique_code, unique_currency
from tests.integration.apikit import auth
from tests.integration.batchkit import batch, post

ROOT = Path(__file__).resolve().parents[2]
STREAM_SCHEMA = json.loads((ROOT / "contracts" / "giftcertificates_stream.schema.json").read_text())


def test_the_pool_by_nominal_and_its_gauge(client):
    # given 2 codes of 500.00, 1 open-value, in a currency of its own, and one PHYSICAL
    currency = unique_currency()
    body = batch(2, currency=currency)
    body["certificates"].append({"code": unique_code("O")})
    post(client, body)
    post(client, {"batchId": uid("p-"), "kind": "PHYSICAL", "currency": currency,
                  "certificates": [{"code": unique_code("P"), "nominal": "500.00", "cvc": "123456"}]})
    # when the pool is read
    resp = client.get("/pool", headers=auth("certificates:read"))
    # then its segments, the total, the low-water mark, and the gauge agree
    assert resp.status_code == 200
    mine = [s for s in resp.json["byNominal"] if s["currency"] == currency]
    assert mine == [{"nominal": "500.00", "currency": currency, "kind": "ELECTRONIC", "available": 2},
                    {"nominal": None, "currency": currency, "kind": "ELECTRONIC", "available": 1},
                    {"nominal": "500.00", "currency": currency, "kind": "PHYSICAL", "available": 1}]
    assert resp.json["available"] == sum(s["available"] for s in resp.json["byNominal"])
    assert resp.json["lowWaterMark"] == get_settings().pool_low_water_mark
    from models.store import gauges  # the gauge is counted at scrape time (issue 31)

    gauges.forget()
    metrics = client.get("/metrics").get_data(as_text=True)
    for segment in mine:
        assert (f'gcp_pool_available{{currency="{currency}",kind="{segment["kind"]}",'
                f'nominal="{segment["nominal"] or "OPEN"}"}} {float(segment["available"])}') in metrics


# ---- low-water alert --------------------------------------------------------------------------

@pytest.fixture
def low_water(monkeypatch):
    """POOL_LOW_WATER_MARK=3 for this test."""
    monkeypatch.setenv("POOL_LOW_WATER_MARK", "3")
    config.reset_settings()
    yield 3
    monkeypatch.delenv("POOL_LOW_WATER_MARK")
    config.reset_settings()


def _load(client, currency, n, nominal="100.00"):
    body = {"batchId": uid("lw-"), "currency": currency,
            "certificates": [{"code": unique_code("L"), "nominal": nominal} for _ in range(n)]}
    assert post(client, body).status_code == 201


def _reserve(currency, nominal="100.00"):
    with db.connection_context():
        return messagebus.handle(commands.Reserve("ONLINE_STORE", uid("o-"), "1", Decimal(nominal), currency))


def _alerts(segment):
    with db.connection_context():
        return [e.envelope for e in OutboxEvent.select().where(
            (OutboxEvent.event_type == "alert") & (OutboxEvent.message_key == f"pool:{segment}"))
            .order_by(OutboxEvent.id)]


def test_low_water_alert_once_per_crossing_and_again_after_a_refill(client, low_water):
    # given 5 codes of 100.00 in a currency of its own, and a low-water mark of 3
    currency = unique_currency()
    segment = f"{currency}/ELECTRONIC/100.00"
    _load(client, currency, 5)
    # when reservations take it to 4 and 3 left: no alert yet
    _reserve(currency), _reserve(currency)
    assert _alerts(segment) == []
    # when one more leaves 2 (below 3): one alert; and a further one (1 left): no second alert
    _reserve(currency)
    _reserve(currency)
    alerts = _alerts(segment)
    assert len(alerts) == 1
    alert = alerts[0]
    jsonschema.validate(alert, STREAM_SCHEMA)
    assert (alert["eventType"], alert["status"]) == ("alert", "ALERT")
    assert alert["payload"]["code"] == "POOL_LOW_WATER" and alert["payload"]["available"] == 2
    assert alert["payload"]["nominal"] == "100.00" and alert["payload"]["lowWaterMark"] == 3
    assert "sequence" not in alert
    # when the pool is refilled to 6 and a reservation sees 5 (re-armed), then falls to 2 again
    _load(client, currency, 5)
    for _ in range(3):
        _reserve(currency)
    assert len(_alerts(segment)) == 1
    _reserve(currency)
    # then a second alert, for the second crossing
    assert [a["payload"]["available"] for a in _alerts(segment)] == [2, 2]


def test_open_value_segment_and_a_pool_loaded_below_the_mark(client, low_water):
    # given only 2 open-value codes (below the mark from the start)
    currency = unique_currency()
    _load(client, currency, 2, nominal=None)
    # when one is reserved; then the open-value segment alerts, once
    _reserve(currency, "250.00")
    _reserve(currency, "250.00")
    alerts = _alerts(f"{currency}/ELECTRONIC/OPEN")
    assert len(alerts) == 1 and alerts[0]["payload"]["nominal"] is None


def test_concurrent_reservations_raise_one_alert(client, low_water):
    # given 12 codes and a mark of 3; when 11 reservations race
    currency = unique_currency()
    _load(client, currency, 12)
    errors = []

    def go():
        try:
            _reserve(currency)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=go) for _ in range(11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then exactly one alert for the crossing
    assert errors == []
    assert len(_alerts(f"{currency}/ELECTRONIC/100.00")) == 1


def test_a_mark_of_zero_turns_the_alert_off(client, monkeypatch):
    monkeypatch.setenv("POOL_LOW_WATER_MARK", "0")
    config.reset_settings()
    try:
        currency = unique_currency()
        _load(client, currency, 1)
        _reserve(currency)
        assert _alerts(f"{currency}/ELECTRONIC/100.00") == []
    finally:
        monkeypatch.delenv("POOL_LOW_WATER_MARK")
        config.reset_settings()
