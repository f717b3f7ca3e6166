"""OpenAPI links: where an answer's ids lead next. A client generator shows them as the next
calls, and schemathesis' stateful phase follows them (reserve → look up, lock, authorize;
authorize → capture or void; lock → unlock or cancel; adjust or transfer → approve or reject).

Each view names its links with ``@blp.doc(**links.after(...))``; this module is their one table.
A link names its target by ``operationId`` (stable, as generated clients need them).
"""
from __future__ import annotations


def _link(operation_id: str, parameter: str, value: str, description: str) -> dict:
    """A link to the operation with this ``operationId`` (stable: see ``api/__init__.py``)."""
    return {"operationId": operation_id, "parameters": {parameter: value}, "description": description}


CODE = "$response.body#/code"
ON_CERTIFICATE = {
    "GetCertificate": _link("getCertificate", "code", CODE, "the certificate"),
    "Authorize": _link("authorizeCertificate", "code", CODE, "hold an amount"),
    "Lock": _link("lockCertificate", "code", CODE, "lock it"),
}
AFTER_LOCK = {
    "Unlock": _link("unlockCertificate", "code", CODE, "unlock it"),
    "Cancel": _link("cancelCertificate", "code", CODE, "cancel it"),
    "GetCertificate": ON_CERTIFICATE["GetCertificate"],
}
AUTHORIZATION = "$response.body#/authorizationId"
AFTER_AUTHORIZE = {
    "Capture": _link("captureAuthorization", "authorization_id", AUTHORIZATION, "capture the hold"),
    "Void": _link("voidAuthorization", "authorization_id", AUTHORIZATION, "release the hold"),
    "GetCertificate": ON_CERTIFICATE["GetCertificate"],
}


def _decisions(ref: str, which: str, suffix: str = "", kind: str = "adjustment") -> dict:
    """A second admin's approve and reject of the adjustment (or transfer) at ``ref``."""
    return {f"{verb.title()}{suffix}": _link(f"{verb}{kind.title()}", f"{kind}_id", ref, f"{verb} {which}")
            for verb in ("approve", "reject")}


AFTER_ADJUST = _decisions("$response.body#/adjustmentId", "a pending adjustment")
AFTER_LIST_ADJUSTMENTS = _decisions("$response.body#/items/0/adjustmentId", "the first one listed", "First")
AFTER_TRANSFER = _decisions("$response.body#/transferId", "the pending transfer", kind="transfer")
AFTER_LIST_TRANSFERS = _decisions("$response.body#/items/0/transferId", "the first one listed", "First",
                                  kind="transfer")


def after(links: dict, *statuses: int) -> dict:
    """``@blp.doc`` arguments putting ``links`` on the answers with these statuses."""
    return {"responses": {status: {"links": links} for status in statuses}}  # int keys, as flask-smorest has them
