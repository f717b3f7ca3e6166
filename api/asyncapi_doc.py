"""The AsyncAPI 3.0 document of the Kafka side, served at ``GET /asyncapi.json``.

Built, not written: each message's payload is the JSON Schema of ``contracts/`` (its ``$defs``
lifted into ``components.schemas``), and its examples are the files of ``contracts/examples/``,
so the document and the schemas the pump validates with never drift apart
(``tests/integration/test_asyncapi.py`` checks every example against the built payloads too).
The security schemes are the ones ``KAFKA_SECURITY_PROTOCOL`` and ``KAFKA_SASL_MECHANISM``
choose between (``docs/kafka-security.md``).
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

from models.domain.states import EventType

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / "contracts"
#: The Kafka bindings' version (AsyncAPI bindings, kafka 0.5.0).
BINDING = "0.5.0"
#: ``ce_type`` is this prefix and the ``eventType`` (``workers.relay`` writes it; a test compares).
CE_TYPE_PREFIX = "com.retailer.giftcertificates."

#: channel id -> (topic, schema file, message name, key, what it is, the input's consumer).
TOPICS = {
    "salesOrder": ("All_SalesOrder", "all_salesorder.schema.json", "SalesOrderEvent", "orderId",
                   "Orders published by the channels (OnlineStore, POS) through Orders."),
    "payments": ("All_Payments", "all_payments.schema.json", "PaymentEvent", "orderId",
                 "Payments' events: captures, refunds, failures of the channels' orders."),
    "clients": ("All_Clients", "all_clients.schema.json", "ClientEvent", "clientId",
                "CRM's client profile updates and notification results."),
    "stream": ("GiftCertificates.Stream", "giftcertificates_stream.schema.json", "CertificateEvent",
               "the certificate code (issue.blocked: the orderId; error and alert: the certificate "
               "they name, else the orderId, else the subject, e.g. `pool:RUB/ELECTRONIC/1000.00`)",
               "Every accepted state change of a certificate, once, in order per certificate."),
}
DLQ = "GiftCertificates.DLQ"

_STRING = {"type": "string"}
#: The stream's Kafka headers (beside the value: the envelope).
STREAM_HEADERS = {
    "type": "object",
    "required": ["eventType", "channel", "ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject",
                 "content-type"],
    "properties": {
        "eventType": {"type": "string", "enum": [e.value for e in EventType],
                      "description": "the envelope's `eventType`, to filter without parsing"},
        "channel": {"type": "string", "enum": ["ONLINE_STORE", "POS", "SYSTEM"],
                    "description": "the envelope's `channel`"},
        "outboxId": {"type": "string", "description": "the service's outbox row (diagnostics only)"},
        "ce_specversion": {"type": "string", "const": "1.0", "description": "CloudEvents 1.0, binary mode"},
        "ce_id": {"type": "string", "description": "= `eventId`"},
        "ce_source": {"type": "string", "format": "uri-reference",
                      "description": "`CLOUDEVENTS_SOURCE` (default `urn:retailer:gcp`)"},
        "ce_type": {"type": "string", "enum": [CE_TYPE_PREFIX + e.value for e in EventType],
                    "description": "`com.retailer.giftcertificates.` + `eventType`"},
        "ce_time": {"type": "string", "format": "date-time", "description": "= `occurredAt`"},
        "ce_subject": {"type": "string", "description": "= the record key"},
        "content-type": {"type": "string", "const": "application/json"},
    },
}
#: The DLQ's Kafka headers (the value and key are the refused message's own).
DLQ_HEADERS = {
    "type": "object",
    "required": ["error", "sourceTopic", "sourcePartition", "sourceOffset"],
    "properties": {
        "error": {"type": "string", "description": "why: the failed schema rule's path, or `PROCESSING_FAILED: ...`"},
        "sourceTopic": {"type": "string"},
        "sourcePartition": {"type": "string", "pattern": "^[0-9]+$"},
        "sourceOffset": {"type": "string", "pattern": "^[0-9]+$"},
        "failedAt": {"type": "string", "format": "date-time"},
        "eventId": {"type": "string", "description": "the input's eventId, when it could be read"},
        "valueBytes": {"type": "string", "pattern": "^[0-9]+$",
                       "description": "the whole value's size, when the copy was cut to its first 64 KiB"},
    },
}


def _lift(schema: dict, defs: dict) -> dict:
    """The contract's schema as an AsyncAPI schema: ``$schema``/``$id`` dropped, ``$defs`` moved
    into ``defs`` (the document's ``components.schemas``) and their ``$ref``s pointed there."""
    schema = copy.deepcopy(schema)
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    for name, definition in schema.pop("$defs", {}).items():
        if defs.setdefault(name, definition) != definition:
            raise ValueError(f"two contracts define {name!r} differently")

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                node["$ref"] = "#/components/schemas/" + ref[len("#/$defs/"):]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(schema)
    return schema


def _examples(topic: str, source: str) -> list[dict]:
    """``contracts/examples/`` of ``topic``: each as an AsyncAPI message example (the stream's with
    the headers the relay writes)."""
    out = []
    for path in sorted((CONTRACTS / "examples").glob("*.json")):
        example = json.loads(path.read_text(encoding="utf-8"))
        if example["topic"] != topic:
            continue
        value, key = example["value"], example["key"]
        item = {"name": path.stem, "summary": f"key `{key}` ({path.name})", "payload": value}
        if topic == TOPICS["stream"][0]:
            item["headers"] = {"eventType": value["eventType"], "channel": value["channel"],
                               "ce_specversion": "1.0", "ce_id": value["eventId"], "ce_source": source,
                               "ce_type": CE_TYPE_PREFIX + value["eventType"], "ce_time": value["occurredAt"],
                               "ce_subject": key, "content-type": "application/json"}
        out.append(item)
    return out


def _servers() -> dict:
    """The broker, as each of ``KAFKA_SECURITY_PROTOCOL``'s secured settings reaches it."""
    host = {"host": "{bootstrap}", "variables": {"bootstrap": {
        "default": "localhost:9092", "description": "KAFKA_BOOTSTRAP_SERVERS (a host:port of the cluster)"}}}
    return {
        "scram": {**host, "protocol": "kafka-secure", "title": "SASL_SSL with SCRAM (or PLAIN)",
                  "description": "`KAFKA_SECURITY_PROTOCOL=SASL_SSL`, `KAFKA_SASL_MECHANISM=SCRAM-SHA-512` "
                                 "(or `SCRAM-SHA-256`, or `PLAIN`), `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`, "
                                 "and `KAFKA_SSL_CA_LOCATION` for the broker's CA.",
                  "security": [{"$ref": "#/components/securitySchemes/scramSha512"},
                               {"$ref": "#/components/securitySchemes/scramSha256"},
                               {"$ref": "#/components/securitySchemes/saslPlain"}]},
        "mtls": {**host, "protocol": "kafka-secure", "title": "SSL with client certificates (mutual TLS)",
                 "description": "`KAFKA_SECURITY_PROTOCOL=SSL`, `KAFKA_SSL_CA_LOCATION`, "
                                "`KAFKA_SSL_CERTIFICATE_LOCATION`, `KAFKA_SSL_KEY_LOCATION` "
                                "(and `KAFKA_SSL_KEY_PASSWORD`).",
                 "security": [{"$ref": "#/components/securitySchemes/mutualTls"}]},
        "oauth": {**host, "protocol": "kafka-secure", "title": "SASL_SSL with OAUTHBEARER",
                  "description": "`KAFKA_SECURITY_PROTOCOL=SASL_SSL`, `KAFKA_SASL_MECHANISM=OAUTHBEARER` and "
                                 "`KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL`, `..._CLIENT_ID`, "
                                 "`..._CLIENT_SECRET`, `..._SCOPE` (OIDC client credentials).",
                  "security": [{"$ref": "#/components/securitySchemes/oauthBearer"}]},
        "development": {**host, "protocol": "kafka", "title": "PLAINTEXT (development only)",
                        "description": "`make run` and the tests: the embedded broker on 127.0.0.1. "
                                       "Refused outside development unless `KAFKA_ALLOW_PLAINTEXT=true`."},
    }


#: ``KAFKA_SASL_MECHANISM`` -> its security scheme (the client certificate of mTLS needs none).
MECHANISM_SCHEMES = {"SCRAM-SHA-512": "scramSha512", "SCRAM-SHA-256": "scramSha256", "PLAIN": "saslPlain",
                     "OAUTHBEARER": "oauthBearer"}
SECURITY_SCHEMES = {
    "scramSha512": {"type": "scramSha512", "description": "SASL/SCRAM-SHA-512 over TLS: a user per team."},
    "scramSha256": {"type": "scramSha256", "description": "SASL/SCRAM-SHA-256 over TLS."},
    "saslPlain": {"type": "plain", "description": "SASL/PLAIN over TLS (never over plaintext outside development)."},
    "mutualTls": {"type": "X509", "description": "A client certificate from the cluster's CA; its "
                                                 "subject is the principal the topic ACLs name."},
    "oauthBearer": {"type": "oauth2", "description": "SASL/OAUTHBEARER: a token from the OIDC "
                                                     "provider's client-credentials flow.",
                    "flows": {"clientCredentials": {
                        "tokenUrl": "https://idp.example/oauth2/token",
                        "availableScopes": {"kafka": "the cluster's scope (KAFKA_SASL_OAUTHBEARER_SCOPE)"}}},
                    "scopes": ["kafka"]},
}


def _message(channel: str, source: str, schemas: dict) -> dict:
    topic, _file, name, key, what = TOPICS[channel]
    message = {
        "name": name, "title": f"{topic} record", "summary": what, "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{name}"},
        "bindings": {"kafka": {"key": {"type": "string", "description": f"the record key: {key}"},
                               "bindingVersion": BINDING}},
        "examples": _examples(topic, source),
    }
    if channel == "stream":
        message["headers"] = STREAM_HEADERS
        message["correlationId"] = {"description": "the order or request that caused the event",
                                    "location": "$message.payload#/correlationId"}
    else:
        message["correlationId"] = {"description": "orders and payments meet by orderId",
                                    "location": f"$message.payload#/{'clientId' if channel == 'clients' else 'orderId'}"}
    return message


