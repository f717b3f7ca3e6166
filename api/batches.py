"""Pool loading and monitoring: ``POST /batches`` (the loader, scope ``batches:write``) and
``GET /pool``.

The body of ``POST /batches`` is checked here by hand rather than loaded through marshmallow: a
chunk carries thousands of certificates, and a field-by-field marshmallow load would cost more
than inserting them. The marshmallow schemas below document it in OpenAPI (and the answers);
the rules themselves are the domain's (``valid_code``, ``positive_money``; ``loadable_expiry`` in the use case).
"""
from __future__ import annotations

import dataclasses
import re

import marshmallow as ma
from flask import jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import validate

from api import fields
from api.auth import require, service_context
from api.errors import ApiError, error_responses
from api.idempotency import PARAMETER as IDEMPOTENCY_KEY
from api.idempotency import idempotent
from config import get_settings
from models.domain import commands
from models.domain.batch import REASON_MESSAGES
from models.domain.errors import DomainError
from models.domain.money import CODE_PATTERN, CURRENCY_PATTERN, positive_money
from models.domain.states import KINDS
from models.domain.timeutil import parse_time_or_none
from models.service import messagebus
from models.store import queries

blp = Blueprint("batches", __name__, description=(
    "The pool: the loader adds pre-generated codes in batches (`batches:write`); `GET /pool` "
    "shows what is left. See docs/loader.md."))

#: Most certificates one ``POST /batches`` may carry (the body must also fit MAX_BODY_BYTES).
MAX_CERTIFICATES = 50_000
#: Longest batch id (the database's limit).
MAX_BATCH_ID = 64
#: Item-level problems reported in one 422 answer (the rest are counted).
MAX_REPORTED = 50
#: An RFC 3339 time; without an offset it is read as UTC, as elsewhere in the API.
_TEXT_RE = re.compile(fields.TEXT_PATTERN)
_CURRENCY_RE = re.compile(CURRENCY_PATTERN)
#: The domain's code rule, inlined for speed; fullmatch: a pattern's "$" also matches before a
#: trailing newline, which must never reach COPY.
_code_ok = re.compile(CODE_PATTERN).fullmatch
_ITEM_FIELDS = frozenset({"code", "nominal", "expiresAt", "cvc"})
_BODY_FIELDS = frozenset({"batchId", "kind", "currency", "dryRun", "nominal", "expiresAt",
                          "certificates"})
READ_POOL = ("batches:write", "certificates:read", "certificates:admin")


# ---- OpenAPI documentation -----------------------------------------------------------------

class BatchCertificateSchema(fields.Strict):
    code = fields.code_field(required=True, metadata={"example": "GC7K2Q9XHF4M3NTP8C"})
    nominal = fields.Money(allow_none=True, load_default=None, metadata={
        "description": "the printed nominal; null or absent: an open-value certificate that "
                       "takes the nominal asked for at reservation"})
    expiresAt = fields.UtcDateTime(allow_none=True, load_default=None, metadata={
        "description": "RFC 3339, in the future; null or absent: no validity limit "
                       "(or CERTIFICATE_VALIDITY_DAYS from the issue)"})
    cvc = ma.fields.String(load_only=True, validate=validate.Regexp(r"^[0-9]{4,12}$"), metadata={
        "description": "the CVC printed under a PHYSICAL card's scratch panel (CVC_LENGTH digits): "
                       "required for PHYSICAL, refused for ELECTRONIC (generated at issue). The "
                       "service keeps only its keyed hash, never notifies nor discloses it"})


class BatchRequestSchema(fields.Strict):
    """Pre-generated codes to add to the pool as AVAILABLE."""

    batchId = fields.text(MAX_BATCH_ID, required=True, metadata={
        "example": "file-3f2a9c0d1e2b4a5f6e7d8c9b",
        "description": "the batch the codes belong to; sending the same batchId and codes again "
                       "adds nothing (chunks of one file share it)"})
    kind = ma.fields.String(validate=validate.OneOf(KINDS), load_default="ELECTRONIC")
    currency = fields.currency(load_default=None, metadata={"description": "ISO 4217; default RUB"})
    dryRun = ma.fields.Boolean(load_default=False, metadata={
        "description": "validate and classify against the pool without writing anything"})
    nominal = fields.Money(allow_none=True, load_default=None, metadata={
        "description": "default `nominal` of the certificates that do not give one (a "
                       "certificate's own value, null included, wins)"})
    expiresAt = fields.UtcDateTime(allow_none=True, load_default=None, metadata={
        "description": "default `expiresAt` of the certificates that do not give one"})
    certificates = ma.fields.List(ma.fields.Nested(BatchCertificateSchema), required=True,
                                  validate=validate.Length(1, MAX_CERTIFICATES))


