"""What every actor needs: the database bound in this worker process, and the retry count."""
from __future__ import annotations

import threading

from dramatiq.middleware import CurrentMessage

from config import get_settings

_init_lock = threading.Lock()


def ensure_db() -> None:
    """Bind the Peewee database once per process (actors run in the worker's threads)."""
    from models.store.db import db, init_db

    if db.obj is None:
        with _init_lock:
            if db.obj is None:
                init_db(get_settings().database_url)


def final_attempt(max_retries: int) -> bool:
    """True when the message being processed has no retry left after this attempt."""
    message = CurrentMessage.get_current_message()
    if message is None:  # called directly (tests, tools): no retries to wait for
        return True
    retries = message.options.get("retries", 0)
    return retries >= message.options.get("max_retries", max_retries)
