"""Idempotency-Key on mutating calls, stored in PostgreSQL."""
import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import api.idempotency as idem
from config import get_settings, reset_settings
from models.domain import commands
from models.service import messagebus
from models.store.db import db
from models.store.tables import AuthorizationHold, GiftCertificate, IdempotencyKey
from tests.helpers import load, uid, unique_currency
from tests.integration.apikit import auth, issued_with_cvc, reserve_body, row


def holds_of(code):
    with db.connection_context():
        return list(AuthorizationHold.select().join(GiftCertificate).where(GiftCertificate.code == code))


def auth_body(cvc, amount="100.00", order=None):
    return {"channel": "POS", "orderId": order or uid("order-"), "amount": amount, "cvc": cvc}


def test_same_key_and_body_returns_the_first_answer_once(client):
    # given a certificate and a keyed authorization
    code, cvc = issued_with_cvc("1000.00")
    headers = {**auth(channel="POS"), "Idempotency-Key": uid("key-")}
    body = auth_body(cvc)
    # when the same call is sent twice
    first = client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    second = client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    # then the second gets the first answer again and only one hold exists
    assert first.status_code == second.status_code == 201
    assert second.json == first.json and second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(holds_of(code)) == 1


def test_key_order_of_json_fields_does_not_matter(client):
    code, cvc = issued_with_cvc("1000.00")
    headers = {**auth(channel="POS"), "Idempotency-Key": uid("key-")}
    body = auth_body(cvc)
    reordered = dict(reversed(list(body.items())))
    first = client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    second = client.post(f"/certificates/{code}/authorizations", json=reordered, headers=headers)
    assert second.json == first.json and len(holds_of(code)) == 1


def test_refusals_are_recorded_too(client):
    # given a keyed authorization with a wrong CVC
    code, cvc = issued_with_cvc("1000.00")
    headers = {**auth(channel="POS"), "Idempotency-Key": uid("key-")}
    body = auth_body("1" + cvc)
    # when it is retried with the same key
    first = client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    second = client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    # then the same 403 comes back and the wrong attempt is counted once
    assert first.status_code == second.status_code == 403
    assert second.json == first.json and first.json["code"] == "CVC_MISMATCH"
    assert row(code).cvc_failed_attempts == 1


