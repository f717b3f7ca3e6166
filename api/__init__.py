"""HTTP edge: schemas, auth, error mapping. Views build a command and call
``models.service.messagebus.handle``, or read through ``models.store.queries``.

- one blueprint module per subject (:data:`BLUEPRINT_MODULES`), each a ``blp`` of ``MethodView``s;
- ``fields`` and ``schemas``: what a request may carry and what an answer holds;
- ``errors``: the error model, each code's HTTP status, and the documented error answers;
- ``auth``, ``idempotency``, ``middleware`` (rate limit, request id, access log), ``links``;
- ``server``: the gunicorn worker that reads each request whole before a thread takes it.

Each operation names a stable ``operationId`` (generated clients name their methods after it:
never rename one) and its links lead to the next operations by those ids. The document passes
Spectral's ``spectral:oas`` and Redocly's ``recommended`` rulesets (``.spectral.yaml``,
``redocly.yaml``; ``tests/integration/test_openapi_linters.py``).
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
#: Plain Flask blueprints, outside the OpenAPI document: the AsyncAPI document and its page.
PLAIN_BLUEPRINT_MODULES = ("api.asyncapi",)


#: The document's own fields beside ``info.title`` and ``info.version``.
DOCUMENT = {
    "info": {
        "description": "Synchronous channel API of the gift certificate service. The Kafka side is "
                       "described by the AsyncAPI document at `/asyncapi.json` (rendered at `/asyncapi`); "
                       "the integration guide is `docs/integration.md`.",
        "contact": {"name": "GCP, the gift certificate service team"},
        "license": {"name": "Proprietary"},
    },
    "servers": [{"url": "{scheme}://{host}", "description": "where the service runs",
                 "variables": {"scheme": {"default": "http", "enum": ["http", "https"]},
                               "host": {"default": "localhost:8080",
                                        "description": "host and port: `make run` serves localhost:8080"}}}],
}


def register_blueprints(app, api) -> None:
    """Every blueprint (the AsyncAPI ones too), and the document's description, servers, contact and license."""
    for name in BLUEPRINT_MODULES:
        api.register_blueprint(importlib.import_module(name).blp)
    for name in PLAIN_BLUEPRINT_MODULES:
        app.register_blueprint(importlib.import_module(name).blp)
    for key, value in DOCUMENT.items():
        current = api.spec.options.get(key)
        api.spec.options[key] = {**current, **value} if isinstance(current, dict) else value
    # flask-smorest always declares it, for ``@blp.paginate``'s header; no route here uses that
    api.spec.components.schemas.pop("PaginationMetadata", None)
