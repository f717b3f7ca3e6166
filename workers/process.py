"""The life of a long-running process (``python -m workers.pump|relay|scheduler|bi``): the same
start, wait and stop for each, so only its loop is its own."""
from __future__ import annotations

import signal
import threading
from typing import Callable

from config import get_settings
from models.store.db import await_database, init_db
from models.store.liveness import Heartbeat
from observability import boot


def run_process(process: str, loop: Callable[[threading.Event], None], *,
                pool: int | None = None, database: bool = True) -> None:
    """Start ``process`` and run ``loop(stop)`` until SIGTERM or SIGINT sets ``stop``.

    In order: JSON logs and the configuration checked (an unsafe one exits, saying why), the
    heartbeat, a connection pool of ``pool`` connections when asked, the signals, PostgreSQL
    awaited when ``database`` (an outage at start is ridden through; a missing migration exits,
    saying why), the loop; the heartbeat stops once the loop returns or raises."""
    boot(process)
    heartbeat = Heartbeat(process).start()
    if pool:
        init_db(get_settings().database_url, max_connections=pool)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if database:
        await_database(process, stop)
    try:
        loop(stop)
    finally:
        heartbeat.stop()