def test_same_key_other_body_is_422(client):
    code, cvc = issued_with_cvc("1000.00")
    headers = {**auth(channel="POS"), "Idempotency-Key": uid("key-")}
    client.post(f"/certificates/{code}/authorizations", json=auth_body(cvc, "1.00"), headers=headers)
    other = client.post(f"/certificates/{code}/authorizations", json=auth_body(cvc, "2.00"), headers=headers)
    other_path = client.post("/certificates/next", json=reserve_body("RUB"), headers=headers)
    assert other.status_code == 422 and other.json["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert other_path.status_code == 422 and other_path.json["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert len(holds_of(code)) == 1


def test_keys_are_per_client(client):
    # given two clients using the same key for their own holds
    code, cvc = issued_with_cvc("1000.00")
    key = uid("key-")
    a = client.post(f"/certificates/{code}/authorizations", json=auth_body(cvc),
                    headers={**auth(channel="POS"), "Idempotency-Key": key})
    b = client.post(f"/certificates/{code}/authorizations", json=auth_body(cvc),
                    headers={**auth(channel="POS"), "Idempotency-Key": key})
    # then both run
    assert a.status_code == b.status_code == 201
    assert a.json["authorizationId"] != b.json["authorizationId"]


def retry_after_settings_change(client, monkeypatch, **environment):
    """A keyed authorization, then the same call again once ``environment`` is changed."""
    code, cvc = issued_with_cvc("1000.00")
    headers, body = {**auth(channel="POS"), "Idempotency-Key": uid("key-")}, auth_body(cvc)
    first = client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    try:
        again = client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    finally:
        monkeypatch.undo()
        reset_settings()
    return code, first, again


def test_a_cvc_key_rotation_never_changes_a_retrys_answer(client, monkeypatch):
    # given a keyed call answered; when the CVC key is rotated (a new CVC_ENCRYPTION_KEY, the
    # old one kept in CVC_OLD_KEYS) and the same call is retried within the 24 hours
    old_key = get_settings().cvc_encryption_key
    code, first, again = retry_after_settings_change(
        client, monkeypatch, CVC_ENCRYPTION_KEY="a-rotated-cvc-key-for-the-gcp-suite-0123456789",
        CVC_OLD_KEYS=old_key)
    # then the retry gets the first answer again, not 422 IDEMPOTENCY_KEY_REUSED, and holds nothing more
    assert first.status_code == again.status_code == 201, again.json
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    assert len(holds_of(code)) == 1


def test_the_request_hashes_are_keyed_by_idempotency_key(client, monkeypatch):
    # given a keyed call answered; when IDEMPOTENCY_KEY itself changes and the call is retried
    code, first, again = retry_after_settings_change(
        client, monkeypatch, IDEMPOTENCY_KEY="another-idempotency-key-for-the-gcp-suite-0123")
    # then its recorded hash no longer matches: the key counts as used for another request
    assert first.status_code == 201
    assert again.status_code == 422 and again.json["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert len(holds_of(code)) == 1


def test_concurrent_calls_with_one_key_run_once(app):
    # given ten threads sending one keyed authorization at once
    code, cvc = issued_with_cvc("1000.00")
    headers = {**auth(channel="POS"), "Idempotency-Key": uid("key-")}
    body = auth_body(cvc)
    barrier = threading.Barrier(10)

    def call(_):
        barrier.wait()
        resp = app.test_client().post(f"/certificates/{code}/authorizations", json=body, headers=headers)
        return resp.status_code, resp.json

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(call, range(10)))
    # then one hold exists; every other answer is that hold again or 409 in progress
    assert len(holds_of(code)) == 1
    hold_id = holds_of(code)[0].id
    for status, body_ in answers:
        assert (status == 201 and body_["authorizationId"] == hold_id) or \
               (status == 409 and body_["code"] == "IDEMPOTENCY_IN_PROGRESS"), (status, body_)
    assert sum(1 for s, _ in answers if s == 201) >= 1


def _first_call_in_flight(app, client_id: str, key: str, body: dict):
    """The key claimed by a first call whose transaction is still open (another connection)."""
    import psycopg2

    with app.test_request_context("/certificates/next", method="POST", json=body):
        digest = idem.request_hash()
    first = psycopg2.connect(get_settings().database_url)
    with first.cursor() as cur:
        cur.execute("INSERT INTO idempotency_key (client_id, key, method, path, request_hash, status, created_at)"
                    " VALUES (%s, %s, 'POST', '/certificates/next', %s, 'IN_PROGRESS', now())",
                    (client_id, key, digest))
    return first


def test_waiting_call_gets_the_first_answer_when_it_finishes(client, app):
    # given a key whose first call is still running (its transaction open)
    headers = {**auth(client_id="waiter"), "Idempotency-Key": uid("key-")}
    body = reserve_body(unique_currency())
    first = _first_call_in_flight(app, "waiter", headers["Idempotency-Key"], body)

    def finish():
        with first.cursor() as cur:
            cur.execute("UPDATE idempotency_key SET status = 'DONE', response_status = 201,"
                        " response_body = '{\"code\": \"FIRST1\"}' WHERE key = %s", (headers["Idempotency-Key"],))
        first.commit()

    timer = threading.Timer(0.3, finish)
    timer.start()
    # when the same call comes meanwhile
    resp = client.post("/certificates/next", json=body, headers=headers)
    timer.join()
    first.close()
    # then it waits and answers what the first one answered
    assert resp.status_code == 201 and resp.json == {"code": "FIRST1"}
    assert resp.headers["Idempotent-Replayed"] == "true"


def test_a_first_call_that_dies_leaves_no_key_so_its_retry_runs(client, app):
    # given a key whose first call dies with its transaction (its process, or PostgreSQL restarting)
    currency = unique_currency()
    load(1, "1000.00", currency)
    headers = {**auth(client_id="survivor"), "Idempotency-Key": uid("key-")}
    body = reserve_body(currency)
    first = _first_call_in_flight(app, "survivor", headers["Idempotency-Key"], body)
    timer = threading.Timer(0.3, first.close)  # the connection goes: the claim is rolled back
    timer.start()
    # when the retry comes, then it runs at once (no 409 for minutes) and reserves
    resp = client.post("/certificates/next", json=body, headers=headers)
    timer.join()
    assert resp.status_code == 201, resp.json
    assert "Idempotent-Replayed" not in resp.headers
    again = client.post("/certificates/next", json=body, headers=headers)
    assert again.status_code == 201 and again.json == resp.json and again.headers["Idempotent-Replayed"] == "true"


def test_expired_key_runs_again(client):
    code, cvc = issued_with_cvc("1000.00")
    headers = {**auth(channel="POS"), "Idempotency-Key": uid("key-")}
    body = auth_body(cvc)
    client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    with db.connection_context():
        IdempotencyKey.update(created_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=25)).where(
            IdempotencyKey.key == headers["Idempotency-Key"]).execute()
    again = client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert len(holds_of(code)) == 2
    with db.connection_context():
        assert idem.purge_expired(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=25)) >= 1


