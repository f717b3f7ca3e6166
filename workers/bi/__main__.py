"""The ``bi`` process: the certificate mart fed only from Kafka (see :mod:`workers.bi.consumer`).

``python -m workers.bi`` creates the ``bi`` schema if missing, serves its Prometheus metrics on
``BI_METRICS_PORT`` (default 9108; 0 turns it off; a port already taken is logged and the mart
goes on without it) and consumes until SIGTERM or SIGINT.
"""
from __future__ import annotations

import logging
import threading

from models.store.liveness import Outages
from observability import dependency_of
from workers.bi.consumer import BiConsumer
from workers.bi.metrics import start_metrics_server
from workers.kafka import ensure_topics
from workers.process import run_process

log = logging.getLogger("gcp.bi")


def main() -> None:
    # the mart's database is its own (BI_DATABASE_URL): not the service's to await
    run_process("bi", _serve, database=False)


def _serve(stop: threading.Event) -> None:
    ensure_topics(stop=stop)  # Kafka away or refusing: backoff
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
        return
    outages.ok()
    port = start_metrics_server()
    log.info("bi metrics", extra={"port": port})
    consumer.run(stop)


if __name__ == "__main__":
    main()
