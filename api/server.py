"""The web process's gunicorn worker: gunicorn's ``gthread``, with each request read whole by
the worker's event loop before a thread takes it.

A plain ``gthread`` worker gives a connection to a thread as soon as its first byte arrives; the
thread then blocks until the headers are complete. A hundred clients sending their headers a
byte at a time (slowloris) held every thread, and the service answered nobody (measured: 10 of
10 health checks timed out). gunicorn's advice is a buffering proxy in front; this worker is
that buffer, so the Procfile's ``web`` is safe on its own:

- the event loop reads what a connection sends, without blocking, until the headers and a
  ``Content-Length`` body (up to ``MAX_BODY_BYTES``) are in, then hands the bytes to a thread,
  which parses them as gunicorn always does;
- a request not complete within ``REQUEST_READ_TIMEOUT_MS`` of its first byte is answered 408
  and closed, so a slow client costs a socket and its buffer, never a thread;
- a chunked or oversized body, and headers past ``MAX_HEADER_BYTES``, go to a thread as soon as
  the headers are in (or the limit is hit): gunicorn and Flask refuse them as before.
"""
from __future__ import annotations

import errno
import selectors
import time
from functools import partial

from gunicorn.workers.gthread import ThreadWorker

from config import get_settings

#: Headers larger than this are handed over at once (gunicorn answers 400 for them).
MAX_HEADER_BYTES = 64 * 1024
_TIMEOUT_BODY = b'{"code":"REQUEST_TIMEOUT","message":"the request was not received in time","details":{}}'
TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


def complete(buffer: bytes | bytearray, max_body: int) -> bool:
    """Whether ``buffer`` holds a whole request a thread can take without waiting on the client:
    its headers and, for a ``Content-Length`` body the app will read, that body."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return len(buffer) > MAX_HEADER_BYTES
    length = 0
    for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return True  # chunked: gunicorn reads it (Flask bounds it with MAX_CONTENT_LENGTH)
        if name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return True  # gunicorn answers 400
    if length > max_body:
        return True  # Flask answers 413 without reading it
    return len(buffer) - (end + 4) >= length


class BufferingThreadWorker(ThreadWorker):
    """``gthread``, reading each request in the event loop first (see the module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.read_timeout = settings.request_read_timeout_ms / 1000.0
        self.max_body = settings.max_body_bytes
        self.reading: dict = {}  # conn -> (deadline, bytearray)

    # -- a new connection, or a kept-alive one sending its next request: buffer it first
    def enqueue_req(self, conn):
        if (self.cfg.is_ssl or getattr(conn, "buffered", False)  # (TLS: gunicorn reads it, as before)
                or conn.initialized and conn.parser.unreader.buf.getvalue()):
            conn.buffered = False
            return super().enqueue_req(conn)
        conn.sock.setblocking(False)
        self.reading[conn] = (time.monotonic() + self.read_timeout, bytearray())
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_some, conn))

    def _read_some(self, conn, _sock):
        _deadline, buffer = self.reading[conn]
        try:
            chunk = conn.sock.recv(65536)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return
            chunk = b""
        if not chunk:  # the client went away
            self._drop(conn)
            return
        buffer += chunk
        if complete(buffer, self.max_body):
            self.poller.unregister(conn.sock)
            del self.reading[conn]
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(buffer))
            conn.buffered = True
            self.enqueue_req(conn)

    def _drop(self, conn, answer: bytes = b"") -> None:
        self.reading.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        if answer:
            try:
                conn.sock.send(answer)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, (deadline, _b) in self.reading.items() if deadline <= now]:
            self._drop(conn, TIMEOUT_ANSWER)
