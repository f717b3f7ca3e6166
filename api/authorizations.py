"""Two-phase spending: authorize (CVC check and a hold), capture (debit up to the hold, release
the rest) and void (release). Per-certificate operations are serialized by the row lock."""
from __future__ import annotations

import re

from flask.views import MethodView
from flask_smorest import Blueprint

from api import links
from api import fields, schemas
from api.auth import check_channel, current_principal, require, service_context
from api.errors import error_responses
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

_ID_RE = re.compile(fields.AUTHORIZATION_ID_PATTERN)
ID_PARAM = {"in": "path", "name": "authorization_id", "required": True,
            "schema": {"type": "string", "pattern": fields.AUTHORIZATION_ID_PATTERN}}
REDEEM = ("certificates:redeem",)


def _hold_id(authorization_id: str) -> str:
    if not _ID_RE.fullmatch(authorization_id):
        raise DomainError("AUTHORIZATION_NOT_FOUND", "no such authorization")
    return authorization_id


@blp.route("/certificates/<code>/authorizations", parameters=[CODE_PARAM])
class Authorizations(MethodView):
    @require(*REDEEM)
    @idempotent
    @blp.arguments(schemas.AuthorizeRequest)
    @blp.response(201, schemas.AuthorizationSchema, description="the hold is placed")
    @error_responses(blp, "CHANNEL_FORBIDDEN", "CVC_MISMATCH", "CERTIFICATE_NOT_FOUND",
                     "INSUFFICIENT_FUNDS", "NOT_REDEEMABLE", "CURRENCY_MISMATCH", "CVC_ATTEMPTS_EXCEEDED",
                     body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY], **links.after(links.AFTER_AUTHORIZE, 201))
    @blp.doc(operationId="authorizeCertificate")
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
    @blp.arguments(schemas.CaptureRequest, required=False)
    @blp.response(200, schemas.CaptureSchema)
    @error_responses(blp, "AUTHORIZATION_NOT_FOUND", "AUTHORIZATION_NOT_ACTIVE", "AUTHORIZATION_EXPIRED",
                     "NOT_REDEEMABLE", "AMOUNT_EXCEEDS_HOLD", "CURRENCY_MISMATCH", body=True,
                     idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    @blp.doc(operationId="captureAuthorization")
    def post(self, args, authorization_id):
        """Capture: debit up to the held amount (default all) and release the rest (certificates:redeem)

        `amount` absent: the whole hold is debited. More than the hold is refused
        (AMOUNT_EXCEEDS_HOLD); a hold already captured or voided is not active
        (AUTHORIZATION_NOT_ACTIVE), and one past its expiry is AUTHORIZATION_EXPIRED.
        """
        command = commands.Capture(_hold_id(authorization_id), args["amount"],
                              channel=current_principal().channel, currency=args["currency"])
        return messagebus.handle(command, service_context())


@blp.route("/authorizations/<authorization_id>/void", parameters=[ID_PARAM])
class Void(MethodView):
    @require(*REDEEM)
    @idempotent
    @blp.arguments(schemas.EmptyRequest, required=False)
    @blp.response(200, schemas.VoidSchema)
    @error_responses(blp, "AUTHORIZATION_NOT_FOUND", "AUTHORIZATION_NOT_ACTIVE", body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    @blp.doc(operationId="voidAuthorization")
    def post(self, args, authorization_id):
        """Void: release the hold (certificates:redeem)

        Nothing is debited: the whole held amount becomes available again. A hold already
        captured or voided is not active (AUTHORIZATION_NOT_ACTIVE).
        """
        command = commands.Void(_hold_id(authorization_id), channel=current_principal().channel)
        return messagebus.handle(command, service_context())
