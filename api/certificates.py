"""Certificates: reservation for an order line, reads, the ledger, the audit trail, CVC
disclosure and support actions. Each view turns its input into a command or query."""
from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from api import links
from api import schemas
from api.auth import check_channel, current_principal, require, service_context
from api.errors import error_responses
from api.idempotency import PARAMETER as IDEMPOTENCY_KEY
from api.idempotency import idempotent
from config import get_settings
from models.domain import commands
from models.domain.money import CODE_PATTERN
from models.service import messagebus
from models.store import queries

blp = Blueprint("certificates", __name__, description=(
    "Gift certificates. Certificates are not personalised and can be spent in any channel, so "
    "any holder of `certificates:read` may read any certificate's balance and ledger; a channel "
    "token's *search* is limited to its own channel."))

#: The certificate code in a path (an unknown or malformed one is 404 CERTIFICATE_NOT_FOUND).
CODE_PARAM = {"in": "path", "name": "code", "required": True,
              "schema": {"type": "string", "pattern": CODE_PATTERN}}
READ = ("certificates:read", "certificates:admin")
ADMIN = ("certificates:admin",)


def _reserve(args: dict):
    check_channel(args["channel"])
    currency = args["currency"] or (None if args["code"] else get_settings().default_currency)
    command = commands.Reserve(args["channel"], args["orderId"], args["lineId"], args["nominal"],
                          currency, code=args["code"])
    view = messagebus.handle(command, service_context(args["channel"], args["orderId"]))
    return view, 201 if view.pop("created") else 200


RESERVE_ERRORS = ("CHANNEL_FORBIDDEN", "CERTIFICATE_NOT_FOUND", "POOL_EMPTY", "ALREADY_RESERVED",
                  "NOMINAL_MISMATCH", "CURRENCY_MISMATCH")


@blp.route("/certificates/next")
class NextCertificate(MethodView):
    @require("certificates:reserve")
    @idempotent
    @blp.arguments(schemas.ReserveRequest)
    @blp.response(201, schemas.ReservationSchema, description="reserved for this order line")
    @blp.alt_response(200, schema=schemas.ReservationSchema,
                      description="this order line was reserved before: the same certificate")
    @error_responses(blp, *RESERVE_ERRORS, body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY], **links.after(links.ON_CERTIFICATE, 201, 200))
    @blp.doc(operationId="reserveCertificate")
    def post(self, args):
        """Reserve the next certificate for an order line (scope certificates:reserve)

        Takes the next AVAILABLE electronic certificate printed for `nominal` (then an
        open-value one, which takes `nominal`), or the given `code` (a physical card scanned at
        POS, any kind). The reservation lasts until `reservedUntil` unless the order's payment
        is seen. A channel token may reserve only for its own `channel` (403 CHANNEL_FORBIDDEN).
        An empty pool is 409 POOL_EMPTY and an `issue.blocked` event.
        """
        return _reserve(args)

    @require("certificates:reserve")
    @idempotent
    @blp.arguments(schemas.ReserveQuery, location="query")
    @blp.response(201, schemas.ReservationSchema, description="reserved for this order line")
    @blp.alt_response(200, schema=schemas.ReservationSchema,
                      description="this order line was reserved before: the same certificate")
    @error_responses(blp, *RESERVE_ERRORS, idempotent=True)
    # (a manual parameter list replaces the generated one: the query's fields are named here too)
    @blp.doc(parameters=[IDEMPOTENCY_KEY, {"in": "query", "schema": schemas.ReserveQuery}], deprecated=True,
             **links.after(links.ON_CERTIFICATE, 201, 200))
    @blp.doc(operationId="reserveCertificateByQuery")
    def get(self, args):
        """Reserve (deprecated query-string form of POST /certificates/next)

        Kept for channels built against the first draft; same rules and answers as the POST.
        """
        return _reserve(args)


@blp.route("/certificates")
class Certificates(MethodView):
    @require(*READ)
    @blp.arguments(schemas.SearchQuery, location="query")
    @blp.response(200, schemas.CertificatePageSchema)
    @error_responses(blp, "CHANNEL_FORBIDDEN", "VALIDATION_ERROR")
    @blp.doc(operationId="searchCertificates")
    def get(self, args):
        """Search certificates, newest first, one page at a time (certificates:read or admin)

        A channel token sees only its own channel's certificates (asking for another channel
        is 403 CHANNEL_FORBIDDEN); a backend token without a channel sees all.
        """
        principal = current_principal()
        channel = args["channel"]
        if principal.channel:
            check_channel(channel)
            channel = principal.channel
        return queries.search_certificates(
            status=args["status"], channel=channel, order_id=args["orderId"],
            issued_from=args["issuedFrom"], issued_to=args["issuedTo"], page=args["page"],
            page_size=args["page_size"])


@blp.route("/certificates/<code>", parameters=[CODE_PARAM])
class Certificate(MethodView):
    @require(*READ)
    @blp.response(200, schemas.CertificateSchema)
    @error_responses(blp, "CERTIFICATE_NOT_FOUND")
    @blp.doc(operationId="getCertificate")
    def get(self, code):
        """The certificate: status, balance, available (certificates:read or admin)

        Never carries the CVC. Any `certificates:read` holder may read any certificate (they
        are not personalised and can be spent in any channel).
        """
        return queries.certificate_view(code)


