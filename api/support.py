"""Support tools (scope certificates:admin): balance adjustments and transfers of a balance onto
another certificate, each with a second approver when it would take what the certificate moved
without one within ``ADJUST_APPROVAL_WINDOW`` above ``ADJUST_APPROVAL_LIMIT``; their lists.
Each view turns its input into a command of ``models.domain.commands`` and calls ``handle``."""
from __future__ import annotations

import re

from flask import jsonify
from flask.views import MethodView
from flask_smorest import Blueprint

from api import links
from api import fields, schemas
from api.auth import require, service_context
from api.errors import error_responses
from api.certificates import ADMIN, CODE_PARAM
from api.idempotency import PARAMETER as IDEMPOTENCY_KEY
from api.idempotency import idempotent
from models.domain import commands
from models.domain.errors import DomainError
from models.service import messagebus
from models.store import queries

blp = Blueprint("support", __name__, description=(
    "Support tools (scope certificates:admin): correct a balance and move a whole balance onto a "
    "new card (above ADJUST_APPROVAL_LIMIT, counting what the certificate moved without a second "
    "approver within ADJUST_APPROVAL_WINDOW, a second admin approves it: four eyes, never its "
    "author). Every call is in the audit trail; applied changes are on GiftCertificates.Stream."))

_ID_RE = re.compile(fields.ADJUSTMENT_ID_PATTERN)
ID_PARAM = {"in": "path", "name": "adjustment_id", "required": True,
            "schema": {"type": "string", "pattern": fields.ADJUSTMENT_ID_PATTERN}}


def _adjustment_id(adjustment_id: str) -> str:
    if not _ID_RE.fullmatch(adjustment_id):
        raise DomainError("ADJUSTMENT_NOT_FOUND", "no such adjustment")
    return adjustment_id


@blp.route("/certificates/<code>/actions/adjust", parameters=[CODE_PARAM])
class Adjust(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(schemas.AdjustRequest)
    @blp.response(201, schemas.AdjustmentResultSchema, description="applied, or waiting for approval")
    @error_responses(blp, "CERTIFICATE_NOT_FOUND", "INVALID_STATE", "EXCEEDS_NOMINAL", "INSUFFICIENT_FUNDS",
                     body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY], **links.after(links.AFTER_ADJUST, 201))
    @blp.doc(operationId="adjustCertificate")
    def post(self, args, code):
        """Adjust a working certificate's balance (certificates:admin)

        A CREDIT never lifts the balance above nominal (409 EXCEEDS_NOMINAL), a DEBIT never takes
        more than `available` (409 INSUFFICIENT_FUNDS); only ISSUED, PARTIALLY_REDEEMED and
        REDEEMED certificates are adjusted (409 INVALID_STATE). Up to ADJUST_APPROVAL_LIMIT
        (5000.00 by default), counting what the certificate moved without a second approver
        within ADJUST_APPROVAL_WINDOW (24 h by default; credits and debits alike), it is APPLIED
        at once (an `adjust` event); above it, it waits as
        PENDING_APPROVAL for another admin (POST /adjustments/{id}/approve) for at most
        ADJUST_APPROVAL_TTL (24 h by default). The status follows the new balance.
        """
        command = commands.Adjust(code, args["direction"], args["amount"], args["reason"],
                                 args["comment"])
        return messagebus.handle(command, service_context())


@blp.route("/adjustments")
class Adjustments(MethodView):
    @require(*ADMIN)
    @blp.arguments(schemas.AdjustmentQuery, location="query")
    @blp.response(200, schemas.AdjustmentPageSchema)
    @error_responses(blp, "VALIDATION_ERROR")
    @blp.doc(**links.after(links.AFTER_LIST_ADJUSTMENTS, 200))
    @blp.doc(operationId="listAdjustments")
    def get(self, args):
        """List the adjustments, newest first, by status or certificate (certificates:admin)

        A pending adjustment past ADJUST_APPROVAL_TTL is listed, and found, as EXPIRED.
        """
        return queries.adjustments(args["status"], args["code"], args["page"], args["page_size"])