def document(spec, settings) -> None:
    """Say in the OpenAPI document what marshmallow cannot: the CVC's length (``CVC_LENGTH``),
    and that a PHYSICAL batch brings a CVC with every card while an ELECTRONIC one brings none."""
    components = spec.components.schemas
    components["BatchCertificate"]["properties"]["cvc"]["pattern"] = f"^[0-9]{{{settings.cvc_length}}}$"
    cvc = {"cvc": {"type": "string"}}  # (restated beside each `required`, as linters expect)
    components["BatchRequest"]["anyOf"] = [
        {"required": ["kind"], "properties": {"kind": {"enum": ["PHYSICAL"]}, "certificates": {
            "items": {"required": ["cvc"], "properties": cvc}}}},
        {"properties": {"kind": {"enum": ["ELECTRONIC"]}, "certificates": {
            "items": {"not": {"required": ["cvc"], "properties": cvc}}}}},
    ]


class RejectedCodeSchema(ma.Schema):
    code = ma.fields.String(required=True)
    reason = ma.fields.String(required=True, validate=validate.OneOf(sorted(REASON_MESSAGES)),
                              metadata={"description": "DUPLICATE_CODE: loaded by another batch; "
                                                       "DUPLICATE_IN_BATCH: earlier in this request"})
    message = ma.fields.String(required=True)


class BatchResultSchema(ma.Schema):
    batchId = ma.fields.String(required=True)
    accepted = ma.fields.Integer(required=True, metadata={
        "description": "codes added to the pool by this call (would be added, in a dry run)"})
    alreadyLoaded = ma.fields.Integer(required=True, metadata={
        "description": "codes this batch had loaded before (a chunk sent again): not added twice"})
    rejected = ma.fields.List(ma.fields.Nested(RejectedCodeSchema), required=True)
    dryRun = ma.fields.Boolean(required=True)


class PoolSegmentSchema(ma.Schema):
    nominal = fields.out_money(allow_none=True, required=True, metadata={"description": "null: open value"})
    currency = ma.fields.String(required=True)
    kind = ma.fields.String(required=True, validate=validate.OneOf(KINDS))
    available = ma.fields.Integer(required=True)


class PoolSchema(ma.Schema):
    available = ma.fields.Integer(required=True)
    byNominal = ma.fields.List(ma.fields.Nested(PoolSegmentSchema), required=True)
    lowWaterMark = ma.fields.Integer(required=True, metadata={
        "description": "POOL_LOW_WATER_MARK: an `alert` (POOL_LOW_WATER) is raised on the stream "
                       "when a segment's available count falls below it"})


# ---- the request body ----------------------------------------------------------------------

class _Problems:
    """Field problems in webargs' shape: ``{"json": {"certificates": {"3": {"code": [...]}}}}``."""

    def __init__(self):
        self.fields: dict = {}
        self.items = 0

    def add(self, field: str, message: str) -> None:
        self.fields.setdefault(field, []).append(message)

    def item(self, index: int, field: str, message: str) -> None:
        self.items += 1
        if self.items <= MAX_REPORTED:
            self.fields.setdefault("certificates", {}).setdefault(str(index), {}).setdefault(
                field, []).append(message)

    def raise_any(self) -> None:
        if self.fields or self.items:
            details = {"fields": {"json": self.fields}}
            if self.items > MAX_REPORTED:
                details["invalidCertificates"] = self.items
            raise ApiError(422, "VALIDATION_ERROR", "request validation failed", **details)


def _money(value, cache: dict, problem, field: str = "nominal"):
    """A nominal as Decimal (None stays None), remembered in ``cache``; reports a bad one."""
    if value is None:
        return None
    try:
        cache[value] = amount = positive_money(value, field)
        return amount
    except DomainError as exc:
        problem(field, exc.message)
    return None


def _time(value, cache: dict, problem, field: str = "expiresAt"):
    """An ``expiresAt`` as an aware datetime (None stays None); reports a malformed one. (A
    time already passed is a well-formed request: its codes are rejected ``EXPIRED``.)"""
    if value is None:
        return None
    moment = parse_time_or_none(value) if type(value) is str else None
    if moment is None:
        problem(field, "an RFC 3339 time like 2027-12-31T23:59:59Z")
    else:
        cache[value] = moment
        return moment
    return None


