"""Dramatiq actors: thin wrappers around ``models.service.messagebus.handle``.

The broker is configured first (``actors.broker``), then every actor module is imported, so
``dramatiq actors`` (the Procfile's worker) finds them all.
"""
from actors.broker import broker  # noqa: F401  (must come before the actor modules)
from actors import inbox, sms  # noqa: F401,E402
