"""The SMS actor against a real local HTTP gateway: one SMS per notification request, retries,
the outcome on the stream, and never the CVC or the full phone in the logs."""
import json
import logging
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from config import reset_settings
from models.domain import commands, timeutil
from models.service import messagebus
from models.store import cvc
from models.store.db import db
from models.store.tables import GiftCertificate, OutboxEvent, SalesOrder, SmsMessage
from tests.helpers import load, uid

D = Decimal


class Gateway(BaseHTTPRequestHandler):
    received: list = []
    fail_next = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Gateway.received.append((self.headers.get("Idempotency-Key"), body))
        if Gateway.fail_next:
            Gateway.fail_next -= 1
            self.send_response(503)
        else:
            self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway(stack, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Gateway.received, Gateway.fail_next = [], 0
    monkeypatch.setenv("SMS_GATEWAY_URL", f"http://127.0.0.1:{server.server_port}/sms")
    reset_settings()
    yield Gateway
    server.shutdown()
    monkeypatch.undo()
    reset_settings()


def sold_with_phone(phone="+79990001122"):
    code = load(1, "1500.00")[0]
    order_id = uid("order-")
    with db.connection_context():
        messagebus.handle(commands.Reserve("ONLINE_STORE", order_id, "1", D("1500.00"), "RUB", code=code))
        SalesOrder.create(order_id=order_id, channel="ONLINE_STORE", currency="RUB", total=D("1500.00"),
                          status="PAID", customer={"clientId": "c-1", "phone": phone} if phone else None,
                          created_at=timeutil.utcnow(), updated_at=timeutil.utcnow())
        messagebus.handle(commands.Issue(code))
        event = (OutboxEvent.select().where((OutboxEvent.message_key == code)
                                            & (OutboxEvent.event_type == "notification.requested")).get())
        secret = cvc.decrypt(GiftCertificate.get(GiftCertificate.code == code).cvc_encrypted)
    return code, str(event.event_id), secret


def last_types(code, n=1):
    with db.connection_context():
        rows = OutboxEvent.select().where(OutboxEvent.message_key == code).order_by(OutboxEvent.id)
        return [r.event_type for r in rows][-n:]


def test_sms_is_sent_once_and_reported_sent(gateway, caplog):
    from actors.sms import deliver

    code, event_id, secret = sold_with_phone()
    caplog.set_level(logging.DEBUG)
    # when the relay hands the notification request over (twice: at least once)
    assert deliver(code, event_id) == "sent"
    assert deliver(code, event_id) == "not-requested"
    # then the gateway got one SMS with the CVC, keyed by the request
    assert len(gateway.received) == 1
    key, body = gateway.received[0]
    assert key == event_id and body["to"] == "+79990001122" and secret in body["text"] and code in body["text"]
    # and the certificate is NOTIFICATION_SENT, its stored CVC erased, the stream told
    with db.connection_context():
        row = GiftCertificate.get(GiftCertificate.code == code)
        assert row.notification_status == "NOTIFICATION_SENT" and row.cvc_encrypted is None
        assert SmsMessage.get(SmsMessage.notification_event_id == event_id).status == "SENT"
    assert last_types(code) == ["notification.sent"]
    # and neither the CVC nor the full phone reached a log line
    logged = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert secret not in logged and "+79990001122" not in logged and "+7999***1122" in logged


def test_gateway_failures_are_retried_then_reported_failed(gateway):
    from actors.sms import deliver

    code, event_id, _ = sold_with_phone()
    gateway.fail_next = 10
    # when the gateway fails and retries are left, then the actor raises (Dramatiq retries)
    with pytest.raises(Exception, match="503"):
        deliver(code, event_id, final=False)
    assert last_types(code) == ["notification.requested"]
    # when the last retry fails too, then the notification is failed
    assert deliver(code, event_id, final=True) == "failed"
    assert last_types(code, 2) == ["notification.failed", "alert"]
    with db.connection_context():
        sms = SmsMessage.get(SmsMessage.notification_event_id == event_id)
        assert sms.status == "FAILED" and sms.attempts == 2 and "503" in sms.last_error


def test_no_phone_fails_at_once_and_crm_path_sends_nothing(gateway, monkeypatch):
    from actors.sms import deliver

    code, event_id, _ = sold_with_phone(phone=None)
    assert deliver(code, event_id) == "failed" and gateway.received == []
    assert last_types(code) == ["notification.failed"]
    monkeypatch.setenv("NOTIFY_VIA", "crm")
    reset_settings()
    other, other_event, _ = sold_with_phone()
    assert deliver(other, other_event) == "crm-path" and gateway.received == []


def test_under_notify_via_sms_the_cvc_api_discloses_nothing_and_the_sms_carries_it(gateway):
    from actors.sms import deliver
    from app import create_app
    from config import get_settings
    from tests.integration.apikit import auth

    # given the service sending CVCs by SMS, and a sale whose SMS is still to be sent
    assert get_settings().notify_via == "sms"
    client = create_app(get_settings()).test_client()
    code, event_id, secret = sold_with_phone()
    # when a certificates:cvc holder asks for the CVC (again and again)
    for _ in range(2):
        resp = client.get(f"/certificates/{code}/cvc", headers=auth("certificates:cvc"))
        # then nothing is disclosed
        assert resp.status_code == 409 and resp.json["code"] == "NO_NOTIFICATION_PENDING", resp.json
        assert resp.json["details"] == {"notifyVia": "sms"} and secret not in resp.get_data(as_text=True)
    # and nothing was recorded as disclosed: the request is still pending for the SMS
    assert last_types(code) == ["notification.requested"]
    # and the SMS is the one way the CVC leaves
    assert deliver(code, event_id) == "sent"
    assert len(gateway.received) == 1 and secret in gateway.received[0][1]["text"]


def test_relay_hands_published_notification_requests_to_the_sms_worker(gateway):
    import time

    import dramatiq

    import actors  # noqa: F401
    from actors.broker import broker
    from workers.kafka import ensure_topics
    from workers.relay import Relay

    ensure_topics()
    code, event_id, secret = sold_with_phone("+79990003344")
    relay = Relay()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=10)
    worker.start()
    try:
        # when the relay publishes the notification request
        relay.publish_pending()
        # then the SMS worker sends it and the certificate is NOTIFICATION_SENT
        deadline = time.monotonic() + 15
        def ours():
            return [body for key, body in gateway.received if key == event_id]

        while not ours() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ours()) == 1 and ours()[0]["to"] == "+79990003344" and secret in ours()[0]["text"]
        while last_types(code) != ["notification.sent"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last_types(code) == ["notification.sent"]
    finally:
        worker.stop()
        relay.close()
