"""The ``bi`` process: the certificate mart fed only from Kafka (see :mod:`bi.consumer`).

``python -m workers.bi`` creates the ``bi`` schema if missing, serves its Prometheus metrics on
``BI_METRICS_PORT`` (default 9108; 0 turns it off; a port already taken is logged and the mart
goes on without it) and consumes until SIGTERM or SIGINT.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

from config import get_settings

log = logging.getLogger("gcp.bi")


def start_metrics_server() -> int | None:
    """Serve ``/metrics`` of this process; returns the port (None when turned off).

    With ``METRICS_TOKEN`` set, a scrape needs ``Authorization: Bearer <METRICS_TOKEN>``, as on
    the web's ``/metrics`` (prometheus_client's own server has no authentication)."""
    port = int(os.environ.get("BI_METRICS_PORT") or 9108)
    if port <= 0:
        return None
    try:
        server = metrics_server(os.environ.get("BI_METRICS_HOST") or "127.0.0.1", port,
                                get_settings().metrics_token)
    except OSError as exc:  # the port is taken: the mart goes on, without its /metrics
        log.error("bi metrics server not started", extra={"port": port, "error": str(exc)})
        return None
    threading.Thread(target=server.serve_forever, name="bi-metrics", daemon=True).start()
    return server.server_port


def metrics_server(host: str, port: int, token: str | None):
    """A threaded WSGI server of this process's registry, behind the METRICS_TOKEN check (not
    started: call ``serve_forever``)."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    from observability import REGISTRY, metrics_token_ok

    metrics = make_wsgi_app(REGISTRY)

    def app(environ, start_response):
        if not metrics_token_ok(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                                ("WWW-Authenticate", "Bearer")])
            return [b"the metrics need the METRICS_TOKEN bearer token\n"]
        return metrics(environ, start_response)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):  # one line per scrape on stderr is noise
            pass

    return make_server(host, port, app, Server, handler_class=QuietHandler)


def main() -> None:
    from bi.consumer import BiConsumer
    from observability import Outages, boot, dependency_of
    from workers.kafka import ensure_topics

    heartbeat = boot("bi")
    get_settings()
    ensure_topics()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    consumer, outages = None, Outages("bi")
    while consumer is None and not stop.is_set():  # the mart's database away at start-up
        try:
            consumer = BiConsumer()
        except Exception as exc:
            dependency = dependency_of(exc)
            if dependency is None:
                raise
            stop.wait(outages.failed(dependency, exc))
    if consumer is None:
        heartbeat.stop()
        return
    outages.ok()
    port = start_metrics_server()
    log.info("bi metrics", extra={"port": port})
    try:
        consumer.run(stop)
    finally:
        heartbeat.stop()


if __name__ == "__main__":
    main()
