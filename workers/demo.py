"""`make demo`: play OnlineStore, POS, Payments and CRM against a running service.

Start the service first (`make run`, or any deployment: set PORT and the server URLs). The demo
finds the embedded stack of `make run` through ``.local/stack.env``, signs its tokens with
``JWT_SECRET`` (as `python app.py token` does), then sends a realistic burst through HTTP and
Kafka: online sales (paid after and before the order), partial and full redemptions at POS, an
API authorization confirmed by the order, a purchase refund, a refund onto a certificate, a
support lock, a damaged card replaced at a POS (balance transfer onto a new printed card), a large
balance adjustment approved by a second admin, a cancelled order, CRM's delivery report, an empty
pool, a poison message. It reads GiftCertificates.Stream and prints what happened to each
certificate.
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

NOW = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def eid() -> str:
    return str(uuid.uuid4())


class Demo:
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

    # -- plumbing
    def call(self, method, path, who, headers_extra=None, **kw):
        headers = {"Authorization": "Bearer " + self.tokens[who], **(headers_extra or {})}
        return self.http.request(method, self.base + path, timeout=10, headers=headers, **kw)

    def kafka(self):
        from confluent_kafka import Consumer, Producer, TopicPartition

        from workers.kafka import consumer_config, producer_config

        self.producer = Producer(producer_config())
        self.reader = Consumer(consumer_config("gcp-demo-" + self.run))
        topic = self.s.topic_stream
        meta = self.reader.list_topics(topic, timeout=10).topics[topic]
        ends = [TopicPartition(topic, p, self.reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
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
        `make run`: /cvc then discloses nothing). The log gateway appends each SMS to SMS_LOG_PATH."""
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
        print(f"GCP demo run {self.run} against {self.base} (Kafka {self.s.kafka_bootstrap_servers})\n")
        codes = [f"DM{self.run}{i:04d}" for i in range(30)]
        loaded = self.call("POST", "/batches", "LOADER", json={
            "batchId": f"demo-{self.run}", "currency": "RUB",
            "certificates": [{"code": c, "nominal": "1000.00"} for c in codes[:20]]
                            + [{"code": c, "nominal": "1500.00"} for c in codes[20:]]})
        print(f"OnlineStore/loader: batch demo-{self.run} -> {loaded.status_code} {loaded.json().get('accepted')} codes")

        print("OnlineStore: 6 sales (one paid before its order arrives), POS: 2 sales")
        sold = [self.sale("ONLINE_STORE", "1000.00", label="online sale")[0] for _ in range(5)]
        sold.append(self.sale("ONLINE_STORE", "1500.00", payment_first=True, label="paid before the order")[0])
        sold += [self.sale("POS", "1000.00", label="POS sale")[0] for _ in range(2)]
        sold = [c for c in sold if c]
        self.producer.flush(10)
        self.wait(lambda: all(self.has(c, "issue") for c in sold))

        print("POS: a printed card (PHYSICAL batch, CVC under the scratch panel) is scanned, sold, "
              "then paid with: authorized with its printed CVC and captured")
        card, printed = f"DMP{self.run}0001", f"{uuid.uuid4().int % 10 ** self.s.cvc_length:0{self.s.cvc_length}d}"
        self.call("POST", "/batches", "LOADER", json={
            "batchId": f"demo-{self.run}-cards", "kind": "PHYSICAL", "currency": "RUB",
            "certificates": [{"code": card, "nominal": "2000.00", "cvc": printed}]})
        card = self.sale("POS", "2000.00", label="printed card sold at a POS", code=card)[0]
        if card:
            self.producer.flush(10)
            self.wait(lambda: self.has(card, "issue"))
            hold = self.call("POST", f"/certificates/{card}/authorizations", "POS", json={
                "channel": "POS", "orderId": f"demo-{self.run}-till", "amount": "700.00", "cvc": printed})
            if hold.status_code == 201:
                captured = self.call("POST", f"/authorizations/{hold.json()['authorizationId']}/capture", "POS", json={})
                print(f"  {card}: authorized with the printed CVC, captured 700.00 -> "
                      f"{captured.json().get('remainingBalance')} left")
                self.story[card] = "printed card: sold at a POS, 700.00 captured with its printed CVC"
            else:
                print(f"  {card}: authorization failed: {hold.status_code} {hold.json().get('code')}")

        self.support_tools()

        print("CRM: fetches the CVCs and reports the SMS delivered (with NOTIFY_VIA=sms, as under "
              "`make run`, the service sends them itself and discloses none)")
        cvcs = {}
        for code in sold:
            resp = self.call("GET", f"/certificates/{code}/cvc", "CRM")
            if resp.status_code == 200:
                cvcs[code] = resp.json()["cvc"]
            self.send(self.s.topic_clients, "client-demo", {
                "eventId": eid(), "eventType": "NOTIFICATION_RESULT", "occurredAt": NOW, "clientId": "client-demo",
                "notification": {"certificateCode": code, "channel": "SMS", "status": "DELIVERED"}})

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
        self.story[a] = "redeemed 600.00 then 400.00 at POS"

        print("OnlineStore: authorizes 250.00 through the API, captures it, and names it in the order")
        b = sold[1]
        if b not in cvcs and (sent := self.cvc_by_sms(b)):
            cvcs[b] = sent  # the buyer types in the CVC of the SMS
        if b in cvcs:
            order_id = f"demo-{self.run}-web-{uuid.uuid4().hex[:6]}"
            auth = self.call("POST", f"/certificates/{b}/authorizations", "ONLINE_STORE", json={
                "channel": "ONLINE_STORE", "orderId": order_id, "amount": "250.00", "cvc": cvcs[b]}).json()
            self.call("POST", f"/authorizations/{auth['authorizationId']}/capture", "ONLINE_STORE", json={})
            self.order(order_id, "ONLINE_STORE", [{"lineId": "1", "type": "PRODUCT", "sku": "book", "amount": "250.00"}],
                       "250.00", tenders=[{"type": "GIFT_CERTIFICATE", "certificateCode": b, "amount": "250.00",
                                           "authorizationId": auth["authorizationId"]}])
            self.story[b] = "API capture 250.00 confirmed by the order"

        print("OnlineStore + Payments: the buyer returns an unused certificate (purchase refund)")
        c = sold[2]
        c_order = next(e["correlationId"] for e in self.events[c] if e["eventType"] == "issue")
        self.order(c_order, "ONLINE_STORE", [{"lineId": "1", "type": "GIFT_CERTIFICATE", "certificateCode": c,
                                              "amount": "1000.00"}], "1350.00", event_type="ORDER_REFUNDED",
                   refundLines=[{"lineId": "1", "amount": "1000.00"}])
        self.payment(c_order, "ONLINE_STORE", "1000.00", event_type="PAYMENT_REFUNDED",
                     gc={"code": c, "operation": "PURCHASE"})
        self.story[c] = "purchase refunded"

        print("POS + Payments: part of a purchase paid by certificate comes back onto it")
        d = sold[3]
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
        e = sold[4]
        self.call("POST", f"/certificates/{e}/actions/lock", "SUPPORT", json={"reason": "FRAUD_SUSPECTED"})
        self.story[e] = "locked by support"

        print("OnlineStore: an order is cancelled before payment (its reservation is released)")
        order_id = f"demo-{self.run}-cxl"
        resp = self.reserve("ONLINE_STORE", order_id, "1500.00")
        if resp.status_code in (200, 201):
            f = resp.json()["code"]
            self.order(order_id, "ONLINE_STORE", [{"lineId": "1", "type": "GIFT_CERTIFICATE", "certificateCode": f,
                                                   "amount": "1500.00"}], "1500.00", event_type="ORDER_CANCELLED")
            self.story[f] = "order cancelled: released"

        print("OnlineStore: asks for a certificate in XTS, a currency no batch was loaded in (empty pool)")
        empty_order = f"demo-{self.run}-empty"
        resp = self.reserve("ONLINE_STORE", empty_order, "777.00", currency="XTS")
        print(f"  -> {resp.status_code} {resp.json().get('code')}")

        print("A channel sends a broken message (it goes to the DLQ, nothing stalls)")
        self.send(self.s.topic_payments, "broken", None, raw=b'{"eventId": "oops", "amount": 12.5}')
        self.producer.flush(10)

        expected = {a: "redeem.full", c: "refund", d: "refund", e: "lock"}
        self.wait(lambda: all(self.has(k, t, 2 if k == c else 1) for k, t in expected.items())
                  and self.has(empty_order, "issue.blocked"), 20)
        self.wait(lambda: False, 1.0)  # the last stragglers
        self.report(empty_order)
        return 0

    def support_tools(self):
        """A damaged card replaced at a POS, and a large adjustment approved by a second admin."""
        print("POS: a damaged printed card is replaced: its balance moves onto a new card from the drawer")
        damaged, spare = f"DMP{self.run}0002", f"DMP{self.run}0003"
        printed = [f"{uuid.uuid4().int % 10 ** self.s.cvc_length:0{self.s.cvc_length}d}" for _ in range(2)]
        self.call("POST", "/batches", "LOADER", json={
            "batchId": f"demo-{self.run}-drawer", "kind": "PHYSICAL", "currency": "RUB",
            "certificates": [{"code": damaged, "nominal": "1000.00", "cvc": printed[0]},
                             {"code": spare, "cvc": printed[1]}]})  # the spare is open value
        damaged = self.sale("POS", "1000.00", label="damaged card", code=damaged)[0]
        if damaged:
            self.producer.flush(10)
            self.wait(lambda: self.has(damaged, "issue"))
            moved = self.call("POST", f"/certificates/{damaged}/actions/transfer", "POS-SUPPORT",
                              headers_extra={"Idempotency-Key": f"demo-{self.run}-transfer"},
                              json={"to": spare, "reason": "DAMAGED_CARD"})
            if moved.status_code == 200:
                print(f"  {damaged} -> {spare}: {moved.json()['amount']} moved; the old card is "
                      f"{moved.json()['source']['status']} ({moved.json()['source']['lockReason']})")
                self.story[damaged] = f"damaged: its balance moved onto {spare}"
                self.story[spare] = f"new card handed over at the POS, holding {damaged}'s balance"
            else:
                print(f"  transfer failed: {moved.status_code} {moved.json().get('code')}")

        print("Support: a large correction (6000.00, above ADJUST_APPROVAL_LIMIT) waits for a second admin")
        corporate = f"DMC{self.run}0001"
        self.call("POST", "/batches", "LOADER", json={
            "batchId": f"demo-{self.run}-corporate", "currency": "RUB",
            "certificates": [{"code": corporate, "nominal": "8000.00"}]})
        corporate = self.sale("ONLINE_STORE", "8000.00", label="corporate gift", code=corporate)[0]
        if corporate:
            self.producer.flush(10)
            self.wait(lambda: self.has(corporate, "issue"))
            asked = self.call("POST", f"/certificates/{corporate}/actions/adjust", "SUPPORT", json={
                "direction": "DEBIT", "amount": "6000.00", "reason": "FRAUD_RECOVERY",
                "comment": "chargeback on the card that paid for it"})
            adjustment = asked.json().get("adjustmentId")
            print(f"  asked by support: {asked.status_code} {asked.json().get('status')}")
            own = self.call("POST", f"/adjustments/{adjustment}/approve", "SUPPORT")
            print(f"  approved by its author: {own.status_code} {own.json().get('code')}")
            approved = self.call("POST", f"/adjustments/{adjustment}/approve", "SUPPORT-2",
                                 json={"comment": "checked with Payments"})
            print(f"  approved by support-2: {approved.status_code} {approved.json().get('status')}, "
                  f"{approved.json().get('remainingBalance')} left")
            self.story[corporate] = "6000.00 debited (FRAUD_RECOVERY), approved by a second admin"

    def report(self, empty_order):
        print("\nWhat GiftCertificates.Stream said, per certificate (eventType status balance #sequence):")
        for code, what in self.story.items():
            events = self.events.get(code, [])
            line = ", ".join(f"{ev['eventType']} {ev['status']} {ev['payload'].get('remainingBalance', '')}"
                             f"#{ev.get('sequence', '-')}" for ev in events)
            print(f"  {code}  [{what}]\n      {line or '(nothing yet)'}")
        blocked = self.events.get(empty_order, [])
        print(f"  {empty_order}  [empty pool]\n      "
              + (", ".join(f"{ev['eventType']} {ev['payload'].get('reason')}" for ev in blocked) or "(nothing yet)"))
        alerts = [ev for evs in self.events.values() for ev in evs if ev["eventType"] in ("alert", "error")]
        for ev in alerts:
            print(f"  {ev['eventType']}: {ev['payload'].get('code')} {ev['payload'].get('message')}")
        total = sum(len(v) for v in self.events.values())
        lat = sorted(ev["_at"] - self.sent_at[k] for k, evs in self.events.items() if k in self.sent_at
                     for ev in evs if ev["eventType"] in ("issue", "redeem.partial", "redeem.full")
                     and ev["_at"] >= self.sent_at[k])
        print(f"\n{total} stream events for {len(self.story)} certificates.", end=" ")
        if lat:
            print(f"Message -> stream event: median {lat[len(lat) // 2] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms.")
        print("See the DLQ: python app.py dlq list")


def main() -> int:
    return Demo().play()


if __name__ == "__main__":
    sys.exit(main())
