"""Two-phase spending: authorize (CVC check and a hold), capture (debit up to the hold, release
the rest) and void (release). Per-certificate operations are serialized by the row lock."""
from __future__ import annotations

import re

from flask.views import MethodView
from flask_smorest import Blueprint

from api import links
from api import schemas as s
from api.auth import check_channel, current_principal, require, service_context
from api.certificates import CODE_PARAM
from api.idempotency import PARAMETER as IDEMPOTENCY_KEY
from api.idempotency import idempotent
from models.domain import commands
from models.domain.errors import DomainError
from models.service import messagebus

blp = Blueprint("authorizations", __name__, description=(
    "Authorization holds (scope certificates:redeem). A channel token authorizes only for its "
    "own channel and captures or voids only its own channel's holds (another channel's hold "
    "is 404 AUTHORIZATION_NOT_FOUND, as if it did not exist); a backend token without a "
    "channel may act for any."))

_ID_RE = re.compile(s.AUTHORIZATION_ID_PATTERN)
ID_PARAM = {"in": "path", "name": "authorization_id", "required": True,
            "schema": {"type": "string", "pattern": s.AUTHORIZATION_ID_PATTERN}}
REDEEM = ("certificates:redeem",)
IDEMPOTENCY_ERRORS = {409: ["IDEMPOTENCY_IN_PROGRESS"], 422: ["IDEMPOTENCY_KEY_REUSED"]}


def _hold_id(authorization_id: str) -> str:
    if not _ID_RE.fullmatch(authorization_id):
        raise DomainError("AUTHORIZATION_NOT_FOUND", "no such authorization")
    return authorization_id


@blp.route("/certificates/<code>/authorizations", parameters=[CODE_PARAM])
class Authorizations(MethodView):
    @require(*REDEEM)
    @idempotent
    @blp.arguments(s.AuthorizeRequest)
    @blp.response(201, s.AuthorizationSchema, description="the hold is placed")
    @s.errors(blp, {403: ["CHANNEL_FORBIDDEN", "CVC_MISMATCH"], 404: ["CERTIFICATE_NOT_FOUND"],
                    409: ["INSUFFICIENT_FUNDS", "NOT_REDEEMABLE", "IDEMPOTENCY_IN_PROGRESS"],
                    422: ["CURRENCY_MISMATCH", "IDEMPOTENCY_KEY_REUSED"],
                    429: ["CVC_ATTEMPTS_EXCEEDED"]}, body=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY], **links.after(links.AFTER_AUTHORIZE, 201))
    def post(self, args, code):
        """Authorize: check the CVC and hold an amount (certificates:redeem)

        The hold lowers `available` until it is captured, voided or expires (`expiresAt`,
        15 minutes by default). A wrong CVC is 403 CVC_MISMATCH; the fifth wrong one in a row
        locks the certificate (reason CVC_ATTEMPTS) and raises an alert. A client whose wrong
        CVCs reach `CVC_CLIENT_BUDGET` (20 per 10 minutes by default), over any certificates,
        gets 429 CVC_ATTEMPTS_EXCEEDED (with `Retry-After`) until the window moves on.
        """
        check_channel(args["channel"])
        command = commands.Authorize(code, args["channel"], args["orderId"], args["amount"], args["cvc"],
                                args["currency"])
        return messagebus.handle(command, service_context(args["channel"], args["orderId"]))


@blp.route("/authorizations/<authorization_id>/capture", parameters=[ID_PARAM])
class Capture(MethodView):
    @require(*REDEEM)
    @idempotent
    @blp.arguments(s.CaptureRequest, required=False)
    @blp.response(200, s.CaptureSchema)
    @s.errors(blp, {404: ["AUTHORIZATION_NOT_FOUND"],
                    409: ["AUTHORIZATION_NOT_ACTIVE", "AUTHORIZATION_EXPIRED", "NOT_REDEEMABLE",
                          "IDEMPOTENCY_IN_PROGRESS"],
                    422: ["AMOUNT_EXCEEDS_HOLD", "CURRENCY_MISMATCH", "IDEMPOTENCY_KEY_REUSED"]},
              body=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    def post(self, args, authorization_id):
        """Capture: debit up to the held amount (default all) and release the rest (certificates:redeem)"""
        command = commands.Capture(_hold_id(authorization_id), args["amount"],
                              channel=current_principal().channel, currency=args["currency"])
        return messagebus.handle(command, service_context())


@blp.route("/authorizations/<authorization_id>/void", parameters=[ID_PARAM])
class Void(MethodView):
    @require(*REDEEM)
    @idempotent
    @blp.arguments(s.EmptyRequest, required=False)
    @blp.response(200, s.VoidSchema)
    @s.errors(blp, {404: ["AUTHORIZATION_NOT_FOUND"],
                    409: ["AUTHORIZATION_NOT_ACTIVE", "IDEMPOTENCY_IN_PROGRESS"],
                    422: ["IDEMPOTENCY_KEY_REUSED"]}, body=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    def post(self, args, authorization_id):
        """Void: release the hold (certificates:redeem)"""
        command = commands.Void(_hold_id(authorization_id), channel=current_principal().channel)
        return messagebus.handle(command, service_context())
