"""Fixtures of the integration tests (the servers, database and topics are ``tests/conftest.py``'s):
the web app, built once per test module on the suite's settings, a client of it per test, and
``env`` to change settings for one test, and the outbox ``relay`` running in a thread."""
from __future__ import annotations

import threading

import pytest

from app import create_app
from config import get_settings, reset_settings


@pytest.fixture(scope="module")
def app(stack):
    """The Flask app of ``create_app``, as gunicorn serves it."""
    return create_app(get_settings())


@pytest.fixture
def client(app):
    """A test client of :func:`app`."""
    return app.test_client()


@pytest.fixture
def env(monkeypatch):
    """Change settings for one test: ``env(NAME=value, OTHER=None)``."""
    def change(**values):
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        reset_settings()
    yield change
    monkeypatch.undo()
    reset_settings()


@pytest.fixture
def relay(stack):
    """The outbox relay running in a thread of the test process, until the test ends."""
    from workers.kafka import ensure_topics
    from workers.relay import Relay

    ensure_topics()
    r = Relay()
    stop = threading.Event()
    thread = threading.Thread(target=r.run, args=(stop,), daemon=True)
    thread.start()
    yield r
    stop.set()
    thread.join(15)
