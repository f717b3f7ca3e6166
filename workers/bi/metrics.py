"""The mart's Prometheus metrics (in the process-wide registry of :mod:`observability`), and
the port of the ``bi`` process that serves them (``BI_METRICS_PORT``)."""
from __future__ import annotations

import logging
import os
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, make_wsgi_app

from config import get_settings
from observability import REGISTRY, metrics_token_ok

log = logging.getLogger("gcp.bi")

#: How far the mart is behind each topic it reads (contract names): seconds and messages.
LAG_SECONDS = Gauge("gcp_bi_lag_seconds", "Age of the oldest message the mart has not applied yet "
                    "(0 when caught up)", ["topic"], registry=REGISTRY, multiprocess_mode="livemax")
LAG_MESSAGES = Gauge("gcp_bi_lag_messages", "Messages the mart has not applied yet", ["topic"],
                     registry=REGISTRY, multiprocess_mode="livemax")
#: Anomalies recorded in bi.anomaly, by kind and topic.
ANOMALIES = Counter("gcp_bi_anomalies_total", "Anomalies the mart found in its input", ["kind", "topic"],
                    registry=REGISTRY)
#: Messages consumed, by topic and outcome (applied, duplicate, not_applied, invalid).
MESSAGES = Counter("gcp_bi_messages_total", "Messages consumed by the mart", ["topic", "outcome"],
                   registry=REGISTRY)
#: Daily snapshots closed (not ``..._days_...``: Prometheus reads a unit in a name, and its unit
#: of time is the second; ``promtool check metrics`` refuses ``days``).
DAYS_CLOSED = Counter("gcp_bi_snapshots_closed_total", "Daily snapshots closed", registry=REGISTRY)


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