@blp.route("/adjustments/<adjustment_id>/approve", parameters=[ID_PARAM])
class Approve(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(schemas.DecisionRequest, required=False)
    @blp.response(200, schemas.AdjustmentResultSchema, description="approved and applied")
    @error_responses(blp, "SELF_APPROVAL_FORBIDDEN", "ADJUSTMENT_NOT_FOUND", "ADJUSTMENT_NOT_PENDING",
                     "ADJUSTMENT_EXPIRED", "INVALID_STATE", "EXCEEDS_NOMINAL", "INSUFFICIENT_FUNDS",
                     body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    @blp.doc(operationId="approveAdjustment")
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
    @blp.arguments(schemas.DecisionRequest, required=False)
    @blp.response(200, schemas.AdjustmentResultSchema, description="rejected: nothing moved")
    @error_responses(blp, "ADJUSTMENT_NOT_FOUND", "ADJUSTMENT_NOT_PENDING", "ADJUSTMENT_EXPIRED", body=True,
                     idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    @blp.doc(operationId="rejectAdjustment")
    def post(self, args, adjustment_id):
        """Reject a pending adjustment (certificates:admin; its author may withdraw it)

        The balance does not move. Already decided: 409 ADJUSTMENT_NOT_PENDING; past
        ADJUST_APPROVAL_TTL: ADJUSTMENT_EXPIRED.
        """
        command = commands.RejectAdjustment(_adjustment_id(adjustment_id), args.get("comment"))
        return messagebus.handle(command, service_context())


@blp.route("/certificates/<code>/actions/transfer", parameters=[CODE_PARAM])
class Transfer(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(schemas.TransferRequest)
    @blp.response(200, schemas.TransferSchema, description="the balance moved")
    @blp.alt_response(202, schema=schemas.PendingTransferSchema, success=True,
                      description="PENDING_APPROVAL: waits for another admin (POST /transfers/{id}/approve)")
    @error_responses(blp, "CERTIFICATE_NOT_FOUND", "INVALID_STATE", "HOLDS_ACTIVE", "TARGET_NOT_AVAILABLE",
                     "NOMINAL_MISMATCH", "POOL_EMPTY", "CURRENCY_MISMATCH", body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY], **links.after(links.AFTER_TRANSFER, 202))
    @blp.doc(operationId="transferCertificate")
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

        Four eyes: when the amount, with what the certificate moved without a second approver
        within ADJUST_APPROVAL_WINDOW (24 h by default), is above ADJUST_APPROVAL_LIMIT, nothing
        moves yet: 202 PENDING_APPROVAL, until another admin approves it
        (POST /transfers/{id}/approve) within ADJUST_APPROVAL_TTL.
        """
        result = messagebus.handle(commands.Transfer(code, args["reason"], args["to"]), service_context())
        if result["status"] == "PENDING_APPROVAL":
            return jsonify(schemas.PendingTransferSchema().dump(result)), 202
        return result


_TRANSFER_ID_RE = re.compile(fields.TRANSFER_ID_PATTERN)
TRANSFER_ID_PARAM = {"in": "path", "name": "transfer_id", "required": True,
                     "schema": {"type": "string", "pattern": fields.TRANSFER_ID_PATTERN}}


def _transfer_id(transfer_id: str) -> str:
    if not _TRANSFER_ID_RE.fullmatch(transfer_id):
        raise DomainError("TRANSFER_NOT_FOUND", "no such transfer")
    return transfer_id


@blp.route("/transfers")
class Transfers(MethodView):
    @require(*ADMIN)
    @blp.arguments(schemas.TransferQuery, location="query")
    @blp.response(200, schemas.PendingTransferPageSchema)
    @error_responses(blp, "VALIDATION_ERROR")
    @blp.doc(**links.after(links.AFTER_LIST_TRANSFERS, 200))
    @blp.doc(operationId="listTransfers")
    def get(self, args):
        """List the transfers that needed a second admin, newest first (certificates:admin)

        A pending transfer past ADJUST_APPROVAL_TTL is listed, and found, as EXPIRED.
        """
        return queries.transfers(args["status"], args["code"], args["page"], args["page_size"])


@blp.route("/transfers/<transfer_id>/approve", parameters=[TRANSFER_ID_PARAM])
class ApproveTransfer(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(schemas.DecisionRequest, required=False)
    @blp.response(200, schemas.TransferSchema, description="approved and carried out")
    @error_responses(blp, "SELF_APPROVAL_FORBIDDEN", "TRANSFER_NOT_FOUND", "TRANSFER_NOT_PENDING",
                     "TRANSFER_EXPIRED", "BALANCE_CHANGED", "INVALID_STATE", "HOLDS_ACTIVE",
                     "TARGET_NOT_AVAILABLE", "NOMINAL_MISMATCH", "POOL_EMPTY", "CURRENCY_MISMATCH",
                     body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    @blp.doc(operationId="approveTransfer")
    def post(self, args, transfer_id):
        """Approve a pending transfer: it is carried out (certificates:admin, never its author)

        Its author is refused (403 SELF_APPROVAL_FORBIDDEN; identities are compared by
        ADMIN_IDENTITY_CLAIM, case-insensitively). Past ADJUST_APPROVAL_TTL it is EXPIRED (409
        TRANSFER_EXPIRED); already decided, 409 TRANSFER_NOT_PENDING. The source's balance must
        still be the amount asked for (409 BALANCE_CHANGED); a refusal leaves it pending.
        """
        command = commands.ApproveTransfer(_transfer_id(transfer_id), args.get("comment"))
        return messagebus.handle(command, service_context())


@blp.route("/transfers/<transfer_id>/reject", parameters=[TRANSFER_ID_PARAM])
class RejectTransfer(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(schemas.DecisionRequest, required=False)
    @blp.response(200, schemas.PendingTransferSchema, description="rejected: nothing moved")
    @error_responses(blp, "TRANSFER_NOT_FOUND", "TRANSFER_NOT_PENDING", "TRANSFER_EXPIRED", body=True,
                     idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    @blp.doc(operationId="rejectTransfer")
    def post(self, args, transfer_id):
        """Reject a pending transfer (certificates:admin; its author may withdraw it)

        No balance moves. Already decided: 409 TRANSFER_NOT_PENDING; past ADJUST_APPROVAL_TTL:
        TRANSFER_EXPIRED.
        """
        command = commands.RejectTransfer(_transfer_id(transfer_id), args.get("comment"))
        return messagebus.handle(command, service_context())