def build(source: str = "urn:retailer:gcp", consumer_group: str = "gcp-pump", version: str = "1.0.0") -> dict:
    """The whole document. ``source``: ``CLOUDEVENTS_SOURCE``; ``consumer_group``: the pump's group."""
    schemas: dict = {}
    for _topic, file, name, _key, _what in TOPICS.values():
        schemas[name] = _lift(json.loads((CONTRACTS / file).read_text(encoding="utf-8")), schemas)
    channels, operations, messages = {}, {}, {}
    for channel, (topic, _file, name, _key, what) in TOPICS.items():
        messages[name] = _message(channel, source, schemas)
        channels[channel] = {"address": topic, "title": topic, "description": what,
                             "messages": {name: {"$ref": f"#/components/messages/{name}"}},
                             "bindings": {"kafka": {"topic": topic, "bindingVersion": BINDING}}}
    messages["DeadLetter"] = {
        "name": "DeadLetter", "title": f"{DLQ} record", "contentType": "application/json",
        "summary": "An input record refused (invalid, or failing after retries): its key and value as "
                   "they came, and why in the headers. `python app.py dlq replay` sends it back.",
        "headers": DLQ_HEADERS, "payload": {"type": "object", "additionalProperties": True,
                                            "description": "the refused record's value, when it is a JSON object"},
        "bindings": {"kafka": {"key": {"type": "string", "description": "the refused record's key"},
                               "bindingVersion": BINDING}},
        "examples": [{"name": "invalid-payment", "summary": "a payment without its required fields",
                      "headers": {"error": "required: 'paymentId' is a required property",
                                  "sourceTopic": "All_Payments", "sourcePartition": "3", "sourceOffset": "1207",
                                  "failedAt": "2026-11-22T10:00:01Z"},
                      "payload": {"eventId": "oops", "amount": 12.5}}]}
    channels["deadLetters"] = {"address": DLQ, "title": DLQ, "description": messages["DeadLetter"]["summary"],
                               "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
                               "bindings": {"kafka": {"topic": DLQ, "bindingVersion": BINDING}}}
    group = {"kafka": {"groupId": {"type": "string", "enum": [consumer_group]}, "bindingVersion": BINDING}}
    for channel in ("salesOrder", "payments", "clients"):
        name = TOPICS[channel][2]
        operations["receive" + name] = {
            "action": "receive", "title": f"Consume {TOPICS[channel][0]}",
            "description": f"The pump validates each record against the schema, records it in its inbox, then "
                       f"commits the offset; a refused record goes to {DLQ}.",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"}], "bindings": group}
    operations["sendCertificateEvent"] = {
        "action": "send", "title": "Publish GiftCertificates.Stream",
        "description": "The relay publishes each state change once (idempotent producer), in order per key.",
        "channel": {"$ref": "#/channels/stream"},
        "messages": [{"$ref": "#/channels/stream/messages/CertificateEvent"}]}
    operations["sendDeadLetter"] = {
        "action": "send", "title": f"Publish {DLQ}",
        "description": "The pump's refusals: an invalid record at once, a failing one after its retries.",
        "channel": {"$ref": "#/channels/deadLetters"},
        "messages": [{"$ref": "#/channels/deadLetters/messages/DeadLetter"}]}
    return {
        "asyncapi": "3.0.0",
        "id": "urn:retailer:gcp:kafka",
        "info": {"title": "GCP: Gift Certificate Processing, Kafka side", "version": version,
                 "description": "What the gift certificate service consumes and produces on Kafka. All "
                                "values are UTF-8 JSON; money is a string with two decimals. The HTTP side "
                                "is `/openapi.json`; the guide for integrating teams is `docs/integration.md`.",
                 "contact": {"name": "GCP, the gift certificate service team"},
                 "license": {"name": "Proprietary"},
                 "tags": [{"name": "gift-certificates", "description": "the retailer's gift certificates"},
                          {"name": "kafka", "description": "topics, keys, headers and payloads"}]},
        "defaultContentType": "application/json",
        "servers": _servers(),
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages, "securitySchemes": SECURITY_SCHEMES},
    }


@lru_cache(maxsize=4)
def document(source: str, consumer_group: str) -> str:
    """The document as served (JSON text), built once per setting."""
    return json.dumps(build(source, consumer_group), indent=1)
