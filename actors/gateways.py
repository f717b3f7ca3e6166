"""SMS gateways behind one small interface, chosen by ``SMS_GATEWAY``.

``send(Sms) -> Accepted`` hands one message to the gateway, or raises :class:`GatewayError`
(worth retrying: down, timeout, 5xx) or :class:`GatewayRefused` (not worth it: the number or
the message was refused). ``Sms.reference`` is the notification request's id, and every gateway
is given it as its idempotency key, so a retry after an unknown outcome (a worker killed between
the gateway's acceptance and our record of it) never sends a second SMS:

- ``log`` (the development default) appends the message to ``SMS_LOG_PATH`` (``.local/sms.log``)
  unless that reference is there already, and prints a masked line on the console;
- ``http`` posts a JSON body rendered from ``SMS_HTTP_BODY`` (``{to}``, ``{text}``,
  ``{reference}``) with ``Idempotency-Key: <reference>`` and the ``SMS_HTTP_AUTH`` header;
- ``smpp`` speaks SMPP 3.4 through ``smpplib``: ``submit_sm`` in UCS-2, split into concatenated
  parts when longer than one SMS, with a delivery receipt requested and waited for up to
  ``SMPP_RECEIPT_WAIT_MS``. SMPP has no idempotency key: ``idempotent`` is False, and the sender
  never submits twice for one reference (see :mod:`actors.sms`).

No secret (password, token), CVC or full phone number ever reaches a log line or an error text.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from config import Settings, get_settings
from observability import mask_phone

log = logging.getLogger("gcp.sms.gateway")
#: smpplib logs every PDU at DEBUG, the message text (the CVC) and the bind password included:
#: its logger never goes below WARNING, whatever LOG_LEVEL says.
SMPP_LOGGER = "gcp.sms.smpp"
logging.getLogger(SMPP_LOGGER).setLevel(logging.WARNING)


@dataclass(frozen=True)
class Sms:
    to: str
    text: str
    reference: str
    #: The same text with the CVC masked, for anything a person or a log may read.
    masked_text: str


@dataclass(frozen=True)
class Accepted:
    gateway_id: str | None = None
    #: False when the gateway reported the message undelivered (an SMPP receipt).
    delivered: bool = True
    reason: str | None = None


class GatewayError(RuntimeError):
    """Not accepted this time (unreachable, timed out, 5xx): retried with backoff."""


class GatewayRefused(RuntimeError):
    """Refused for good (a bad number, a rejected message): not retried."""


class LogGateway:
    """Development: each SMS appended to a file (one JSON line), a masked line on the console."""

    idempotent = True
    _lock = threading.Lock()

    def __init__(self, settings: Settings):
        self.path = Path(settings.sms_log_path)

    def send(self, sms: Sms) -> Accepted:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a+", encoding="utf-8") as f:
            f.seek(0)
            if any(f'"reference": "{sms.reference}"' in line for line in f):
                return Accepted("log:" + sms.reference)  # sent before: never twice
            f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "to": sms.to,
                                "text": sms.text, "reference": sms.reference}, ensure_ascii=False) + "\n")
        print(f"SMS to {mask_phone(sms.to)}: {sms.masked_text}", file=sys.stderr, flush=True)
        return Accepted("log:" + sms.reference)


class HttpGateway:
    """JSON over HTTP, the kind most aggregators (and the retailer's own gateway) speak."""

    idempotent = True

    def __init__(self, settings: Settings):
        self.url = settings.sms_gateway_url
        self.method = settings.sms_http_method
        self.timeout = settings.sms_http_timeout_ms / 1000
        self.template = json.loads(settings.sms_http_body)
        self.auth = (settings.sms_http_auth_header, settings.sms_http_auth) if settings.sms_http_auth else None

    def body(self, sms: Sms):
        values = {"to": sms.to, "text": sms.text, "reference": sms.reference}

        def render(node):
            if isinstance(node, str):
                for name, value in values.items():
                    node = node.replace("{" + name + "}", value)
                return node
            if isinstance(node, dict):
                return {k: render(v) for k, v in node.items()}
            if isinstance(node, list):
                return [render(v) for v in node]
            return node

        return render(self.template)

    def send(self, sms: Sms) -> Accepted:
        import requests

        headers = {"Idempotency-Key": sms.reference}
        if self.auth:
            headers[self.auth[0]] = self.auth[1]
        try:
            resp = requests.request(self.method, self.url, json=self.body(sms), headers=headers,
                                    timeout=self.timeout)
        except requests.RequestException as exc:  # the URL may hold a token: name the kind only
            raise GatewayError(f"gateway unreachable: {type(exc).__name__}") from None
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise GatewayError(f"gateway answered {resp.status_code}")
        if resp.status_code >= 300:
            raise GatewayRefused(f"gateway refused the message: {resp.status_code}")
        try:
            gateway_id = str((resp.json() or {}).get("id") or "") or None
        except ValueError:
            gateway_id = None
        return Accepted(gateway_id)


class SmppGateway:
    """SMPP 3.4 (``smpplib``): bind as a transceiver, submit in UCS-2 parts, await the receipt."""

    idempotent = False

    def __init__(self, settings: Settings):
        self.s = settings

    def send(self, sms: Sms) -> Accepted:
        import smpplib.client
        import smpplib.consts
        import smpplib.exceptions
        import smpplib.gsm

        s = self.s
        client = smpplib.client.Client(s.smpp_host, s.smpp_port, timeout=s.smpp_timeout_ms / 1000,
                                       allow_unknown_opt_params=True, logger_name=SMPP_LOGGER)
        receipts: list = []
        submitted: list[str] = []
        client.set_message_sent_handler(
            lambda pdu: submitted.append(pdu.message_id.decode() if isinstance(pdu.message_id, bytes)
                                         else str(pdu.message_id)))
        client.set_message_received_handler(lambda pdu: receipts.append(pdu) or None)
        try:
            client.connect()
            client.bind_transceiver(system_id=s.smpp_system_id, password=s.smpp_password or "")
            parts, coding, msg_type = smpplib.gsm.make_parts(sms.text)
            for part in parts:
                client.send_message(
                    source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr_npi=smpplib.consts.SMPP_NPI_UNK,
                    source_addr=s.smpp_source_addr, dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                    dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN, destination_addr=sms.to.lstrip("+"),
                    short_message=part, data_coding=coding, esm_class=msg_type,
                    registered_delivery=True)
            deadline = time.monotonic() + s.smpp_timeout_ms / 1000
            while len(submitted) < len(parts) and time.monotonic() < deadline:
                client.read_once()
            if len(submitted) < len(parts):
                raise GatewayError("SMSC did not acknowledge the submission")
            deadline = time.monotonic() + s.smpp_receipt_wait_ms / 1000
            while not receipts and time.monotonic() < deadline:
                client.read_once()
        except smpplib.exceptions.PDUError as exc:
            status = exc.args[1] if len(exc.args) > 1 else None
            if status in (smpplib.consts.SMPP_ESME_RINVDSTADR, smpplib.consts.SMPP_ESME_RINVMSGLEN):
                raise GatewayRefused(f"SMSC refused the message: status {status}") from None
            raise GatewayError(f"SMSC error: status {status}") from None
        except (OSError, smpplib.exceptions.ConnectionError) as exc:
            raise GatewayError(f"SMSC unreachable: {type(exc).__name__}") from None
        finally:
            try:
                if client.state != smpplib.consts.SMPP_CLIENT_STATE_CLOSED:
                    client.unbind()
            except Exception:  # the SMSC hung up first
                pass
            client.disconnect()
        gateway_id = submitted[0] if submitted else None
        if not receipts:
            return Accepted(gateway_id)  # accepted; no receipt in time counts as sent
        text = receipts[0].short_message
        text = text.decode("latin-1") if isinstance(text, bytes) else str(text)
        state = next((w.split(":", 1)[1] for w in text.split() if w.startswith("stat:")), "")
        if state in ("DELIVRD", "ACCEPTD", "ENROUTE"):
            return Accepted(gateway_id)
        return Accepted(gateway_id, delivered=False, reason=f"SMSC receipt {state or 'unknown'}")


GATEWAYS = {"log": LogGateway, "http": HttpGateway, "smpp": SmppGateway}


def gateway(settings: Settings | None = None):
    settings = settings or get_settings()
    return GATEWAYS[settings.sms_gateway](settings)


def masked(text: str, secret: str) -> str:
    return text.replace(secret, "*" * len(secret)) if secret else text


__all__ = ["Accepted", "GatewayError", "GatewayRefused", "Sms", "gateway", "masked"]
