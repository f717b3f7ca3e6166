"""CVC delivery through each gateway, against real local servers started here: an HTTP gateway
that fails first (a 500, then a timeout) and keeps an idempotency key per message, as an
aggregator does; an SMPP 3.4 SMSC (tests/smsc.py); the development log. Exactly one SMS per
notification request: a doubled trigger, a worker killed after the gateway accepted, a lost
hand-off; a gateway that always fails gives notification.failed and an alert, and a re-request
then succeeds. Never the CVC, a secret or the full phone in a log line."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from config import ConfigError, get_settings, load_settings, require_safe_settings, reset_settings
from models.domain import commands, timeutil
from models.service import messagebus
from models.store.db import db
from models.store.tables import GiftCertificate, OutboxEvent, SmsMessage
from tests.integration.test_actors_sms import last_types, sold_with_phone
from tests.smsc import Smsc

ROOT = Path(__file__).resolve().parents[2]
PHONE = "+79990001122"
TOKEN = "Bearer sms-gateway-token-0123456789"


class Aggregator(BaseHTTPRequestHandler):
    """Accepts a message once per Idempotency-Key (a repeat is answered 200, not sent again).
    ``script`` says what the next attempts get: "500", "timeout", "hold" (accept, then keep
    the answer back until released), or "ok"."""

    delivered: dict = {}
    script: list = []
    seen_auth: list = []
    release = threading.Event()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers.get("Idempotency-Key")
        Aggregator.seen_auth.append(self.headers.get("Authorization"))
        step = Aggregator.script.pop(0) if Aggregator.script else "ok"
        if step == "500":
            self.send_response(500)
            self.end_headers()
            return
        if step == "timeout":
            time.sleep(1.5)  # past SMS_HTTP_TIMEOUT_MS
            return
        if key not in Aggregator.delivered:
            Aggregator.delivered[key] = body
        if step == "hold":
            Aggregator.release.wait(30)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"id": "agg-" + key[:8]}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def aggregator(stack, monkeypatch, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Aggregator)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Aggregator.delivered, Aggregator.script, Aggregator.seen_auth = {}, [], []
    Aggregator.release = threading.Event()
    token_file = tmp_path / "sms-token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("SMS_GATEWAY", "http")
    monkeypatch.setenv("SMS_GATEWAY_URL", f"http://127.0.0.1:{server.server_port}/send")
    monkeypatch.setenv("SMS_HTTP_AUTH_FILE", str(token_file))
    monkeypatch.setenv("SMS_HTTP_TIMEOUT_MS", "500")
    monkeypatch.setenv("SMS_HTTP_BODY", '{"msisdn": "{to}", "message": {"text": "{text}"}, "ref": "{reference}"}')
    reset_settings()
    yield Aggregator
    Aggregator.release.set()
    server.shutdown()
    monkeypatch.undo()
    reset_settings()


def sms_row(event_id):
    with db.connection_context():
        return SmsMessage.get(SmsMessage.notification_event_id == event_id)


def stream_types(code):
    with db.connection_context():
        return [r.event_type for r in OutboxEvent.select().where(OutboxEvent.message_key == code).order_by(OutboxEvent.id)]


def test_http_gateway_fails_first_then_accepts_one_delivery_and_one_notification_sent(aggregator, caplog):
    from actors.sms import deliver

    code, event_id, secret = sold_with_phone(PHONE)
    aggregator.script = ["500", "timeout"]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception, match="500"):
        deliver(code, event_id, final=False)
    with pytest.raises(Exception, match="unreachable"):
        deliver(code, event_id, final=False)
    assert deliver(code, event_id, final=False) == "sent"
    assert deliver(code, event_id) == "not-requested"  # the trigger again: nothing more
    assert list(aggregator.delivered) == [event_id]
    body = aggregator.delivered[event_id]
    assert body["msisdn"] == PHONE and body["ref"] == event_id and secret in body["message"]["text"]
    assert "Никому не сообщайте CVC" in body["message"]["text"]
    assert set(aggregator.seen_auth) == {TOKEN}  # from SMS_HTTP_AUTH_FILE
    assert stream_types(code).count("notification.sent") == 1
    row = sms_row(event_id)
    assert row.status == "SENT" and row.attempts == 3 and row.gateway_id == "agg-" + event_id[:8]
    logged = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert secret not in logged and PHONE not in logged and "sms-gateway-token" not in logged


def test_a_gateway_that_always_fails_gives_failed_and_an_alert_then_a_rerequest_succeeds(aggregator):
    from actors.sms import deliver

    code, event_id, secret = sold_with_phone(PHONE)
    aggregator.script = ["500"] * 3
    for _ in range(2):
        with pytest.raises(Exception):
            deliver(code, event_id, final=False)
    assert deliver(code, event_id, final=True) == "failed"
    assert stream_types(code)[-2:] == ["notification.failed", "alert"]
    with db.connection_context():
        alert = OutboxEvent.select().where((OutboxEvent.message_key == code) & (OutboxEvent.event_type == "alert")).get()
        assert alert.envelope["payload"]["code"] == "NOTIFICATION_FAILED"
        assert secret not in json.dumps(alert.envelope)
        # when support asks again (POST /certificates/{code}/notifications)
        messagebus.handle(commands.RequestNotification(code), commands.Context(actor="support"))
        again = (OutboxEvent.select().where((OutboxEvent.message_key == code)
                                            & (OutboxEvent.event_type == "notification.requested"))
                 .order_by(OutboxEvent.id.desc()).get())
    # then a new round delivers the same CVC, once
    assert deliver(code, str(again.event_id)) == "sent"
    assert secret in aggregator.delivered[str(again.event_id)]["message"]["text"]
    assert stream_types(code)[-1] == "notification.sent"


def publish_without_hand_off() -> None:
    from workers.kafka import ensure_topics
    from workers.relay import Relay

    ensure_topics()
    relay = Relay(on_published=lambda rows: None)
    relay.publish_pending()
    relay.close()


def test_a_worker_killed_after_the_gateway_accepted_sends_no_second_sms(aggregator, monkeypatch):
    code, event_id, _ = sold_with_phone(PHONE)
    publish_without_hand_off()
    aggregator.script = ["hold"]
    monkeypatch.setenv("SMS_SWEEP_AFTER_MS", "300")
    reset_settings()
    # when a worker sends, the gateway accepts, and the worker is killed before it records it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    worker = subprocess.Popen([sys.executable, "-c", "from actors.sms import deliver; from actors.common import "
                               f"ensure_db; ensure_db(); deliver({code!r}, {event_id!r})"], cwd=ROOT, env=env,
                              start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while event_id not in aggregator.delivered and time.monotonic() < deadline:
        time.sleep(0.05)
    assert event_id in aggregator.delivered, worker.communicate(timeout=5)[0]
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    aggregator.release.set()
    assert sms_row(event_id).status == "SENDING"
    # then, the lease past, the sweeper hands it over again and the retry is told "already sent"
    from actors.sms import deliver, stuck_requests

    time.sleep(0.4)
    with db.connection_context():
        assert (code, event_id) in stuck_requests(limit=100_000)  # (other tests' requests too)
    assert deliver(code, event_id) == "sent"
    assert list(aggregator.delivered) == [event_id] and stream_types(code).count("notification.sent") == 1


def test_a_lost_hand_off_is_made_good_by_the_sweeper_once(aggregator, monkeypatch):
    import dramatiq

    import actors  # noqa: F401
    from actors.broker import broker
    from workers import scheduler

    monkeypatch.setenv("SMS_SWEEP_AFTER_MS", "200")
    reset_settings()
    code, event_id, secret = sold_with_phone(PHONE)
    publish_without_hand_off()  # the relay killed before the hand-off: nothing enqueued
    time.sleep(0.3)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=10)
    worker.start()
    try:
        for _ in range(3):  # ticks of the scheduler, each finding what is still stuck
            scheduler.tick()
            time.sleep(0.3)
        deadline = time.monotonic() + 15
        while stream_types(code)[-1] != "notification.sent" and time.monotonic() < deadline:
            time.sleep(0.05)
            scheduler.tick()
    finally:
        worker.stop()
    # (the sweeper also finds other tests' requests left pending in this database: only ours counts)
    assert secret in aggregator.delivered[event_id]["message"]["text"]
    assert stream_types(code).count("notification.sent") == 1 and sms_row(event_id).attempts == 1


@pytest.fixture
def smsc(stack, monkeypatch):
    server = Smsc()
    monkeypatch.setenv("SMS_GATEWAY", "smpp")
    monkeypatch.setenv("SMPP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMPP_PORT", str(server.port))
    monkeypatch.setenv("SMPP_SYSTEM_ID", "gcp")
    monkeypatch.setenv("SMPP_PASSWORD", "smpp-pw1")
    reset_settings()
    yield server
    server.close()
    monkeypatch.undo()
    reset_settings()


def test_smpp_sends_ucs2_concatenated_parts_and_maps_the_receipt(smsc, caplog):
    from actors.sms import deliver

    caplog.set_level(logging.DEBUG)
    code, event_id, secret = sold_with_phone(PHONE)
    assert deliver(code, event_id) == "sent"
    assert smsc.binds == [("gcp", "smpp-pw1")]
    assert len(smsc.messages) == 1
    message = smsc.messages[0]
    # Cyrillic: UCS-2 (data_coding 8); the text is longer than 70 characters: concatenated parts
    assert message["destination"] == PHONE.lstrip("+") and secret in message["text"] and code in message["text"]
    assert message["parts"] == 2 and all(p["data_coding"] == 8 and p["esm_class"] & 0x40 for p in smsc.parts)
    assert stream_types(code).count("notification.sent") == 1
    # an undelivered receipt: notification.failed and an alert
    smsc.receipt_state = "UNDELIV"
    other, other_event, _ = sold_with_phone(PHONE)
    assert deliver(other, other_event) == "failed"
    assert stream_types(other)[-2:] == ["notification.failed", "alert"]
    logged = "\n".join(r.name + " " + r.getMessage() + json.dumps(r.__dict__, default=str)
                       for r in caplog.records if r.name != "peewee")  # (peewee: WARNING in the service)
    assert secret not in logged and "smpp-pw1" not in logged and PHONE not in logged


def test_smpp_never_submits_twice_when_an_attempt_died_mid_send(smsc):
    from actors.sms import deliver

    code, event_id, _ = sold_with_phone(PHONE)
    with db.connection_context():  # an attempt that took the lease and died (its lease is past)
        SmsMessage.insert(notification_event_id=event_id, code=code, status="SENDING", attempts=1,
                          created_at=timeutil.utcnow(), touched_at=timeutil.utcnow(),
                          sending_until=timeutil.utcnow()).execute()
    assert deliver(code, event_id) == "failed" and smsc.parts == []
    assert sms_row(event_id).last_error == "UNKNOWN_OUTCOME"
    assert stream_types(code)[-2:] == ["notification.failed", "alert"]


def test_a_doubled_trigger_during_a_send_sends_nothing_more(aggregator):
    from actors.sms import deliver

    code, event_id, _ = sold_with_phone(PHONE)
    aggregator.script = ["hold"]
    first = threading.Thread(target=deliver, args=(code, event_id))
    first.start()
    deadline = time.monotonic() + 10
    while event_id not in aggregator.delivered and time.monotonic() < deadline:
        time.sleep(0.02)
    assert deliver(code, event_id) == "in-flight"
    aggregator.release.set()
    first.join(10)
    assert stream_types(code).count("notification.sent") == 1 and len(aggregator.delivered) == 1


def test_the_log_gateway_writes_each_message_once_and_masks_the_console(stack, monkeypatch, tmp_path, capfd):
    from actors.sms import deliver

    log_path = tmp_path / "sms.log"
    monkeypatch.setenv("SMS_GATEWAY", "log")
    monkeypatch.setenv("SMS_LOG_PATH", str(log_path))
    reset_settings()
    try:
        code, event_id, secret = sold_with_phone(PHONE)
        assert deliver(code, event_id) == "sent"
        from actors.gateways import LogGateway, Sms

        LogGateway(get_settings()).send(Sms(PHONE, "again", event_id, "again"))  # a retry: not twice
        lines = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert len(lines) == 1 and lines[0]["reference"] == event_id and secret in lines[0]["text"]
        console = capfd.readouterr().err
        assert "SMS to +7999***1122" in console and secret not in console and PHONE not in console
    finally:
        monkeypatch.undo()
        reset_settings()


def test_delivery_settings_are_checked_and_the_log_gateway_is_development_only(monkeypatch, tmp_path):
    base = {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x", "KAFKA_BOOTSTRAP_SERVERS": "x:9092",
            "JWT_SECRET": "j" * 40, "CVC_ENCRYPTION_KEY": "k" * 40}
    for key in list(os.environ):
        if key.startswith(("SMS_", "SMPP_", "NOTIFY_", "GCP_ENV")):
            monkeypatch.delenv(key)
    for key, value in base.items():
        monkeypatch.setenv(key, value)

    def problems(**env):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        try:
            require_safe_settings(load_settings())
            return ""
        except ConfigError as exc:
            return str(exc)
        finally:
            for key in env:
                monkeypatch.delenv(key)

    assert load_settings().notify_via == "crm" and problems() == ""  # no gateway: CRM fetches the CVC
    assert "development only" in problems(SMS_GATEWAY="log")
    assert "NOTIFY_VIA=sms needs an SMS_GATEWAY" in problems(NOTIFY_VIA="sms")
    assert "SMPP_HOST" in problems(SMS_GATEWAY="smpp")
    assert "SMS_HTTP_BODY" in problems(SMS_GATEWAY_URL="http://gw/send", SMS_HTTP_BODY="not json")
    missing = problems(SMS_GATEWAY_URL="http://gw/send", SMS_HTTP_AUTH_FILE=str(tmp_path / "absent"))
    assert "SMS_HTTP_AUTH_FILE cannot be read" in missing
    secret_file = tmp_path / "pw"
    secret_file.write_text("smpp-pw1\n")
    monkeypatch.setenv("SMPP_PASSWORD_FILE", str(secret_file))
    assert load_settings().smpp_password == "smpp-pw1"
    assert "smpp-pw1" not in problems(SMS_GATEWAY="smpp", NOTIFY_VIA="bogus")
    secret_file.write_text("a-password-too-long")
    long = problems(SMS_GATEWAY="smpp", SMPP_HOST="smsc", SMPP_SYSTEM_ID="gcp")
    assert "8 characters" in long and "a-password-too-long" not in long
