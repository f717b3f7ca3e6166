"""POST /batches against real PostgreSQL, loading: bulk insert, duplicates row by row, a resumed
or half-loaded chunk, dry runs, the batch record and its defaults, kind and currency, expired
codes, an Idempotency-Key, and the use case called in-process."""
import datetime as dt
import select
from decimal import Decimal

import psycopg2

from config import get_settings
from models.domain import commands
from models.domain.pool import segment_key
from models.service import messagebus
from models.store import pool as pool_store
from models.store.db import db
from models.store.outbox import POOL_CHANNEL
from models.store.tables import AuditLog, BatchRejection, GiftCertificate
from tests.helpers import uid, unique_code, unique_currency
from tests.integration.apikit import auth
from tests.integration.batchkit import batch, post, record, rows


def test_a_clean_chunk_is_added_to_the_pool_and_the_batch_recorded(client, stack):
    # given a chunk with a printed nominal, an open-value code and an expiry; and a LISTENer
    body = batch(2)
    body["certificates"].append({"code": unique_code("O"), "nominal": None,
                                 "expiresAt": "2031-05-01T10:00:00+03:00"})
    listener = psycopg2.connect(stack["DATABASE_URL"])
    listener.autocommit = True
    listener.cursor().execute(f"LISTEN {POOL_CHANNEL}")
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
    monkeypatch.setattr(pool_store, "FAST_PATH", False)
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


def test_the_use_case_keeps_working_for_in_process_callers(stack):
    # given items as tests and the demo seed build them (Decimal nominal, datetime expiry)
    code = unique_code("S")
    items = ({"code": code, "nominal": Decimal("700.00"),
              "expiresAt": dt.datetime(2032, 1, 1, tzinfo=dt.timezone.utc)},)
    with db.connection_context():
        # when loaded through handle(); then it is in the pool
        result = messagebus.handle(commands.LoadBatch(uid("s-"), "ELECTRONIC", "RUB", items), commands.Context(actor="seed"))
        row = GiftCertificate.get(GiftCertificate.code == code)
    assert (result["accepted"], result["alreadyLoaded"], result["created"]) == (1, 0, True)
    assert row.nominal == Decimal("700.00") and row.batch_expires_at.year == 2032
    assert segment_key("RUB", "PHYSICAL", None) == "RUB/PHYSICAL/OPEN"
