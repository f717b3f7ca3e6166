"""HTTP edge: schemas, auth, error mapping. Views build a command and call
``models.service.messagebus.handle``, or read through ``models.store.queries``.

- one blueprint module per subject (:data:`BLUEPRINT_MODULES`), each a ``blp`` of ``MethodView``s;
- ``fields`` and ``schemas``: what a request may carry and what an answer holds;
- ``errors``: the error model, each code's HTTP status, and the documented error answers;
- ``auth``, ``idempotency``, ``middleware`` (rate limit, request id, access log), ``links``;
- ``server``: the gunicorn worker that reads each request whole before a thread takes it.
"""
from __future__ import annotations

import importlib

#: Every blueprint module, registered in this order (each defines ``blp``).
BLUEPRINT_MODULES = (
    "api.health",
    "api.certificates",
    "api.authorizations",
    "api.batches",
    "api.support",
)


def register_blueprints(api) -> None:
    for name in BLUEPRINT_MODULES:
        api.register_blueprint(importlib.import_module(name).blp)
