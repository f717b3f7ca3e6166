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
    """Serve ``/metrics`` of this process; returns the port (None when turned off)."""
    port = int(os.environ.get("BI_METRICS_PORT") or 9108)
    if port <= 0:
        return None
    from prometheus_client import start_http_server

    from observability import REGISTRY

    try:
        start_http_server(port, addr=os.environ.get("BI_METRICS_HOST") or "127.0.0.1", registry=REGISTRY)
    except OSError as exc:  # the port is taken: the mart goes on, without its /metrics
        log.error("bi metrics server not started", extra={"port": port, "error": str(exc)})
        return None
    return port


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