def test_server_error_is_not_recorded(client, monkeypatch):
    # given a use case failing unexpectedly once
    code, cvc = issued_with_cvc("1000.00")
    headers = {**auth(channel="POS"), "Idempotency-Key": uid("key-")}
    body = auth_body(cvc)
    real = messagebus.handle

    def broken(command, ctx=commands.SYSTEM_CONTEXT):
        raise RuntimeError("boom")

    monkeypatch.setattr(messagebus, "handle", broken)
    failed = client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    monkeypatch.setattr(messagebus, "handle", real)
    # when the call is retried with the same key
    retried = client.post(f"/certificates/{code}/authorizations", json=body, headers=headers)
    # then the 500 was not kept: the retry runs
    assert failed.status_code == 500 and failed.json == {"code": "INTERNAL_ERROR", "message": "internal error",
                                                         "details": {}}
    assert retried.status_code == 201 and len(holds_of(code)) == 1


def test_keyed_write_invalidates_the_cache_after_commit(client):
    # given a certificate read (cached), then authorized with a key
    code, cvc = issued_with_cvc("1000.00")
    assert client.get(f"/certificates/{code}", headers=auth()).json["available"] == "1000.00"
    headers = {**auth(channel="POS"), "Idempotency-Key": uid("key-")}
    client.post(f"/certificates/{code}/authorizations", json=auth_body(cvc, "400.00"), headers=headers)
    # when it is read again
    view = client.get(f"/certificates/{code}", headers=auth()).json
    # then the read shows the hold
    assert view["available"] == "600.00"


def test_keyed_pool_empty_is_replayed_and_reserve_alias_accepts_keys(client):
    currency = unique_currency()
    headers = {**auth(), "Idempotency-Key": uid("key-")}
    body = reserve_body(currency)
    first = client.post("/certificates/next", json=body, headers=headers)
    load(1, "1000.00", currency)
    second = client.post("/certificates/next", json=body, headers=headers)
    assert first.status_code == second.status_code == 409 and second.json == first.json
    query = {k: v for k, v in reserve_body(currency).items()}
    got = client.get("/certificates/next", query_string=query, headers={**auth(), "Idempotency-Key": "q-1"})
    assert got.status_code == 201


def test_nested_transactions_invalidate_after_the_outermost_commit(client):
    # given a cached certificate changed inside nested transactions
    from models.store import cache

    code, _ = issued_with_cvc("1000.00")
    client.get(f"/certificates/{code}", headers=auth())
    gen_key = f"gcp:cert-gen:{code}"
    before = int(cache.client().get(gen_key) or 0)
    with db.connection_context():
        with messagebus.transaction():
            with messagebus.transaction():
                messagebus.handle(commands.Lock(code, "NESTED"))
            # when the inner one has ended: then nothing is invalidated yet
            assert int(cache.client().get(gen_key) or 0) == before
    # and after the outermost commit the generation moved and the read is fresh
    assert int(cache.client().get(gen_key) or 0) > before
    assert client.get(f"/certificates/{code}", headers=auth()).json["status"] == "LOCKED"