@blp.route("/certificates/<code>/operations", parameters=[CODE_PARAM])
class Operations(MethodView):
    @require(*READ)
    @blp.arguments(schemas.PageQuery, location="query")
    @blp.response(200, schemas.OperationPageSchema)
    @error_responses(blp, "CERTIFICATE_NOT_FOUND", "VALIDATION_ERROR")
    @blp.doc(operationId="listCertificateOperations")
    def get(self, args, code):
        """The balance ledger, oldest first (certificates:read or admin)

        Its amounts add up to `remainingBalance`.
        """
        return queries.operations(code, args["page"], args["page_size"])


@blp.route("/certificates/<code>/audit", parameters=[CODE_PARAM])
class Audit(MethodView):
    @require(*ADMIN)
    @blp.arguments(schemas.PageQuery, location="query")
    @blp.response(200, schemas.AuditPageSchema)
    @error_responses(blp, "CERTIFICATE_NOT_FOUND", "VALIDATION_ERROR")
    @blp.doc(operationId="listCertificateAudit")
    def get(self, args, code):
        """The audit trail, oldest first (certificates:admin)

        Every change and CVC disclosure: who, what, when, request id, before and after.
        """
        return queries.audit_trail(code, args["page"], args["page_size"])


@blp.route("/certificates/<code>/cvc", parameters=[CODE_PARAM])
class Cvc(MethodView):
    @require("certificates:cvc")
    @blp.response(200, schemas.CvcSchema, headers={"Cache-Control": {"schema": {"type": "string"},
                                                                "description": "no-store"}})
    @error_responses(blp, "CERTIFICATE_NOT_FOUND", "CVC_ALREADY_DISCLOSED", "NO_NOTIFICATION_PENDING",
                     "INVALID_STATE")
    @blp.doc(operationId="discloseCertificateCvc")
    def get(self, code):
        """Disclose the CVC to send it to the buyer, once per notification request (certificates:cvc)

        Only where CRM sends the CVC (NOTIFY_VIA=crm). Where the service sends it by SMS
        (NOTIFY_VIA=sms) the SMS is the only way a CVC leaves: always 409 NO_NOTIFICATION_PENDING.
        Again before a new notification request: 409 CVC_ALREADY_DISCLOSED. With no
        notification pending (not yet issued, a PHYSICAL card, delivery confirmed or failed):
        409 NO_NOTIFICATION_PENDING. The disclosure is in the audit trail; the CVC is never logged.
        """
        result = messagebus.handle(commands.DiscloseCvc(code), service_context())
        return result, 200, {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _action(command):
    return messagebus.handle(command, service_context())


ACTION_ERRORS = ("CERTIFICATE_NOT_FOUND", "INVALID_STATE")


@blp.route("/certificates/<code>/actions/lock", parameters=[CODE_PARAM])
class Lock(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(schemas.ReasonRequest)
    @blp.response(200, schemas.CertificateSchema)
    @error_responses(blp, *ACTION_ERRORS, body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY], **links.after(links.AFTER_LOCK, 200))
    @blp.doc(operationId="lockCertificate")
    def post(self, args, code):
        """Lock a working certificate with a reason (certificates:admin)

        Nothing can be authorized or redeemed until it is unlocked.
        """
        return _action(commands.Lock(code, args["reason"]))


@blp.route("/certificates/<code>/actions/unlock", parameters=[CODE_PARAM])
class Unlock(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(schemas.EmptyRequest, required=False)
    @blp.response(200, schemas.CertificateSchema)
    @error_responses(blp, *ACTION_ERRORS, body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    @blp.doc(operationId="unlockCertificate")
    def post(self, args, code):
        """Unlock: back to the status before the lock (certificates:admin)

        Only a LOCKED certificate can be unlocked (409 INVALID_STATE otherwise); its count of
        failed CVC attempts starts again.
        """
        return _action(commands.Unlock(code))


@blp.route("/certificates/<code>/actions/cancel", parameters=[CODE_PARAM])
class Cancel(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(schemas.ReasonRequest)
    @blp.response(200, schemas.CertificateSchema)
    @error_responses(blp, *ACTION_ERRORS, body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    @blp.doc(operationId="cancelCertificate")
    def post(self, args, code):
        """Cancel (annul) a certificate for good, with a reason (certificates:admin)

        Active holds are voided first; CANCELLED is terminal.
        """
        return _action(commands.Cancel(code, args["reason"]))


@blp.route("/certificates/<code>/notifications", parameters=[CODE_PARAM])
class Notifications(MethodView):
    @require(*ADMIN)
    @idempotent
    @blp.arguments(schemas.EmptyRequest, required=False)
    @blp.response(202, schemas.CertificateSchema,
                  description="a new notification (of the same CVC) is requested")
    @error_responses(blp, *ACTION_ERRORS, body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    @blp.doc(operationId="resendCertificateNotification")
    def post(self, args, code):
        """Request the CVC notification again after NOTIFICATION_FAILED (certificates:admin)

        The same CVC is sent again: by SMS (NOTIFY_VIA=sms), or CRM may fetch it once through
        GET /certificates/{code}/cvc (NOTIFY_VIA=crm).
        """
        return _action(commands.RequestNotification(code))

