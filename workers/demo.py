"""`make demo`: play OnlineStore, POS, Payments and CRM against a running service.

Start the service first (`make run`, or any deployment: set PORT and the server URLs). The demo
finds the embedded stack of `make run` through ``.local/stack.env``, signs its tokens with
``JWT_SECRET`` (as `.venv/bin/python app.py token` does), then sends a realistic burst through HTTP and
Kafka: online sales (paid after and before the order), partial and full redemptions at POS, an
API authorization confirmed by the order, a purchase refund, a refund onto a certificate, a
support lock, a damaged card replaced at a POS (balance transfer onto a new printed card), a large
balance adjustment approved by a second admin, a cancelled order, CRM's delivery report, an empty
pool, a poison message. It reads GiftCertificates.Stream and prints what happened to each
certificate.

Each step checks its own outcome (the HTTP answers, the stream's events, the ledger) before it
prints it, and the run ends with a summary that states every figure beside its bound
(``workers.demo_summary``). The API authorization needs the buyer's CVC, and the demo uses only
one it may lawfully know, by the service's own ``NOTIFY_VIA`` (which ``GET /cvc``'s answer shows):
under ``NOTIFY_VIA=sms`` (the default of `make run`) the development
``log`` SMS gateway's file (``SMS_LOG_PATH``), which holds what the buyer's phone would show;
under ``NOTIFY_VIA=crm`` the CVC that CRM fetches once through ``GET /certificates/{code}/cvc``.
A printed card's CVC is the one its batch loaded. The demo never prints a CVC. Exit 1 when a step
did not do what it said.
"""
from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import requests
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

import config
from workers.demo_cards import CardSteps
from workers.demo_summary import Steps, summary

NOW = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def eid() -> str:
    return str(uuid.uuid4())


