"""POST /batches and GET /pool against real PostgreSQL: bulk insert, duplicates row by row,
dry runs, the batch record, the low-water alert, and the pool gauge."""
import datetime as dt
import json
import select
import threading
from decimal import Decimal
from pathlib import Path

import jsonschema
import psycopg2
import pytest

import config
from app import create_app
from config import get_settings
from models.domain import commands
from models.service import messagebus
from models.service import unit_of_work as work
from models.service.handlers import pool
from models.store.db import db
from models.store.tables import AuditLog, BatchRejection, CertificateBatch, GiftCertificate, OutboxEvent
from observability import POOL_AVAILABLE
from tests.helpers import uid, unique_code, unique_currency
from tests.integration.apikit import auth

ROOT = Path(__file__).resolve().parents[2]
STREAM_SCHEMA = json.loads((ROOT / "contracts" / "giftcertificates_stream.schema.json").read_text())


@pytest.fixture(scope="module")
def client(stack):
    return create_app(get_settings()).test_client()


def post(client, body, headers=None):
    return client.post("/batches", json=body, headers=headers or auth("batches:write", client_id="loader-t"))


def batch(n=3, currency=None, **extra):
    items = [{"code": unique_code("B"), "nominal": "500.00"} for _ in range(n)]
    return {"batchId": uid("b-"), "currency": currency or unique_currency(), "certificates": items, **extra}


def rows(codes):
    with db.connection_context():
        return {r.code: r for r in GiftCertificate.select().where(GiftCertificate.code.in_(codes))}


def record(batch_id):
    with db.connection_context():
        return CertificateBatch.get_or_none(CertificateBatch.batch_id == batch_id)


def test_a_clean_chunk_is_added_to_the_pool_and_the_batch_recorded(client, stack):
    # given a chunk with a printed nominal, an open-value code and an expiry; and a LISTENer
    body = batch(2)
    body["certificates"].append({"code": unique_code("O"), "nominal": None,
                                 "expiresAt": "2031-05-01T10:00:00+03:00"})
    listener = psycopg2.connect(stack["DATABASE_URL"])
    listener.autocommit = True
    listener.cursor().execute(f"LISTEN {work.POOL_CHANNEL}")
    # when it is posted
    resp = post(client, body)
    # then 201, every code AVAILABLE as sent, the batch recorded with who and counts
    assert resp.status_code == 201, resp.json
    assert resp.json == {"batchId": body["batchId"], "accepted": 3, "alreadyLoaded": 0,
                         "rejected": [], "dryRun": False}
    codes = [c["code"] for c in body["certificates"]]
    got = rows(codes)
    assert {r.status for r in got.values()} == {"AVAILABLE"}
    assert got[codes[0]].nominal == Decimal("500.00") and not got[codes[0]].open_value
    assert got[codes[2]].nominal is None and got[codes[2]].open_value
    assert got[codes[2]].batch_expires_at == dt.datetime(2031, 5, 1, 7, 0, tzinfo=dt.timezone.utc)
    assert got[codes[0]].currency.strip() == body["currency"] and got[codes[0]].kind == "ELECTRONIC"
    rec = record(body["batchId"])
    assert (rec.loaded_by, rec.accepted, rec.rejected) == ("loader-t", 3, 0)
    with db.connection_context():
        audit = AuditLog.get((AuditLog.action == "batch.load") & (AuditLog.correlation_id == body["batchId"]))
    assert audit.details["accepted"] == 3 and audit.actor == "loader-t"
    # and the paid orders waiting for the pool are woken
    assert select.select([listener], [], [], 5) != ([], [], [])
    listener.poll()
    assert body["batchId"] in [n.payload for n in listener.notifies]
    listener.close()


def test_the_same_batch_and_codes_again_add_nothing(client):
    # given a loaded chunk
    body = batch(4)
    assert post(client, body).status_code == 201
    # when it is sent again (a resumed load)
    again = post(client, body)
    # then 200, every code already loaded, nothing added and the counters unchanged
    assert again.status_code == 200
    assert (again.json["accepted"], again.json["alreadyLoaded"], again.json["rejected"]) == (0, 4, [])
    assert record(body["batchId"]).accepted == 4
    with db.connection_context():
        assert GiftCertificate.select().where(GiftCertificate.batch == body["batchId"]).count() == 4


