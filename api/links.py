"""OpenAPI links: where an answer's ids lead next. A client generator shows them as the next
calls, and schemathesis' stateful phase follows them (reserve → look up, lock, authorize;
authorize → capture or void; lock → unlock or cancel; adjust or transfer → approve or reject).

Each view names its links with ``@blp.doc(**links.after(...))``; this module is their one table.
"""
from __future__ import annotations


def _operation(path: str, method: str = "post") -> str:
    """A JSON pointer to an operation of this document (RFC 6901 escapes ``~`` and ``/``)."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def _link(path: str, parameter: str, value: str, method: str = "post", description: str = "") -> dict:
    return {"operationRef": _operation(path, method), "parameters": {parameter: value},
            "description": description}


CODE = "$response.body#/code"
ON_CERTIFICATE = {
    "GetCertificate": _link("/certificates/{code}", "code", CODE, "get", "the certificate"),
    "Authorize": _link("/certificates/{code}/authorizations", "code", CODE, description="hold an amount"),
    "Lock": _link("/certificates/{code}/actions/lock", "code", CODE, description="lock it"),
}
AFTER_LOCK = {
    "Unlock": _link("/certificates/{code}/actions/unlock", "code", CODE, description="unlock it"),
    "Cancel": _link("/certificates/{code}/actions/cancel", "code", CODE, description="cancel it"),
    "GetCertificate": ON_CERTIFICATE["GetCertificate"],
}
AUTHORIZATION = "$response.body#/authorizationId"
AFTER_AUTHORIZE = {
    "Capture": _link("/authorizations/{authorization_id}/capture", "authorization_id", AUTHORIZATION,
                     description="capture the hold"),
    "Void": _link("/authorizations/{authorization_id}/void", "authorization_id", AUTHORIZATION,
                  description="release the hold"),
    "GetCertificate": ON_CERTIFICATE["GetCertificate"],
}


def _decisions(ref: str, which: str, suffix: str = "", kind: str = "adjustment") -> dict:
    """A second admin's approve and reject of the adjustment (or transfer) at ``ref``."""
    return {f"{verb.title()}{suffix}": _link(f"/{kind}s/{{{kind}_id}}/{verb}", f"{kind}_id",
                                             ref, description=f"{verb} {which}")
            for verb in ("approve", "reject")}


AFTER_ADJUST = _decisions("$response.body#/adjustmentId", "a pending adjustment")
AFTER_LIST_ADJUSTMENTS = _decisions("$response.body#/items/0/adjustmentId", "the first one listed", "First")
AFTER_TRANSFER = _decisions("$response.body#/transferId", "the pending transfer", kind="transfer")
AFTER_LIST_TRANSFERS = _decisions("$response.body#/items/0/transferId", "the first one listed", "First",
                                  kind="transfer")


def after(links: dict, *statuses: int) -> dict:
    """``@blp.doc`` arguments putting ``links`` on the answers with these statuses."""
    return {"responses": {status: {"links": links} for status in statuses}}  # int keys, as flask-smorest has them