class Demo(CardSteps):
    def __init__(self):
        config.load_stack_env()
        config.reset_settings()
        from api.auth import issue_token
        from config import get_settings

        self.s = get_settings()
        self.base = f"http://127.0.0.1:{self.s.port}"
        self.run = uuid.uuid4().hex[:6].upper()
        read = "certificates:read"
        self.tokens = {
            "ONLINE_STORE": issue_token("online-store", f"certificates:reserve certificates:redeem {read}", "ONLINE_STORE"),
            "POS": issue_token("pos-7", f"certificates:reserve certificates:redeem {read}", "POS"),
            "CRM": issue_token("crm", f"certificates:cvc {read}"),
            "SUPPORT": issue_token("support", f"certificates:admin {read}"),
            "SUPPORT-2": issue_token("support-2", f"certificates:admin {read}"),  # the second approver
            "POS-SUPPORT": issue_token("pos-7-support", f"certificates:admin {read}", "POS"),
            "LOADER": issue_token("loader", f"batches:write {read}"),
        }
        self.http = requests.Session()
        self.story: dict[str, str] = {}   # code -> what the demo did with it
        self.sent_at: dict[str, float] = {}
        self.steps = Steps()
        self.notify_via = "?"  # the service's, as GET /cvc shows it (notifications())

    # -- plumbing
    def call(self, method, path, who, headers_extra=None, **kw):
        headers = {"Authorization": "Bearer " + self.tokens[who], **(headers_extra or {})}
        return self.http.request(method, self.base + path, timeout=10, headers=headers, **kw)

    def kafka(self):
        from confluent_kafka import Consumer, Producer, TopicPartition

        from workers.kafka import consumer_config, producer_config, watermarks

        self.producer = Producer(producer_config())
        self.reader = Consumer(consumer_config("gcp-demo-" + self.run))
        topic = self.s.topic_stream
        meta = self.reader.list_topics(topic, timeout=10).topics[topic]
        ends = [TopicPartition(topic, p, watermarks(self.reader, TopicPartition(topic, p), 10)[1])
                for p in meta.partitions]
        self.reader.assign(ends)
        self.events: dict[str, list[dict]] = defaultdict(list)

    def send(self, topic, key, msg, raw: bytes | None = None):
        self.producer.produce(topic, key=key.encode(), value=raw if raw is not None else json.dumps(msg).encode())
        self.producer.poll(0)

    def order(self, order_id, channel, lines, total, event_type="ORDER_CREATED", **extra):
        msg = {"eventId": eid(), "eventType": event_type, "occurredAt": NOW, "orderId": order_id,
               "channel": channel, "currency": "RUB", "total": total, "lines": lines,
               "customer": {"clientId": "client-" + order_id, "phone": "+79990001122"}, **extra}
        self.send(self.s.topic_sales_order, order_id, msg)
        return msg

    def payment(self, order_id, channel, amount, event_type="PAYMENT_CAPTURED", method="CARD", gc=None, **extra):
        msg = {"eventId": eid(), "eventType": event_type, "occurredAt": NOW, "paymentId": "pay-" + eid()[:8],
               "orderId": order_id, "channel": channel, "amount": amount, "currency": "RUB", "method": method,
               **({"giftCertificate": gc} if gc else {}), **extra}
        self.send(self.s.topic_payments, order_id, msg)
        return msg

    def reserve(self, channel, order_id, nominal, line_id="1", currency="RUB", code=None):
        body = {"channel": channel, "orderId": order_id, "lineId": line_id, "nominal": nominal,
                "currency": currency, **({"code": code} if code else {})}
        return self.call("POST", "/certificates/next", channel, json=body)

    def sale(self, channel, nominal, payment_first=False, label="sold", code=None):
        order_id = f"demo-{self.run}-{uuid.uuid4().hex[:6]}"
        resp = self.reserve(channel, order_id, nominal, code=code)
        if resp.status_code not in (200, 201):
            print(f"  reserve {nominal} failed: {resp.status_code} {resp.json().get('code')}")
            return None, order_id
        code = resp.json()["code"]
        total = f"{float(nominal) + 350:.2f}"
        lines = [{"lineId": "1", "type": "GIFT_CERTIFICATE", "certificateCode": code, "amount": nominal},
                 {"lineId": "2", "type": "PRODUCT", "sku": "mug-01", "quantity": 1, "amount": "350.00"}]
        if payment_first:
            self.payment(order_id, channel, total, gc={"code": code, "operation": "PURCHASE"})
            self.producer.flush(5)
            time.sleep(0.2)
            self.order(order_id, channel, lines, total)
        else:
            self.order(order_id, channel, lines, total)
            self.payment(order_id, channel, total, gc={"code": code, "operation": "PURCHASE"})
        self.producer.flush(5)  # stamp when Kafka has the messages, not when they were queued
        self.sent_at[code] = time.time()
        self.story[code] = label
        return code, order_id

    def wait(self, predicate, seconds=15.0):
        deadline = time.time() + seconds
        while time.time() < deadline:
            msg = self.reader.poll(0.1)
            if msg is not None and not msg.error():
                event = json.loads(msg.value())
                # when the relay produced it (the demo reads the stream only while it waits)
                kind, stamp_ms = msg.timestamp()
                event["_at"] = stamp_ms / 1000 if kind != TIMESTAMP_NOT_AVAILABLE and stamp_ms > 0 else time.time()
                self.events[msg.key().decode()].append(event)
            if predicate():
                return True
        return False

    def has(self, key, event_type, n=1):
        return sum(e["eventType"] == event_type for e in self.events.get(key, ())) >= n

    def cvc_by_sms(self, code, seconds=15.0):
        """The CVC the buyer got by SMS, where the service sends it (NOTIFY_VIA=sms, as under
        `make run`: /cvc then discloses nothing) through the development ``log`` gateway, which
        appends each SMS to SMS_LOG_PATH. None when the file does not show it (another gateway
        sent it: the demo cannot know the CVC)."""
        path = Path(self.s.sms_log_path)
        deadline = time.time() + seconds
        while time.time() < deadline:
            for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else ():
                text = json.loads(line).get("text", "")
                found = re.search(r"CVC (\d+)", text)
                if code in text and found:
                    return found.group(1)
            time.sleep(0.2)
        return None

    # -- the burst
    def play(self) -> int:
        try:
            ready = self.http.get(self.base + "/health/ready", timeout=5)
        except requests.RequestException:
            print(f"No service on {self.base}: start it with `make run` (or set PORT).")
            return 1
        if ready.status_code != 200:
            print(f"The service on {self.base} is not ready: {ready.text}")
            return 1
        self.kafka()
        dlq_before = self.dlq_size()
        print(f"GCP demo run {self.run} against {self.base} (Kafka {self.s.kafka_bootstrap_servers})\n")
        ok = self.steps.check
        codes = [f"DM{self.run}{i:04d}" for i in range(30)]
        loaded = self.call("POST", "/batches", "LOADER", json={
            "batchId": f"demo-{self.run}", "currency": "RUB",
            "certificates": [{"code": c, "nominal": "1000.00"} for c in codes[:20]]
                            + [{"code": c, "nominal": "1500.00"} for c in codes[20:]]})
        print("Loader: a batch of 30 certificates")
        ok(loaded.status_code == 201 and loaded.json().get("accepted") == 30,
           f"batch demo-{self.run} loaded: 30 codes accepted",
           f"batch demo-{self.run}: {loaded.status_code} {loaded.json().get('accepted')}")

        print("OnlineStore: 6 sales (one paid before its order arrives), POS: 2 sales")
        sold = [self.sale("ONLINE_STORE", "1000.00", label="online sale")[0] for _ in range(5)]
        sold.append(self.sale("ONLINE_STORE", "1500.00", payment_first=True, label="paid before the order")[0])
        sold += [self.sale("POS", "1000.00", label="POS sale")[0] for _ in range(2)]
        sold = [c for c in sold if c]
        self.producer.flush(10)
        self.wait(lambda: all(self.has(c, "issue") for c in sold))
        issued = [c for c in sold if self.has(c, "issue")]
        if not ok(len(issued) == 8, "8 of 8 sales issued (an `issue` event each on the stream)",
                  f"{len(issued)} of 8 sales issued"):
            return self.finish(dlq_before)

        self.printed_card()
        self.support_tools()
        cvcs = self.notifications(sold)

        print("POS: partial redemption (600.00), then a full one (400.00) of the same certificate")
        a = sold[0]
        for amount in ("600.00", "400.00"):
            order_id = f"demo-{self.run}-pos-{uuid.uuid4().hex[:6]}"
            self.order(order_id, "POS", [{"lineId": "1", "type": "PRODUCT", "sku": "tea", "amount": amount}], amount,
                       tenders=[{"type": "GIFT_CERTIFICATE", "certificateCode": a, "amount": amount}])
            self.payment(order_id, "POS", amount, method="GIFT_CERTIFICATE",
                         gc={"code": a, "operation": "REDEMPTION", "amount": amount})
            self.producer.flush(5)
            self.sent_at[a] = time.time()
            self.wait(lambda: self.has(a, "redeem.partial" if amount == "600.00" else "redeem.full"))
        ok(self.has(a, "redeem.partial") and self.has(a, "redeem.full"),
           f"{a}: redeem.partial (400.00 left), then redeem.full (0.00)", f"{a}: the redemptions did not show")
        self.story[a] = "redeemed 600.00 then 400.00 at POS"

        self.online_authorization(sold[1], cvcs)
        c, d, e = sold[2], sold[3], sold[4]
        print("OnlineStore + Payments: the buyer returns an unused certificate (purchase refund)")
        c_order = next(ev["correlationId"] for ev in self.events[c] if ev["eventType"] == "issue")
        self.order(c_order, "ONLINE_STORE", [{"lineId": "1", "type": "GIFT_CERTIFICATE", "certificateCode": c,
                                              "amount": "1000.00"}], "1350.00", event_type="ORDER_REFUNDED",
                   refundLines=[{"lineId": "1", "amount": "1000.00"}])
        self.payment(c_order, "ONLINE_STORE", "1000.00", event_type="PAYMENT_REFUNDED",
                     gc={"code": c, "operation": "PURCHASE"})
        self.story[c] = "purchase refunded"

        print("POS + Payments: part of a purchase paid by certificate comes back onto it")
        order_id = f"demo-{self.run}-ret-{uuid.uuid4().hex[:6]}"
        self.order(order_id, "POS", [{"lineId": "1", "type": "PRODUCT", "sku": "lamp", "amount": "700.00"}], "700.00",
                   tenders=[{"type": "GIFT_CERTIFICATE", "certificateCode": d, "amount": "700.00"}])
        self.payment(order_id, "POS", "700.00", method="GIFT_CERTIFICATE", gc={"code": d, "operation": "REDEMPTION"})
        self.order(order_id, "POS", [{"lineId": "1", "type": "PRODUCT", "sku": "lamp", "amount": "700.00"}], "700.00",
                   event_type="ORDER_REFUNDED", refundLines=[{"lineId": "1", "amount": "300.00"}])
        self.payment(order_id, "POS", "300.00", event_type="PAYMENT_REFUNDED", method="GIFT_CERTIFICATE",
                     gc={"code": d, "operation": "REFUND", "amount": "300.00"})
        self.story[d] = "spent 700.00, 300.00 refunded onto it"

        print("Support: locks a certificate suspected of fraud")
        locked = self.call("POST", f"/certificates/{e}/actions/lock", "SUPPORT", json={"reason": "FRAUD_SUSPECTED"})
        self.story[e] = "locked by support"

        print("OnlineStore: an order is cancelled before payment (its reservation is released)")
        resp = self.reserve("ONLINE_STORE", f"demo-{self.run}-cxl", "1500.00")
        f = resp.json().get("code") if resp.status_code in (200, 201) else None
        if f:
            self.order(f"demo-{self.run}-cxl", "ONLINE_STORE", [{"lineId": "1", "type": "GIFT_CERTIFICATE",
                       "certificateCode": f, "amount": "1500.00"}], "1500.00", event_type="ORDER_CANCELLED")
            self.story[f] = "order cancelled: released"

        print("OnlineStore: asks for a certificate in XTS, a currency no batch was loaded in (empty pool)")
        empty_order = f"demo-{self.run}-empty"
        empty = self.reserve("ONLINE_STORE", empty_order, "777.00", currency="XTS")

        print("A channel sends a broken message (it goes to the DLQ, nothing stalls)")
        self.send(self.s.topic_payments, "broken", None, raw=b'{"eventId": "oops", "amount": 12.5}')
        self.producer.flush(10)
        self.wait(lambda: self.has(c, "refund", 2) and self.has(d, "refund") and self.has(e, "lock")
                  and (f is None or self.has(f, "release")) and self.has(empty_order, "issue.blocked"), 20)
        ok(self.has(c, "refund", 2) and self.events[c][-1]["status"] == "REFUNDED",
           f"{c}: purchase refunded (REFUND_PENDING, then REFUNDED)", f"{c}: the purchase refund did not complete")
        ok(self.has(d, "refund") and self.events[d][-1]["payload"].get("remainingBalance") == "600.00",
           f"{d}: 700.00 spent, 300.00 back onto it (600.00 left)", f"{d}: the refund onto it did not show")
        ok(locked.status_code == 200 and self.has(e, "lock"), f"{e}: LOCKED (FRAUD_SUSPECTED)",
           f"{e}: lock answered {locked.status_code}")
        ok(f is not None and self.has(f, "release"), f"{f}: reservation released with its cancelled order",
           "the cancelled order's reservation was not released")
        ok(empty.status_code == 409 and empty.json().get("code") == "POOL_EMPTY"
           and self.has(empty_order, "issue.blocked"), "XTS: 409 POOL_EMPTY and an issue.blocked event",
           f"XTS: {empty.status_code} {empty.json().get('code')}")
        self.wait(lambda: self.dlq_size() > dlq_before, 10)
        return self.finish(dlq_before, empty_order)

    def dlq_size(self) -> int:
        """The DLQ's records, all partitions (its high watermarks)."""
        from confluent_kafka import TopicPartition

        from workers.kafka import watermarks

        topic = self.s.topic_dlq
        meta = self.reader.list_topics(topic, timeout=10).topics[topic]
        return sum(watermarks(self.reader, TopicPartition(topic, p), 10)[1] for p in meta.partitions)

    def notifications(self, sold) -> dict[str, str]:
        """The sold certificates' CVCs on their way to the buyers. The service's path is its own
        setting, not the demo's: ``GET /cvc`` says it (under ``NOTIFY_VIA=sms`` it answers 409
        with ``notifyVia: sms`` and discloses nothing). Under crm, CRM fetches each CVC once and
        reports the delivery. Returns the CVCs CRM fetched."""
        cvcs, first = {}, self.call("GET", f"/certificates/{sold[0]}/cvc", "CRM")
        self.notify_via = "sms" if (first.status_code == 409 and (first.json().get("details") or {})
                                    .get("notifyVia") == "sms") else "crm"
        if self.notify_via == "crm":
            print("CRM: fetches each CVC once (NOTIFY_VIA=crm), sends it, and reports the delivery on All_Clients")
            for code in sold:
                resp = first if code == sold[0] else self.call("GET", f"/certificates/{code}/cvc", "CRM")
                if resp.status_code == 200:
                    cvcs[code] = resp.json()["cvc"]
                    self.send(self.s.topic_clients, "client-demo", {
                        "eventId": eid(), "eventType": "NOTIFICATION_RESULT", "occurredAt": NOW,
                        "clientId": "client-demo",
                        "notification": {"certificateCode": code, "channel": "SMS", "status": "DELIVERED"}})
            self.producer.flush(5)
        else:
            print("The service sends each buyer the CVC by SMS itself (NOTIFY_VIA=sms: GET /cvc discloses nothing)")
        self.wait(lambda: all(self.has(c, "notification.sent") for c in sold), 20)
        sent = sum(self.has(c, "notification.sent") for c in sold)
        self.steps.check(sent == len(sold), f"{sent} of {len(sold)} CVC notifications sent (notification.sent)",
                         f"{sent} of {len(sold)} CVC notifications sent")
        return cvcs

    def online_authorization(self, b, cvcs) -> None:
        """OnlineStore authorizes 250.00 with the buyer's CVC, captures it, names it in the order."""
        print("OnlineStore: authorizes 250.00 through the API with the buyer's CVC, captures it, names it in the order")
        cvc = cvcs.get(b) or self.cvc_by_sms(b)
        if cvc is None:
            self.steps.check(False, "", f"{b}: no CVC the demo may know (NOTIFY_VIA={self.notify_via}; under sms "
                                        f"only the log gateway's {self.s.sms_log_path} shows it): no authorization")
            return
        order_id = f"demo-{self.run}-web-{uuid.uuid4().hex[:6]}"
        hold = self.call("POST", f"/certificates/{b}/authorizations", "ONLINE_STORE", json={
            "channel": "ONLINE_STORE", "orderId": order_id, "amount": "250.00", "cvc": cvc})
        if not self.steps.check(hold.status_code == 201, f"{b}: 250.00 authorized",
                                f"{b}: authorization answered {hold.status_code} {hold.json().get('code')}"):
            return
        auth_id = hold.json()["authorizationId"]
        captured = self.call("POST", f"/authorizations/{auth_id}/capture", "ONLINE_STORE", json={})
        ledger = self.call("GET", f"/certificates/{b}/operations", "ONLINE_STORE").json().get("items", [])
        row = [r for r in ledger if r["authorizationId"] == auth_id and r["amount"] == "-250.00"]
        self.steps.check(captured.status_code == 200 and captured.json().get("captured") == "250.00" and row,
                         f"{b}: 250.00 captured, the ledger shows it ({row[0]['kind'] if row else ''} "
                         f"-250.00, {captured.json().get('remainingBalance')} left)",
                         f"{b}: capture answered {captured.status_code}, ledger rows for it: {len(row)}")
        self.order(order_id, "ONLINE_STORE", [{"lineId": "1", "type": "PRODUCT", "sku": "book", "amount": "250.00"}],
                   "250.00", tenders=[{"type": "GIFT_CERTIFICATE", "certificateCode": b, "amount": "250.00",
                                       "authorizationId": auth_id}])
        self.story[b] = "API capture 250.00 confirmed by the order"

    def finish(self, dlq_before: int, empty_order: str | None = None) -> int:
        """The stream's story per certificate, then the summary; 1 when a step failed."""
        self.wait(lambda: False, 1.0)  # the last stragglers
        print("\nWhat GiftCertificates.Stream said, per certificate (eventType status balance #sequence):")
        for code, what in self.story.items():
            line = ", ".join(f"{ev['eventType']} {ev['status']} {ev['payload'].get('remainingBalance', '')}"
                             f"#{ev.get('sequence', '-')}" for ev in self.events.get(code, []))
            print(f"  {code}  [{what}]\n      {line or '(nothing)'}")
        if empty_order:
            print(f"  {empty_order}  [empty pool]\n      " + (", ".join(
                f"{ev['eventType']} {ev['payload'].get('reason')}" for ev in self.events.get(empty_order, []))
                or "(nothing)"))
        for ev in (ev for evs in self.events.values() for ev in evs if ev["eventType"] in ("alert", "error")):
            print(f"  {ev['eventType']}: {ev['payload'].get('code')} {ev['payload'].get('message')}")
        latencies = [(ev["_at"] - self.sent_at[k]) * 1000 for k, evs in self.events.items() if k in self.sent_at
                     for ev in evs if ev["eventType"] in ("issue", "redeem.partial", "redeem.full")
                     and ev["_at"] >= self.sent_at[k]]
        print("\nSummary (each figure beside its bound):")
        for line in summary(self.steps, latencies, self.events, self.dlq_size() - dlq_before):
            print("  " + line)
        print("The DLQ's entries: .venv/bin/python app.py dlq list")
        return 1 if self.steps.failed else 0


def main() -> int:
    return Demo().play()


if __name__ == "__main__":
    sys.exit(main())
