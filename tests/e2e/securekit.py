"""A secured Apache Kafka for the e2e tests of issue 29 (``kafka/secure.py``: SASL_SSL with
SCRAM-SHA-512 users, an SSL listener requiring client certificates of a test CA, KRaft's
StandardAuthorizer) with the ACLs of docs/kafka-security.md on this module's topics, the
Procfile processes connected to it as the ``service`` principal, and the channels' side
(``channel``: writes the input topics, reads the stream; ``mallory``: no ACL at all).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from workers.kafka import watermarks

ROOT = Path(__file__).resolve().parents[2]
#: The SCRAM users of the test broker (``admin``, the super user, is added by the broker kit).
USERS = {name: f"{name}-{uuid.uuid4().hex[:12]}" for name in ("service", "channel", "mallory")}
#: The service's consumer groups (gcp-pump..., the readers gcp-reader-...) and the channels'.
SERVICE_GROUPS, CHANNEL_GROUPS = "gcp-", "channel-"


def secure_kit():
    """``kafka/secure.py``, loaded by path (``kafka/`` holds scripts, not a package)."""
    if "gcp_kafka_secure" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gcp_kafka_secure", ROOT / "kafka" / "secure.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gcp_kafka_secure"] = module
        spec.loader.exec_module(module)
    return sys.modules["gcp_kafka_secure"]


def module_topics() -> dict[str, str]:
    """This worker's topic settings with a suffix of their own (the processes' environment)."""
    suffix = "." + uuid.uuid4().hex[:6]
    names = {k: v + suffix for k, v in os.environ.items()
             if k.startswith("TOPIC_") and k != "TOPIC_PARTITIONS"}
    names["KAFKA_CONSUMER_GROUP"] = os.environ["KAFKA_CONSUMER_GROUP"] + suffix
    return names


class SecuredCluster:
    """The broker, the module's topics and the ACLs; :meth:`service_env` connects a process."""

    def __init__(self, root: Path):
        kit = secure_kit()
        self.kit = kit
        self.broker = kit.SecureKafka(root, USERS)
        self.topics = module_topics()
        self.root = root

    def start(self) -> SecuredCluster:
        kit, t = self.kit, self.topics
        self.broker.start()
        inputs = [t["TOPIC_SALES_ORDER"], t["TOPIC_PAYMENTS"], t["TOPIC_CLIENTS"]]
        self.broker.grant(kit.service_acls("service", inputs, [t["TOPIC_STREAM"], t["TOPIC_DLQ"]], SERVICE_GROUPS)
                          + kit.channel_acls("channel", inputs, t["TOPIC_STREAM"], CHANNEL_GROUPS))
        return self

    def stop(self) -> None:
        self.broker.stop()

    def topic(self, kind: str) -> str:
        return self.topics[{"order": "TOPIC_SALES_ORDER", "payment": "TOPIC_PAYMENTS", "client": "TOPIC_CLIENTS",
                            "stream": "TOPIC_STREAM", "dlq": "TOPIC_DLQ"}[kind]]

    def service_env(self, how: str = "scram", password: str | None = None, ca: str = "test-ca",
                    trust: str = "test-ca", user: str = "service") -> dict[str, str]:
        """``KAFKA_*`` of the ``service`` principal (or ``user``): ``scram`` (SASL_SSL, its password
        from a mounted file) or ``mtls`` (a client certificate signed by ``ca``); ``trust``: the CA
        the service trusts the broker by."""
        b = self.broker
        common = {**self.topics, "KAFKA_SSL_CA_LOCATION": b.certs.make_ca(trust)}
        if how == "scram":
            secret = Path(tempfile.mkdtemp(prefix="gcp-kafka-secret-")) / "password"
            secret.write_text((USERS[user] if password is None else password) + "\n")
            return {**common, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{b.ports['sasl_ssl']}",
                    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                    "KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD_FILE": str(secret)}
        crt, key = b.certs.issue(user, ca)
        return {**common, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{b.ports['ssl']}", "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SSL_CERTIFICATE_LOCATION": crt, "KAFKA_SSL_KEY_LOCATION": key}

    def client(self, principal: str, how: str = "scram") -> dict:
        """librdkafka settings of a channel-side principal."""
        return self.broker.sasl(principal) if how == "scram" else self.broker.mtls(principal)


def produce(conf: dict, topic: str, key: str, value: dict | bytes, timeout: float = 20) -> KafkaError | None:
    """One message; returns the delivery error (None: the broker has it)."""
    results = []
    producer = Producer({**conf, "enable.idempotence": False, "acks": "all", "message.timeout.ms": 8000,
                         "log_level": 0})
    producer.produce(topic, key=key.encode(), value=value if isinstance(value, bytes) else json.dumps(value).encode(),
                     on_delivery=lambda err, _msg: results.append(err))
    producer.flush(timeout)
    assert results, "no delivery report"
    return results[0]


class StreamReader:
    """The stream, read from its current end by a channel principal."""

    def __init__(self, conf: dict, topic: str):
        self.consumer = Consumer({**conf, "group.id": CHANNEL_GROUPS + uuid.uuid4().hex[:8],
                                  "enable.auto.commit": False, "log_level": 0})
        meta = self.consumer.list_topics(topic, timeout=15).topics[topic]
        assert meta.error is None and meta.partitions, f"{topic}: {meta.error}"
        parts = []
        for p in meta.partitions:
            _low, high = watermarks(self.consumer, TopicPartition(topic, p), 15)
            parts.append(TopicPartition(topic, p, high))
        self.consumer.assign(parts)
        self.records: list[tuple[str | None, dict]] = []

    def wait_for(self, key: str, event_type: str, timeout: float = 45) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r_key, value in self.records:
                if r_key == key and value.get("eventType") == event_type:
                    return value
            self.poll(0.3)
        raise AssertionError(f"no {event_type} of {key} on the stream; have {[(k, v.get('eventType')) for k, v in self.records]}")

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                self.records.append((msg.key().decode() if msg.key() else None, json.loads(msg.value())))

    def close(self) -> None:
        self.consumer.close()