def test_a_chunk_half_loaded_before_adds_only_the_new_codes(client):
    # given a batch that loaded 2 codes before an interruption
    body = batch(5)
    first = dict(body, certificates=body["certificates"][:2])
    assert post(client, first).json["accepted"] == 2
    # when the whole chunk comes again (the staging path: a code exists)
    resp = post(client, body)
    # then the 3 new ones are added, the 2 others are already loaded
    assert resp.status_code == 201
    assert (resp.json["accepted"], resp.json["alreadyLoaded"]) == (3, 2)
    assert record(body["batchId"]).accepted == 5


def test_codes_of_another_batch_and_repeats_are_refused_row_by_row(client):
    # given codes loaded by one batch
    taken = batch(2)
    post(client, taken)
    # when another batch sends them, plus a fresh code twice
    fresh = unique_code("F")
    body = batch(0, currency=taken["currency"])
    body["certificates"] = taken["certificates"] + [{"code": fresh}, {"code": fresh, "nominal": "1.00"}]
    resp = post(client, body)
    # then the fresh code is added once; the others are refused with their reasons
    assert resp.status_code == 201 and resp.json["accepted"] == 1
    reasons = sorted((r["code"], r["reason"]) for r in resp.json["rejected"])
    assert reasons == sorted([(taken["certificates"][0]["code"], "DUPLICATE_CODE"),
                              (taken["certificates"][1]["code"], "DUPLICATE_CODE"),
                              (fresh, "DUPLICATE_IN_BATCH")])
    assert all(r["message"] for r in resp.json["rejected"])
    assert rows([fresh])[fresh].open_value  # the first occurrence is the one kept
    # and the batch counts each refused code once, even when the chunk is sent again
    post(client, body)
    rec = record(body["batchId"])
    assert (rec.accepted, rec.rejected) == (1, 3)
    with db.connection_context():
        assert BatchRejection.select().where(BatchRejection.batch == body["batchId"]).count() == 3


def test_a_dry_run_classifies_but_writes_nothing(client):
    # given a loaded batch, and a dry run mixing its codes, a code of it again, and new ones
    loaded = batch(2)
    post(client, loaded)
    new = [{"code": unique_code("D")} for _ in range(3)]
    with db.connection_context():
        audits = AuditLog.select().count()
    # when the same batch is dry-run with 2 loaded + 3 new codes
    resp = post(client, dict(loaded, certificates=loaded["certificates"] + new, dryRun=True))
    # then 200 says what would happen, and nothing changed
    assert resp.status_code == 200
    assert (resp.json["accepted"], resp.json["alreadyLoaded"], resp.json["dryRun"]) == (3, 2, True)
    assert rows([c["code"] for c in new]) == {}
    # when a new batch is dry-run with codes of another batch
    other = post(client, dict(batch(0), certificates=loaded["certificates"][:1] + new, dryRun=True))
    # then they are refused as duplicates, and the batch is not even created
    assert other.status_code == 200 and other.json["accepted"] == 3
    assert [r["reason"] for r in other.json["rejected"]] == ["DUPLICATE_CODE"]
    assert record(other.json["batchId"]) is None
    assert record(loaded["batchId"]).accepted == 2
    with db.connection_context():
        assert AuditLog.select().count() == audits


def test_the_staging_path_gives_the_same_answers(client, monkeypatch):
    # given the fast COPY path switched off
    monkeypatch.setattr(pool, "FAST_PATH", False)
    body = batch(3)
    # when a fresh chunk, then the same chunk, are posted
    first, second = post(client, body), post(client, body)
    # then the same answers as through the fast path
    assert (first.status_code, first.json["accepted"]) == (201, 3)
    assert (second.status_code, second.json["alreadyLoaded"]) == (200, 3)


def test_batch_level_defaults_apply_to_certificates_that_give_none(client):
    # given a chunk with a default nominal and expiry, one certificate overriding the nominal,
    # one asking for open value explicitly
    body = batch(0, nominal="300.00", expiresAt="2032-01-01T00:00:00Z")
    codes = [unique_code("Q") for _ in range(3)]
    body["certificates"] = [{"code": codes[0]}, {"code": codes[1], "nominal": "900.00"},
                            {"code": codes[2], "nominal": None, "expiresAt": None}]
    # when posted
    assert post(client, body).status_code == 201
    # then each has the default unless it gave its own value
    got = rows(codes)
    assert [(str(got[c].nominal), got[c].open_value) for c in codes] == [
        ("300.00", False), ("900.00", False), ("None", True)]
    assert [got[c].batch_expires_at.year if got[c].batch_expires_at else None for c in codes] == [
        2032, 2032, None]
    # and bad defaults are 422 on the top-level field
    for field, value in (("nominal", "3"), ("expiresAt", "2001-02-30T00:00:00Z"), ("nominal", 5)):
        resp = post(client, batch(1, **{field: value}))
        assert resp.status_code == 422 and field in resp.json["details"]["fields"]["json"]


