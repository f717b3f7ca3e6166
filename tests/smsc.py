"""A small SMSC for tests: a real SMPP 3.4 server on a local port (PDUs built and parsed by
``smpplib``, the same library the service's gateway uses, so what is tested is the wire).

It answers ``bind_transceiver``, ``submit_sm`` (recording each part), ``enquire_link`` and
``unbind``, and once every part of a message has arrived sends a delivery receipt
(``deliver_sm`` with ``stat:<receipt_state>``)."""
from __future__ import annotations

import socket
import socketserver
import struct
import threading
import uuid

from smpplib import smpp


class _Client:
    """What smpplib's PDUs ask of their 'client': a sequence and the parser's leniency."""

    allow_unknown_opt_params = True
    sequence = 1

    def next_sequence(self):
        self.sequence += 1
        return self.sequence


class Smsc(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, receipt_state: str = "DELIVRD"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.receipt_state = receipt_state
        self.binds: list[tuple[str, str]] = []
        self.parts: list[dict] = []
        self.messages: list[dict] = []  # one per complete message: destination, text
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def _text(part: dict) -> tuple[str, int, int]:
    """(text, part number, part count) of a submitted part (UDH concatenation or a whole SMS)."""
    raw = part["short_message"]
    number = count = 1
    if part["esm_class"] & 0x40:  # UDHI: 05 00 03 ref count number
        header_len = raw[0] + 1
        count, number = raw[4], raw[5]
        raw = raw[header_len:]
    text = raw.decode("utf-16-be") if part["data_coding"] == 8 else raw.decode("latin-1")
    return text, number, count


class _Handler(socketserver.BaseRequestHandler):
    def read(self) -> bytes | None:
        head = self._exact(4)
        if head is None:
            return None
        length = struct.unpack(">L", head)[0]
        return head + (self._exact(length - 4) or b"")

    def _exact(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = self.request.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def send(self, command: str, sequence: int, **fields) -> None:
        pdu = smpp.make_pdu(command, client=_Client(), **fields)
        pdu.sequence = sequence
        pdu.status = 0
        self.request.sendall(pdu.generate())

    def handle(self):
        server: Smsc = self.server
        pending: dict[str, list] = {}
        while True:
            try:
                data = self.read()
            except (ConnectionError, socket.timeout):
                return
            if data is None:
                return
            pdu = smpp.parse_pdu(data, client=_Client())
            if pdu.command == "bind_transceiver":
                with server.lock:
                    server.binds.append((pdu.system_id.decode(), pdu.password.decode()))
                self.send("bind_transceiver_resp", pdu.sequence, system_id="test-smsc")
            elif pdu.command == "submit_sm":
                part = {"destination": pdu.destination_addr.decode(), "short_message": pdu.short_message,
                        "data_coding": pdu.data_coding, "esm_class": pdu.esm_class}
                message_id = uuid.uuid4().hex[:10]
                with server.lock:
                    server.parts.append(part)
                self.send("submit_sm_resp", pdu.sequence, message_id=message_id)
                text, number, count = _text(part)
                got = pending.setdefault(part["destination"], [])
                got.append((number, text))
                if len(got) == count:
                    whole = "".join(t for _, t in sorted(got))
                    del pending[part["destination"]]
                    with server.lock:
                        server.messages.append({"destination": part["destination"], "text": whole,
                                                "parts": count})
                    receipt = (f"id:{message_id} sub:001 dlvrd:001 submit date:2612020000 done date:2612020000 "
                               f"stat:{server.receipt_state} err:000 text:").encode()
                    self.send("deliver_sm", 1000 + len(server.messages), source_addr=part["destination"],
                              destination_addr="GiftCard", esm_class=0x04, short_message=receipt)
            elif pdu.command == "enquire_link":
                self.send("enquire_link_resp", pdu.sequence)
            elif pdu.command == "unbind":
                self.send("unbind_resp", pdu.sequence)
                return
            # deliver_sm_resp and anything else: nothing to answer
