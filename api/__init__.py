"""HTTP edge: schemas, auth, error mapping. Views build a command and call ``models.service.messagebus.handle``."""
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
