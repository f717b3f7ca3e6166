"""Hostile HTTP against the real web process (gunicorn, the Procfile's command): slow clients
holding connections, 10,000 concurrent retries of one idempotent request, a burst of wrong CVCs
spread over many certificates, and bad tokens of every kind. Each is refused or served, none gets
a 5xx, and the honest clients beside them are served."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import jwt
import pytest
import requests

from config import get_settings
from models.store.db import db
from tests.e2e import flow
from tests.helpers import uid, unique_code

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("hostile-http")]
PROCS_ENV = {"REQUEST_READ_TIMEOUT_MS": "3000", "CVC_CLIENT_BUDGET": "20/minute", "WEB_CONCURRENCY": "2"}


# ---- slow clients ----------------------------------------------------------------------------

def test_slow_clients_hold_no_thread_and_get_408_while_others_are_served(procs, api):
    code = _issued(api, 1)[0]
    port, stop, answers = procs.port, threading.Event(), Counter()

    def slowloris():
        # a request whose headers come one line a second, and never end
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: gcp\r\n")
            try:
                while not stop.is_set():
                    s.sendall(b"X-Slow: 1\r\n")
                    if stop.wait(1.0):
                        break
                    s.setblocking(False)
                    try:
                        answer = s.recv(4096)
                    except BlockingIOError:
                        answer = None
                    s.setblocking(True)
                    if answer is not None:
                        answers[answer.split(b" ")[1].decode() if answer else "closed"] += 1
                        return
            except OSError:
                answers["closed"] += 1

    # given 200 slow clients, more than the web's threads (2 x 8)
    slow = [threading.Thread(target=slowloris, daemon=True) for _ in range(200)]
    for t in slow:
        t.start()
    time.sleep(1.0)
    # when honest clients call meanwhile, then each is served at once
    served = []
    for _ in range(10):
        started = time.monotonic()
        resp = api.call("GET", f"/certificates/{code}")
        served.append((resp.status_code, time.monotonic() - started))
    assert all(status == 200 for status, _ in served), served
    assert max(took for _, took in served) < 2.0, served
    # and each slow client is answered 408 once its time is up (REQUEST_READ_TIMEOUT_MS)
    for t in slow:
        t.join(10)
    stop.set()
    assert answers["408"] == 200, answers


# ---- 10,000 concurrent retries of one request ---------------------------------------------------

async def _post_many(port: int, raw: bytes, total: int, in_flight: int) -> list[tuple[int, bytes]]:
    gate = asyncio.Semaphore(in_flight)

    async def one() -> tuple[int, bytes]:
        async with gate:
            for attempt in range(5):
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(raw)
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(), 60)
                    writer.close()
                    head, _, body = data.partition(b"\r\n\r\n")
                    return int(head.split(b" ")[1]), body
                except (ConnectionError, OSError):  # a full accept queue: a client retries
                    await asyncio.sleep(0.1 * (attempt + 1))
            return -1, b""

    return await asyncio.gather(*(one() for _ in range(total)))


def test_ten_thousand_concurrent_retries_of_one_reservation_reserve_once(procs, api):
    code, order_id = unique_code(), uid("retry-")
    api.load([code], "700.00")
    body = json.dumps({"channel": "ONLINE_STORE", "orderId": order_id, "lineId": "1",
                       "nominal": "700.00"}).encode()
    raw = (b"POST /certificates/next HTTP/1.1\r\nHost: gcp\r\nConnection: close\r\n"
           b"Content-Type: application/json\r\nIdempotency-Key: retry-" + order_id.encode() + b"\r\n"
           b"Authorization: Bearer " + api.tokens["ONLINE_STORE"].encode() + b"\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    # when the same request comes 10,000 times, 1,000 at a time
    results = asyncio.run(_post_many(procs.port, raw, 10_000, 1_000))
    statuses = Counter(status for status, _ in results)
    # then every one is served (the first answer, replayed) or told to retry, none a 5xx (a 408:
    # not read within REQUEST_READ_TIMEOUT_MS, seen when the machine is starved by other work)
    assert set(statuses) <= {201, 408, 409, 429}, statuses
    reserved = {json.loads(b)["code"] for s, b in results if s == 201}
    assert reserved == {code}, reserved
    in_progress = {json.loads(b)["code"] for s, b in results if s == 409}
    assert in_progress <= {"IDEMPOTENCY_IN_PROGRESS"}, in_progress
    assert statuses[201] >= 1
    # and the order line holds one reservation, with one reserve event
    found = api.call("GET", f"/certificates?orderId={order_id}").json()
    assert [c["code"] for c in found["items"]] == [code]
    with db.connection_context():
        assert db.execute_sql("SELECT count(*) FROM outbox_event WHERE message_key = %s"
                              " AND event_type = 'reserve'", (code,)).fetchone()[0] == 1


# ---- wrong CVCs over many certificates -----------------------------------------------------------

def test_a_burst_of_wrong_cvcs_over_many_certificates_is_stopped_by_the_clients_budget(procs, api):
    codes = _issued(api, 30)
    guesser = _token("guesser-" + uuid.uuid4().hex[:6], "ONLINE_STORE")

    def guess(code):
        return requests.post(f"{procs.url}/certificates/{code}/authorizations", timeout=20, headers={
            "Authorization": f"Bearer {guesser}"}, json={
            "amount": "10.00", "cvc": "000000", "orderId": uid("g-"), "channel": "ONLINE_STORE"})

    # when one client tries a wrong CVC on each of 30 certificates at once (budget: 20 a minute)
    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(guess, codes))
    kinds = Counter((r.status_code, r.json()["code"] if r.status_code >= 400 else "OK") for r in answers)
    # then 20 are checked (wrong: CVC_MISMATCH) and the rest refused unchecked, none a 5xx
    assert set(kinds) <= {(403, "CVC_MISMATCH"), (429, "CVC_ATTEMPTS_EXCEEDED")}, kinds
    assert kinds[(403, "CVC_MISMATCH")] <= 20 and kinds[(429, "CVC_ATTEMPTS_EXCEEDED")] >= 10, kinds
    # and an honest client with the right CVC is still served
    cvc = api.call("GET", f"/certificates/{codes[-1]}/cvc", "crm").json()["cvc"]
    honest = api.call("POST", f"/certificates/{codes[-1]}/authorizations", json={
        "amount": "10.00", "cvc": cvc, "orderId": uid("h-"), "channel": "ONLINE_STORE"})
    assert honest.status_code == 201, honest.text


# ---- bad tokens ---------------------------------------------------------------------------------

def test_bad_tokens_of_every_kind_are_refused_and_none_is_a_5xx(procs, api):
    code = _issued(api, 1)[0]
    secret, now = get_settings().jwt_secret, int(time.time())
    claims = {"sub": "c", "scope": "certificates:read certificates:reserve", "iat": now, "exp": now + 60,
              "aud": get_settings().jwt_audience}  # each bad token refused for its own fault only
    header = jwt.get_unverified_header(api.tokens["POS"])
    bad = {
        "expired": jwt.encode(dict(claims, exp=now - 60), secret, algorithm="HS256"),
        "forged": jwt.encode(claims, "another-secret-of-the-same-length-0123456789", algorithm="HS256"),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "wrong audience": jwt.encode(dict(claims, aud="someone-else"), secret, algorithm="HS256"),
        "not yet valid": jwt.encode(dict(claims, nbf=now + 3600), secret, algorithm="HS256"),
        "unknown channel": jwt.encode(dict(claims, channel="KIOSK"), secret, algorithm="HS256"),
        "tampered": api.tokens["POS"][:-4] + ("AAAA" if not api.tokens["POS"].endswith("AAAA") else "BBBB"),
        "garbage": "not.a.token",
    }
    assert header["alg"] == "HS256"
    calls = [(name, "GET", f"/certificates/{code}", None, token) for name, token in bad.items()]
    calls += [(name, "POST", "/certificates/next", {"channel": "POS", "orderId": uid("o-"), "lineId": "1",
                                                    "nominal": "100.00"}, token) for name, token in bad.items()]
    # a valid POS token reserving for the online store: the wrong channel
    calls.append(("wrong channel", "POST", "/certificates/next", {"channel": "ONLINE_STORE", "orderId": uid("o-"),
                                                                  "lineId": "1", "nominal": "100.00"},
                  api.tokens["POS"]))

    def send(call):
        name, method, path, body, token = call
        resp = requests.request(method, procs.url + path, json=body, timeout=20,
                                headers={"Authorization": f"Bearer {token}"})
        return name, resp.status_code, resp.json().get("code")

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, calls * 20))  # each 20 times, concurrently
    assert all(status == 401 and code_ == "UNAUTHORIZED" for name, status, code_ in answers
               if name != "wrong channel"), Counter(answers)
    assert all(status == 403 and code_ == "CHANNEL_FORBIDDEN" for name, status, code_ in answers
               if name == "wrong channel"), Counter(answers)


# ---- helpers --------------------------------------------------------------------------------------

def _token(client_id: str, channel: str | None) -> str:
    from api.auth import issue_token

    return issue_token(client_id, "certificates:reserve certificates:read certificates:redeem", channel)


def _issued(api, n: int, nominal: str = "1000.00") -> list[str]:
    """``n`` certificates sold in one order (reserved over HTTP, order and payment on Kafka)."""
    codes = [unique_code() for _ in range(n)]
    api.load(codes, nominal)
    order_id = uid("hostile-")
    for line, code in enumerate(codes, start=1):
        assert api.reserve(order_id, nominal, line_id=str(line), code=code)["code"] == code
    total = str(Decimal(nominal) * n)
    pub = flow.Publisher()
    pub.send("order", flow.order(order_id, [flow.gc_line(c, nominal, str(i)) for i, c in enumerate(codes, 1)], total))
    pub.send("payment", flow.payment(order_id, total))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = api.call("GET", f"/certificates?orderId={order_id}&page_size=100").json()["items"]
        if len(found) == n and all(c["status"] == "ISSUED" for c in found):
            return codes
        time.sleep(0.2)
    raise AssertionError(f"not issued: {found}")