def parse_batch(body: object) -> commands.LoadBatch:
    """The ``LoadBatch`` command of a request body; 422 ``VALIDATION_ERROR`` naming every bad field."""
    problems = _Problems()
    if not isinstance(body, dict):
        raise ApiError(422, "VALIDATION_ERROR", "the body must be a JSON object")
    for name in sorted(set(body) - _BODY_FIELDS):
        problems.add(name, "Unknown field.")
    batch_id = body.get("batchId")
    if not (isinstance(batch_id, str) and 1 <= len(batch_id) <= MAX_BATCH_ID and _TEXT_RE.fullmatch(batch_id)):
        problems.add("batchId", f"1 to {MAX_BATCH_ID} characters, no control characters")
    kind = body.get("kind", "ELECTRONIC")
    if kind not in KINDS:
        problems.add("kind", f"one of {', '.join(KINDS)}")
    currency = body.get("currency")
    if currency is None:
        currency = get_settings().default_currency
    elif not (isinstance(currency, str) and _CURRENCY_RE.fullmatch(currency)):
        problems.add("currency", "an ISO 4217 code like RUB")
    dry_run = body.get("dryRun", False)
    if not isinstance(dry_run, bool):
        problems.add("dryRun", "true or false")
    items = body.get("certificates")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_CERTIFICATES:
        problems.add("certificates", f"a list of 1 to {MAX_CERTIFICATES} certificates")
        items = []
    money: dict = {}
    times: dict = {}
    physical, cvc_length = kind == "PHYSICAL", get_settings().cvc_length
    default_nominal = _money(body.get("nominal"), money, problems.add, "nominal")
    default_expires = _time(body.get("expiresAt"), times, problems.add, "expiresAt")
    for index, item in enumerate(items):  # checked in place: thousands of items per request
        if type(item) is not dict:
            problems.item(index, "_schema", "a certificate is an object")
            continue
        if not item.keys() <= _ITEM_FIELDS:
            for name in sorted(set(item) - _ITEM_FIELDS):
                problems.item(index, name, "Unknown field.")
        code = item.get("code")
        if type(code) is not str or not _code_ok(code):
            problems.item(index, "code", f"a code matching {CODE_PATTERN}")
        printed = item.get("cvc")
        if physical:
            if not (type(printed) is str and len(printed) == cvc_length and printed.isascii()
                    and printed.isdigit()):
                problems.item(index, "cvc", f"a PHYSICAL card needs its printed CVC: {cvc_length} digits")
        elif "cvc" in item:
            problems.item(index, "cvc", "an ELECTRONIC certificate brings no CVC: it is generated at issue")
        if "nominal" not in item:
            item["nominal"] = default_nominal
        else:
            nominal = item["nominal"]
            if nominal is not None:
                try:
                    item["nominal"] = money[nominal]
                except (KeyError, TypeError):
                    item["nominal"] = _money(nominal, money, lambda f, m: problems.item(index, f, m))
        if "expiresAt" not in item:
            item["expiresAt"] = default_expires
        else:
            expires = item["expiresAt"]
            if expires is not None:
                try:
                    item["expiresAt"] = times[expires]
                except (KeyError, TypeError):
                    item["expiresAt"] = _time(expires, times,
                                              lambda f, m: problems.item(index, f, m))
    problems.raise_any()
    return commands.LoadBatch(batch_id, kind, currency, tuple(items), dry_run)


def _answer(result: dict, dry_run: bool):
    rejected = [{"code": refused["code"], "reason": refused["reason"],
                 "message": REASON_MESSAGES[refused["reason"]]} for refused in result["rejected"]]
    response = jsonify({"batchId": result["batchId"], "accepted": result["accepted"],
                        "alreadyLoaded": result["alreadyLoaded"], "rejected": rejected,
                        "dryRun": dry_run})
    response.status_code = 201 if result["created"] and not dry_run else 200
    return response


# ---- routes ------------------------------------------------------------------------------

@blp.route("/batches")
class Batches(MethodView):
    @require("batches:write")
    @idempotent
    @blp.doc(requestBody={"required": True, "content": {"application/json": {"schema": BatchRequestSchema}}})
    @blp.response(201, BatchResultSchema, description="codes added to the pool (or the batch created)")
    @blp.alt_response(200, schema=BatchResultSchema, description=(
        "nothing new: this batch had loaded these codes already (a chunk sent again), or a dry run"))
    @error_responses(blp, "BATCH_MISMATCH", body=True, idempotent=True)
    @blp.doc(parameters=[IDEMPOTENCY_KEY])
    @blp.doc(operationId="loadBatch")
    def post(self):
        """Add pre-generated codes to the pool (scope batches:write)

        The codes become AVAILABLE in one transaction. A code already loaded by this batch counts
        as `alreadyLoaded` (the same batchId and codes again add nothing: 200); a code of another
        batch, repeated in the request, or whose `expiresAt` has passed (`EXPIRED`) is refused row
        by row in `rejected` with its reason.
        The check digit of generated codes is the loader's business: the service accepts any
        code matching `[A-Z0-9-]{6,32}`. A malformed body or certificate is 422 VALIDATION_ERROR
        naming the fields (`details.fields.json.certificates.<index>`), and nothing is written.
        With `dryRun: true` the answer says what would happen, and nothing is written.
        """
        command = parse_batch(request.get_json(silent=True))
        ctx = dataclasses.replace(service_context(), correlation_id=command.batch_id)
        return _answer(messagebus.handle(command, ctx), command.dry_run)


@blp.route("/pool")
class Pool(MethodView):
    @require(*READ_POOL)
    @blp.response(200, PoolSchema)
    @error_responses(blp)
    @blp.doc(operationId="getPool")
    def get(self):
        """The pool: AVAILABLE certificates by nominal, currency and kind

        Scopes batches:write, certificates:read or certificates:admin. Also sets the
        `gcp_pool_available` gauge on /metrics.
        """
        return queries.pool_view()
