"""The channels' traffic of a chaos scenario: stories, one per certificate, played the way the
contract asks a channel to behave.

A story sells one certificate (reserve over HTTP, then its order and full payment on Kafka) and
then does one more thing to it: a redemption through Kafka, an authorize + capture or void over
HTTP, a purchase refund, a lock and unlock, an expiry, or it cancels the order before payment.
Each story knows the stream events its inputs must cause, in order, and the status and balance
they must leave. Steps run one after the other (each waits for its effect, as a till would), the
stories run side by side in a few threads.

A channel's HTTP call is retried with the same Idempotency-Key while the connection fails, the
answer is 503, or the first attempt is still in flight (409 ``IDEMPOTENCY_IN_PROGRESS``). Some
Kafka messages are sent twice on purpose (the same eventId), as a channel's producer may.
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import psycopg2
import requests

from tests.e2e import flow

NOMINAL = "1000.00"
CURRENCY = "RUB"
#: How long one step may take while a fault is on (a paused broker, PostgreSQL down).
STEP_TIMEOUT = 120.0
SALE = ["reserve", "issue", "notification.requested"]
#: story kind -> (extra stream events after the sale, final status, final remainingBalance)
KINDS = {
    "kafka-redeem": (["redeem.partial"], "PARTIALLY_REDEEMED", "700.00"),
    "capture": (["audit", "authorization.created", "authorization.captured"], "PARTIALLY_REDEEMED", "750.00"),
    "void": (["audit", "authorization.created", "authorization.voided"], "ISSUED", "1000.00"),
    "refund": (["refund", "refund"], "REFUNDED", "0.00"),
    "lock": (["lock", "unlock"], "ISSUED", "1000.00"),
    "expire": (["expire"], "EXPIRED", "1000.00"),
    "cancel": (None, "AVAILABLE", None),  # reserved, ordered, cancelled before payment
}


class StoryFailed(AssertionError):
    pass


@dataclass
class Story:
    kind: str
    code: str
    order_id: str
    expected: list[str] = field(default_factory=list)
    status: str | None = None
    balance: str | None = None
    error: str | None = None
    note: str | None = None

    def expect(self, *types: str) -> None:
        self.expected += types


class Channel:
    """HTTP and Kafka as the channels use them, with counts of what the faults cost them."""

    def __init__(self, api, database_url: str, rng: random.Random, duplicate_share: float):
        self.api, self.database_url = api, database_url
        self.rng, self.rng_lock = rng, threading.Lock()
        self.duplicate_share = duplicate_share
        self.publisher = flow.Publisher()
        self.counts: Counter = Counter()
        self.count_lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.server_errors: list[str] = []

    def close(self) -> None:
        self.publisher.flush()
        self.publisher = None  # its broker is about to go: no reconnect noise

    def count(self, what: str, n: int = 1) -> None:
        with self.count_lock:
            self.counts[what] += n

    def chance(self, p: float) -> bool:
        with self.rng_lock:
            return self.rng.random() < p

    # -- HTTP
    def call(self, method: str, path: str, who: str, body: dict | None = None,
             ok: tuple[int, ...] = (200, 201)) -> requests.Response:
        key = "chaos-" + uuid.uuid4().hex
        headers = {"Idempotency-Key": key} if method == "POST" else {}
        deadline = time.monotonic() + STEP_TIMEOUT
        attempt = 0
        while True:
            if time.monotonic() > deadline:
                raise StoryFailed(f"{method} {path}: no answer in {STEP_TIMEOUT:.0f} s")
            if attempt:
                self.count("http retries")
                time.sleep(min(0.05 * attempt, 0.5))
            attempt += 1
            try:
                resp = self.api.call(method, path, who, json=body, headers=headers)
            except requests.RequestException:
                continue  # the web is being restarted: retry with the same key
            with self.count_lock:
                self.statuses[resp.status_code] += 1
            if resp.status_code >= 500 and resp.status_code != 503:
                self.server_errors.append(f"{method} {path} -> {resp.status_code} {resp.text[:200]}")
            if resp.status_code == 503 or (
                    resp.status_code == 409 and resp.json().get("code") == "IDEMPOTENCY_IN_PROGRESS"):
                continue
            if resp.headers.get("Idempotent-Replayed") == "true":
                self.count("http replays")
            if method == "POST" and resp.status_code in ok:
                self.count("inputs")
            return resp

    def status(self, code: str) -> dict:
        resp = self.call("GET", f"/certificates/{code}", "admin")
        if resp.status_code != 200:
            raise StoryFailed(f"GET {code}: {resp.status_code} {resp.text[:200]}")
        return resp.json()

    def wait_status(self, code: str, *statuses: str) -> dict:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            got = self.status(code)
            if got["status"] in statuses:
                return got
            time.sleep(0.1)
        raise StoryFailed(f"{code} still {got['status']}, not {statuses}, after {STEP_TIMEOUT:.0f} s")

    # -- Kafka
    def send(self, kind: str, msg: dict) -> None:
        self.publisher.send(kind, msg, flush=False)
        self.count("inputs")
        if self.chance(self.duplicate_share):  # a channel's producer sent it twice
            self.publisher.send(kind, msg, flush=False)
            self.count("kafka duplicates sent")
        deadline = time.monotonic() + STEP_TIMEOUT
        while self.publisher.producer.flush(1.0):
            if time.monotonic() > deadline:
                raise StoryFailed(f"the broker took no message for {STEP_TIMEOUT:.0f} s")

    # -- time passing (the expiry date reached)
    def expire_now(self, code: str) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            try:
                with psycopg2.connect(self.database_url, connect_timeout=3) as conn, conn.cursor() as cur:
                    cur.execute("UPDATE gift_certificate SET expires_at = now() WHERE code = %s", (code,))
                conn.close()
                self.count("inputs")
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise StoryFailed("PostgreSQL away for the expiry") from None
                time.sleep(0.2)


def play(story: Story, ch: Channel) -> None:
    """Play one story to its end (raises StoryFailed when an input is refused or has no effect)."""
    code, order_id = story.code, story.order_id
    resp = ch.call("POST", "/certificates/next", "ONLINE_STORE", {
        "channel": "ONLINE_STORE", "orderId": order_id, "lineId": "1", "nominal": NOMINAL,
        "currency": CURRENCY, "code": code})
    if resp.status_code not in (200, 201) or resp.json()["code"] != code:
        raise StoryFailed(f"reserve {code}: {resp.status_code} {resp.text[:200]}")
    story.expect("reserve")
    total = "1500.00"
    lines = [flow.gc_line(code, NOMINAL), flow.product_line("500.00")]
    ch.send("order", flow.order(order_id, lines, total, currency=CURRENCY))
    if story.kind == "cancel":
        ch.send("order", flow.order(order_id, lines, total, currency=CURRENCY, event_type="ORDER_CANCELLED"))
        story.expect("release")
        ch.wait_status(code, "AVAILABLE")
        return
    ch.send("payment", flow.payment(order_id, total, currency=CURRENCY, gc={"code": code, "operation": "PURCHASE"}))
    story.expect("issue", "notification.requested")
    ch.wait_status(code, "ISSUED")
    getattr(_Then, story.kind.replace("-", "_"))(story, ch)


class _Then:
    """What a story does to its certificate once it is issued."""

    @staticmethod
    def kafka_redeem(story: Story, ch: Channel) -> None:
        redeem = uuid.uuid4().hex[:10]
        ch.send("order", flow.order("pos-" + redeem, [flow.product_line("300.00", "1")], "300.00", channel="POS",
                                    currency=CURRENCY, tenders=[flow.gc_tender(story.code, "300.00")]))
        ch.send("payment", flow.payment("pos-" + redeem, "300.00", channel="POS", currency=CURRENCY,
                                        method="GIFT_CERTIFICATE",
                                        gc={"code": story.code, "operation": "REDEMPTION", "amount": "300.00"}))
        story.expect("redeem.partial")
        ch.wait_status(story.code, "PARTIALLY_REDEEMED")

    @staticmethod
    def _authorize(story: Story, ch: Channel, amount: str) -> str | None:
        resp = ch.call("GET", f"/certificates/{story.code}/cvc", "crm")
        story.expect("audit")  # the disclosure is audited, even when its answer was lost
        if resp.status_code != 200:
            if resp.json().get("code") == "CVC_ALREADY_DISCLOSED":
                story.note = "the CVC's answer was lost with the web process (it is disclosed once)"
                return None
            raise StoryFailed(f"cvc {story.code}: {resp.status_code} {resp.text[:200]}")
        resp = ch.call("POST", f"/certificates/{story.code}/authorizations", "ONLINE_STORE", {
            "channel": "ONLINE_STORE", "orderId": story.order_id + "-web", "amount": amount,
            "cvc": resp.json()["cvc"]})
        if resp.status_code != 201:
            raise StoryFailed(f"authorize {story.code}: {resp.status_code} {resp.text[:200]}")
        story.expect("authorization.created")
        return resp.json()["authorizationId"]

    @staticmethod
    def capture(story: Story, ch: Channel) -> None:
        auth = _Then._authorize(story, ch, "250.00")
        if auth is None:
            story.status, story.balance = "ISSUED", NOMINAL
            return
        resp = ch.call("POST", f"/authorizations/{auth}/capture", "ONLINE_STORE", {})
        if resp.status_code != 200:
            raise StoryFailed(f"capture {auth}: {resp.status_code} {resp.text[:200]}")
        story.expect("authorization.captured")

    @staticmethod
    def void(story: Story, ch: Channel) -> None:
        auth = _Then._authorize(story, ch, "400.00")
        if auth is None:
            return
        resp = ch.call("POST", f"/authorizations/{auth}/void", "ONLINE_STORE", {})
        if resp.status_code != 200:
            raise StoryFailed(f"void {auth}: {resp.status_code} {resp.text[:200]}")
        story.expect("authorization.voided")

    @staticmethod
    def refund(story: Story, ch: Channel) -> None:
        ch.send("order", flow.order(story.order_id, [flow.gc_line(story.code, NOMINAL)], "1500.00",
                                    currency=CURRENCY, event_type="ORDER_REFUNDED",
                                    refund_lines=[{"lineId": "1", "amount": NOMINAL}]))
        story.expect("refund")
        ch.wait_status(story.code, "REFUND_PENDING")
        ch.send("payment", flow.payment(story.order_id, NOMINAL, event_type="PAYMENT_REFUNDED", currency=CURRENCY,
                                        gc={"code": story.code, "operation": "PURCHASE"}, minute=9))
        story.expect("refund")
        ch.wait_status(story.code, "REFUNDED")

    @staticmethod
    def lock(story: Story, ch: Channel) -> None:
        for action, body, status in (("lock", {"reason": "FRAUD_SUSPECTED"}, "LOCKED"), ("unlock", {}, "ISSUED")):
            resp = ch.call("POST", f"/certificates/{story.code}/actions/{action}", "admin", body)
            if resp.status_code != 200:
                raise StoryFailed(f"{action} {story.code}: {resp.status_code} {resp.text[:200]}")
            story.expect(action)

    @staticmethod
    def expire(story: Story, ch: Channel) -> None:
        ch.expire_now(story.code)
        story.expect("expire")
        ch.wait_status(story.code, "EXPIRED")


def stories(rng: random.Random, n: int, prefix: str) -> list[Story]:
    """``n`` stories, every kind at least once when ``n`` allows, in a seeded order."""
    kinds = list(KINDS)
    chosen = (kinds * (n // len(kinds) + 1))[:n]
    rng.shuffle(chosen)
    out = []
    for i, kind in enumerate(chosen):
        _extra, status, balance = KINDS[kind]
        out.append(Story(kind, f"{prefix}{i:04d}", f"order-{prefix.lower()}{i:04d}", status=status, balance=balance))
    return out


def run(all_stories: list[Story], ch: Channel, threads: int, spread: float) -> None:
    """Play every story, ``threads`` at a time, starting them evenly over ``spread`` seconds
    (so the faults land in the middle of the traffic); failures are kept on the story."""
    queue = list(reversed(all_stories))
    lock = threading.Lock()
    started = time.monotonic()
    step = spread / max(1, len(all_stories))

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                index = len(all_stories) - len(queue)
                story = queue.pop()
            delay = started + index * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                play(story, ch)
            except Exception as exc:  # noqa: BLE001 (reported with the scenario)
                story.error = f"{type(exc).__name__}: {exc}"

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
