"""Support tools (scope certificates:admin): balance adjustments with a second approver above
``ADJUST_APPROVAL_LIMIT``, their list, and the transfer of a balance onto another certificate.
Each view turns its input into a command of ``models.commands`` and calls ``handle``."""
from __future__ import annotations

import re

from flask.views import MethodView
from flask_smorest import Blueprint

from api import links, schemas as s
from api.auth import require, service_context
from api.certificates import ADMIN, CODE_PARAM
from api.idempotency import PARAMETER as IDEMPOTENCY_KEY, idempotent
from models import commands, messagebus, queries
from models.domain import DomainError

blp = Blueprint("support", __name__, description=(
    "Support tools (scope certificates:admin): correct a balance (above ADJUST_APPROVAL_LIMIT a "
    "second admin approves it: four eyes, never its author) and move a whole balance onto a new "
    "card. Every call is in the audit trail; applied changes are on GiftCertificates.Stream."))

_ID_RE = re.compile(s.ADJUSTMENT_ID_PATTERN)
ID_PARAM = {"in": "path", "name": "adjustment_id", "required": True,
            "schema": {"type": "string", "pattern": s.ADJUSTMENT_ID_PATTERN}}


def _adjustment_id(adjustment_id: str) -> str:
    if not _ID_RE.fullmatch(adjustment_id):
        raise DomainError("ADJUSTMENT_NOT_FOUND", "no such adjustment")
    return adjustment_id


@blp.route("/certificates/<code>/actions/adjust", parameters=[CODE_PARAM])
class Adjust(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(s.AdjustRequest)
    @blp.response(201, s.AdjustmentResultSchema, description="applied, or waiting for approval")
    @s.errors(blp, {404: ["CERTIFICATE_NOT_FOUND"],
                    409: ["INVALID_STATE", "EXCEEDS_NOMINAL", "INSUFFICIENT_FUNDS",
                          "IDEMPOTENCY_IN_PROGRESS"],
                    422: ["IDEMPOTENCY_KEY_REUSED"]}, body=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY], **links.after(links.AFTER_ADJUST, 201))
    def post(self, args, code):
        """Adjust a working certificate's balance (certificates:admin)

        A CREDIT never lifts the balance above nominal (409 EXCEEDS_NOMINAL), a DEBIT never takes
        more than `available` (409 INSUFFICIENT_FUNDS); only ISSUED, PARTIALLY_REDEEMED and
        REDEEMED certificates are adjusted (409 INVALID_STATE). Up to ADJUST_APPROVAL_LIMIT
        (5000.00 by default) it is APPLIED at once (an `adjust` event); above it, it waits as
        PENDING_APPROVAL for another admin (POST /adjustments/{id}/approve) for at most
        ADJUST_APPROVAL_TTL (24 h by default). The status follows the new balance.
        """
        command = commands.Adjust(code, args["direction"], args["amount"], args["reason"],
                                 args["comment"])
        return messagebus.handle(command, service_context())


@blp.route("/adjustments")
class Adjustments(MethodView):
    @require(*ADMIN)
    @blp.arguments(s.AdjustmentQuery, location="query")
    @blp.response(200, s.AdjustmentPageSchema)
    @s.errors(blp, {422: ["VALIDATION_ERROR"]})
    @blp.doc(**links.after(links.AFTER_LIST_ADJUSTMENTS, 200))
    def get(self, args):
        """List the adjustments, newest first, by status or certificate (certificates:admin)

        A pending adjustment past ADJUST_APPROVAL_TTL is listed, and found, as EXPIRED.
        """
        return queries.adjustments(args["status"], args["code"], args["page"], args["page_size"])


@blp.route("/adjustments/<adjustment_id>/approve", parameters=[ID_PARAM])
class Approve(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(s.DecisionRequest, required=False)
    @blp.response(200, s.AdjustmentResultSchema, description="approved and applied")
    @s.errors(blp, {403: ["SELF_APPROVAL_FORBIDDEN"], 404: ["ADJUSTMENT_NOT_FOUND"],
                    409: ["ADJUSTMENT_NOT_PENDING", "ADJUSTMENT_EXPIRED", "INVALID_STATE",
                          "EXCEEDS_NOMINAL", "INSUFFICIENT_FUNDS", "IDEMPOTENCY_IN_PROGRESS"],
                    422: ["IDEMPOTENCY_KEY_REUSED"]}, body=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    def post(self, args, adjustment_id):
        """Approve a pending adjustment: it is applied (certificates:admin, never its author)

        Its author is refused (403 SELF_APPROVAL_FORBIDDEN). Past ADJUST_APPROVAL_TTL it is
        EXPIRED (409 ADJUSTMENT_EXPIRED); already decided, 409 ADJUSTMENT_NOT_PENDING. The bounds
        are checked again against the balance of now; a refusal leaves it pending.
        """
        command = commands.ApproveAdjustment(_adjustment_id(adjustment_id), args.get("comment"))
        return messagebus.handle(command, service_context())


@blp.route("/adjustments/<adjustment_id>/reject", parameters=[ID_PARAM])
class Reject(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(s.DecisionRequest, required=False)
    @blp.response(200, s.AdjustmentResultSchema, description="rejected: nothing moved")
    @s.errors(blp, {404: ["ADJUSTMENT_NOT_FOUND"],
                    409: ["ADJUSTMENT_NOT_PENDING", "ADJUSTMENT_EXPIRED", "IDEMPOTENCY_IN_PROGRESS"],
                    422: ["IDEMPOTENCY_KEY_REUSED"]}, body=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    def post(self, args, adjustment_id):
        """Reject a pending adjustment (certificates:admin; its author may withdraw it)"""
        command = commands.RejectAdjustment(_adjustment_id(adjustment_id), args.get("comment"))
        return messagebus.handle(command, service_context())


@blp.route("/certificates/<code>/actions/transfer", parameters=[CODE_PARAM])
class Transfer(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(s.TransferRequest)
    @blp.response(200, s.TransferSchema, description="the balance moved")
    @s.errors(blp, {404: ["CERTIFICATE_NOT_FOUND"],
                    409: ["INVALID_STATE", "HOLDS_ACTIVE", "TARGET_NOT_AVAILABLE",
                          "NOMINAL_MISMATCH", "POOL_EMPTY", "IDEMPOTENCY_IN_PROGRESS"],
                    422: ["CURRENCY_MISMATCH", "IDEMPOTENCY_KEY_REUSED"]}, body=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    def post(self, args, code):
        """Transfer the whole balance onto another certificate (certificates:admin)

        From ISSUED, PARTIALLY_REDEEMED or LOCKED (else 409 INVALID_STATE), never while holds
        are active (409 HOLDS_ACTIVE). The target is `to`, an AVAILABLE code of the same currency
        (409 TARGET_NOT_AVAILABLE, 422 CURRENCY_MISMATCH; a printed nominal must equal the
        amount, 409 NOMINAL_MISMATCH), else the next electronic certificate from the pool (409
        POOL_EMPTY). The source ends CANCELLED (lockReason TRANSFERRED, balance 0.00), the target
        ISSUED with nominal = balance = the amount, keeping the source's expiresAt; one
        `transfer` event each. The target's CVC goes to the buyer as for a sale (an electronic
        one is notified; a physical card has its printed CVC).
        """
        command = commands.Transfer(code, args["reason"], args["to"])
        return messagebus.handle(command, service_context())
