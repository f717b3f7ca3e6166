"""The contract's JSON Schemas (a copy lives in ``contracts/``) and message validation.

The pump validates every input message before it touches the database; the tests validate
every stream event the relay publishes. Schemas are compiled once (``jsonschema_rs``, with
``format`` checked: an ``occurredAt`` that is not RFC 3339 is a violation).
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

import jsonschema_rs

from config import ROOT, get_settings

#: Where the project keeps its copy of the contract's schemas.
SCHEMA_DIR = ROOT / "contracts"
#: Contract topic name -> schema file.
SCHEMA_FILES = {
    "All_SalesOrder": "all_salesorder.schema.json",
    "All_Payments": "all_payments.schema.json",
    "All_Clients": "all_clients.schema.json",
    "GiftCertificates.Stream": "giftcertificates_stream.schema.json",
}


class InvalidMessage(ValueError):
    """A message that cannot be processed as it is: ``reason`` goes into the DLQ ``error`` header."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@functools.lru_cache(maxsize=None)
def validator(contract_topic: str):
    schema = json.loads((SCHEMA_DIR / SCHEMA_FILES[contract_topic]).read_text())
    return jsonschema_rs.validator_for(schema, validate_formats=True)


def contract_name(topic: str) -> str:
    """The contract name of a configured topic; an unknown topic is an invalid message."""
    name = get_settings().contract_of(topic)
    if name is None:
        raise InvalidMessage(f"UNKNOWN_TOPIC: {topic}")
    return name


def errors(contract_topic: str, message: object) -> list[str]:
    """Every schema violation of ``message``, as ``/json/pointer: reason`` strings.

    The reason names the failed keyword only, never the value: these strings travel to the
    DLQ ``error`` header, ``dlq list``, ``bi.anomaly``, the logs and the BI report, and the
    validator's own messages echo the value (a customer's full phone or e-mail)."""
    found = []
    for err in validator(contract_topic).iter_errors(message):
        found.append(f"{pointer(err.instance_path)}: {reason(err)}")
    return found


#: A pointer segment shown as it is: a schema's property name or an array index. Anything else
#: (a key the sender made up) is shown as ``*``, since a key can carry data as well as a value.
_SEGMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$|^[0-9]{1,9}$")


def pointer(path) -> str:
    """The JSON pointer of a failed value, with made-up keys masked."""
    return "/" + "/".join(s if _SEGMENT_RE.match(s) else "*" for s in map(str, path))


#: What a failed keyword means, in words that hold nothing of the value.
_REASONS = {
    "pattern": "does not match pattern",
    "enum": "is not one of the allowed values",
    "const": "is not the expected value",
    "maxLength": "is too long", "minLength": "is too short",
    "maximum": "is too large", "exclusiveMaximum": "is too large",
    "minimum": "is too small", "exclusiveMinimum": "is too small",
    "maxItems": "has too many items", "minItems": "has too few items",
    "additionalProperties": "has properties the schema does not allow",
}


def reason(err) -> str:
    """Why ``err`` failed, from the schema alone (a type, a format, a missing property's name)."""
    kind = err.kind
    keyword = getattr(kind, "name", None) or (str(err.schema_path[-1]) if err.schema_path else "schema")
    if keyword == "required":
        return f'required property "{kind.property}" is missing'
    if keyword == "type":
        return "is not of type " + " or ".join(f'"{t}"' for t in kind.types)
    if keyword == "format":
        return f'is not a valid "{kind.format}"'
    return _REASONS.get(keyword, f"'{keyword}' failed")


@dataclass(frozen=True)
class Parsed:
    contract_topic: str
    message: dict

    @property
    def event_id(self) -> str:
        return self.message["eventId"]


def parse(topic: str, value: bytes | None) -> Parsed:
    """Decode and validate one Kafka message value. Raises :class:`InvalidMessage`."""
    contract = contract_name(topic)
    if value is None:
        raise InvalidMessage("INVALID_JSON: empty message")
    limit = get_settings().kafka_max_message_bytes
    if len(value) > limit:  # before decoding: the inbox and the workers never hold such a value
        raise InvalidMessage(f"TOO_LARGE: {len(value)} bytes, the limit is {limit} (KAFKA_MAX_MESSAGE_BYTES)")
    try:
        message = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidMessage(f"INVALID_JSON: {exc}") from None
    except RecursionError:  # a value nested thousands deep: a poison pill, never a crash
        raise InvalidMessage("INVALID_JSON: nested too deeply") from None
    try:
        problems = errors(contract, message)
    except (ValueError, RecursionError):  # the validator's own depth limit: a poison pill too
        raise InvalidMessage("SCHEMA_VIOLATION: nested too deeply to validate") from None
    if problems:
        shown = "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        raise InvalidMessage(f"SCHEMA_VIOLATION: {shown}"[:1000])
    return Parsed(contract, message)