def test_a_batch_keeps_its_kind_and_currency(client):
    # given an ELECTRONIC batch; when more codes come for it as PHYSICAL or in another currency
    body = batch(1)
    post(client, body)
    for change in ({"kind": "PHYSICAL"}, {"currency": unique_currency()}):
        more = batch(1)
        if change.get("kind") == "PHYSICAL":
            more["certificates"][0]["cvc"] = "123456"
        resp = post(client, dict(more, batchId=body["batchId"], **change))
        # then 409 BATCH_MISMATCH (the request is well-formed, the batch says otherwise), nothing added
        assert resp.status_code == 409 and resp.json["code"] == "BATCH_MISMATCH"
        assert resp.json["details"]["batchId"] == body["batchId"]
    assert record(body["batchId"]).accepted == 1


def test_physical_batches_and_the_default_currency(client):
    # given a PHYSICAL batch without a currency
    body = {"batchId": uid("p-"), "kind": "PHYSICAL", "certificates": [{"code": unique_code("P"), "cvc": "123456"}]}
    # then it is loaded in the default currency as PHYSICAL
    assert post(client, body).status_code == 201
    row = rows([body["certificates"][0]["code"]])[body["certificates"][0]["code"]]
    assert (row.kind, row.currency.strip()) == ("PHYSICAL", get_settings().default_currency)


def _past():
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def test_a_code_whose_expiry_has_passed_is_rejected_expired_and_the_others_load(client):
    # given a well-formed batch where one code's expiresAt has passed, and one whose default has
    fresh, stale, stale_by_default = uid("GCF").upper(), uid("GCS").upper(), uid("GCD").upper()
    resp = post(client, {"batchId": uid("b-exp-"), "certificates": [
        {"code": fresh, "nominal": "500.00"}, {"code": stale, "nominal": "500.00", "expiresAt": _past()}]})
    # then the rest loads and the stale code is refused row by row, with its reason
    assert resp.status_code == 201 and resp.json["accepted"] == 1, resp.json
    assert resp.json["rejected"] == [{"code": stale, "reason": "EXPIRED",
                                      "message": "its expiresAt has already passed"}]
    default = post(client, {"batchId": uid("b-exp-"), "expiresAt": _past(),
                            "certificates": [{"code": stale_by_default, "nominal": "500.00"}]})
    assert default.json["accepted"] == 0 and default.json["rejected"][0]["reason"] == "EXPIRED"
    with db.connection_context():
        assert not GiftCertificate.select().where(GiftCertificate.code.in_([stale, stale_by_default])).exists()


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


def test_idempotency_key_replays_the_first_answer(client):
    # given a chunk posted with an Idempotency-Key
    body = batch(2)
    headers = {**auth("batches:write", client_id=uid("k-")), "Idempotency-Key": uid("key-")}
    first = post(client, body, headers)
    # when the same key and body come again; then the first answer (201, accepted 2) is replayed
    again = post(client, body, headers)
    assert first.status_code == again.status_code == 201
    assert again.json == first.json and again.headers.get("Idempotent-Replayed") == "true"
    # and the same key with another body is refused
    reused = post(client, batch(1), headers)
    assert reused.status_code == 422 and reused.json["code"] == "IDEMPOTENCY_KEY_REUSED"


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
    assert POOL_AVAILABLE._value.get() == resp.json["available"]


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


def test_the_use_case_keeps_working_for_in_process_callers(stack):
    # given items as tests and the demo seed build them (Decimal nominal, datetime expiry)
    code = unique_code("S")
    items = ({"code": code, "nominal": Decimal("700.00"),
              "expiresAt": dt.datetime(2032, 1, 1, tzinfo=dt.timezone.utc)},)
    with db.connection_context():
        # when loaded through handle(); then it is in the pool
        result = messagebus.handle(commands.LoadBatch(uid("s-"), "ELECTRONIC", "RUB", items), work.Context(actor="seed"))
        row = GiftCertificate.get(GiftCertificate.code == code)
    assert (result["accepted"], result["alreadyLoaded"], result["created"]) == (1, 0, True)
    assert row.nominal == Decimal("700.00") and row.batch_expires_at.year == 2032
    assert pool.segment_key("RUB", "PHYSICAL", None) == "RUB/PHYSICAL/OPEN"
