"""The service on a secured Apache Kafka (issue 29): the Procfile processes connect as the
``service`` principal over SASL_SSL/SCRAM-SHA-512 or mutual TLS, behind the broker's ACLs
(``tests/e2e/securekit.py``); the test plays the channels with principals of their own.

- a whole sale (reserve over HTTP, order and payment produced by the ``channel`` principal,
  ``issue`` on the stream) over SCRAM, and again over mutual TLS;
- a wrong password, a client certificate of another CA and a broker certificate the service
  does not trust: reported once in plain words, ``/health/ready`` names the error class, the
  processes ride it out instead of exiting;
- a principal without a write ACL cannot publish a payment (the service never sees it); the
  channel cannot write to the stream.

Skipped, saying why, where Java 17+ or Maven is missing (``.ci/run`` installs them).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests
from confluent_kafka import KafkaError

from devstack import free_port, java_missing
from tests.e2e import flow
from tests.e2e.conftest import E2E_ENV, Api, Procs
from tests.e2e.securekit import USERS, SecuredCluster, StreamReader, produce
from tests.helpers import uid, unique_code, unique_currency

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(java_missing() is not None, reason=str(java_missing())),
              pytest.mark.xdist_group("apache-kafka")]
FULL = ("web", "worker", "pump", "relay")


class Service:
    """The processes of one configuration at a time (two would share the consumer group)."""

    def __init__(self, cluster: SecuredCluster):
        self.cluster, self.key, self.procs = cluster, None, None

    def run(self, how: str, names: tuple[str, ...] = FULL, **kwargs) -> Procs:
        key = (how, names, tuple(sorted(kwargs.items())))
        if key == self.key:
            return self.procs
        self.stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_", "KAFKA_"))}
        env.update(E2E_ENV, PORT=str(free_port()),
                   PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
        env.update(self.cluster.service_env(how, **kwargs))
        self.procs, self.key = Procs(env, Path(tempfile.mkdtemp(prefix="gcp-e2e-secure-"))), key
        for name in names:
            self.procs.start(name)
        return self.procs

    def stop(self) -> None:
        if self.procs is not None:
            dead = self.procs.dead()
            self.procs.stop_all()
            self.procs, self.key = None, None
            assert not dead, f"a process died on its own: {dead}"


@pytest.fixture(scope="module")
def cluster(stack, tmp_path_factory):
    cluster = SecuredCluster(tmp_path_factory.mktemp("secured-kafka")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def service(cluster):
    service = Service(cluster)
    yield service
    service.stop()


def started(service: Service, how: str) -> Api:
    """The whole service over ``how``, ready, its topics created by itself (the Create ACL)."""
    procs = service.run(how)
    procs.wait_web(90)
    reader_conf, stream = service.cluster.client("channel"), service.cluster.topic("stream")
    deadline = time.monotonic() + 60
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**reader_conf, "log_level": 0})
    while not admin.list_topics(stream, timeout=10).topics[stream].partitions:
        assert time.monotonic() < deadline, "the service did not create its topics:\n" + procs.log_tail("relay")
        time.sleep(0.3)
    return Api(procs.url)


def sell(api: Api, cluster: SecuredCluster, how: str = "scram") -> tuple[str, dict]:
    """Reserve over HTTP, order and payment from the ``channel`` principal; returns the code and
    the ``issue`` read from the stream by the channel."""
    currency, code, order_id = unique_currency(), unique_code(), uid("order-")
    api.load([code], "1000.00", currency)
    assert api.reserve(order_id, "1000.00", currency=currency)["code"] == code
    channel = cluster.client("channel", how)
    reader = StreamReader(channel, cluster.topic("stream"))
    try:
        order = flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00", currency=currency)
        payment = flow.payment(order_id, "1000.00", currency=currency, gc={"code": code, "operation": "PURCHASE"})
        assert produce(channel, cluster.topic("order"), order_id, order) is None
        assert produce(channel, cluster.topic("payment"), order_id, payment) is None
        return code, reader.wait_for(code, "issue")
    finally:
        reader.close()


def test_a_whole_sale_over_sasl_ssl_scram(service, cluster):
    api = started(service, "scram")
    code, issue = sell(api, cluster)
    assert issue["payload"]["nominal"] == "1000.00"
    assert api.certificate(code)["status"] == "ISSUED"


def test_a_principal_without_a_write_acl_cannot_publish_a_payment(service, cluster):
    api = started(service, "scram")
    currency, code, order_id = unique_currency(), unique_code(), uid("order-")
    api.load([code], "1000.00", currency)
    api.reserve(order_id, "1000.00", currency=currency)
    channel, mallory = cluster.client("channel"), cluster.client("mallory")
    assert produce(channel, cluster.topic("order"), order_id,
                   flow.order(order_id, [flow.gc_line(code, "1000.00")], "1000.00", currency=currency)) is None
    # when a principal with no ACL publishes the payment that would complete the order
    forged = flow.payment(order_id, "1000.00", currency=currency, gc={"code": code, "operation": "PURCHASE"})
    refused = produce(mallory, cluster.topic("payment"), order_id, forged)
    # then the broker refuses it, and the service never sees it: no inbox row, nothing issued
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused
    time.sleep(3)
    from models.store.db import db

    with db.connection_context():
        seen = db.execute_sql("SELECT count(*) FROM inbox_message WHERE event_id = %s", (forged["eventId"],)).fetchone()[0]
    assert seen == 0
    assert api.certificate(code)["status"] == "RESERVED"
    # while the channel's own payment of the same order goes through
    reader = StreamReader(channel, cluster.topic("stream"))
    try:
        paid = flow.payment(order_id, "1000.00", currency=currency, gc={"code": code, "operation": "PURCHASE"})
        assert produce(channel, cluster.topic("payment"), order_id, paid) is None
        assert reader.wait_for(code, "issue")["causationId"] == paid["eventId"]
    finally:
        reader.close()


def test_a_channel_cannot_write_to_the_stream(service, cluster):
    started(service, "scram")
    key = "forged-" + uuid.uuid4().hex[:8]
    reader = StreamReader(cluster.client("channel"), cluster.topic("stream"))
    try:
        # when the channel (which may read the stream) writes an `issue` of its own to it
        refused = produce(cluster.client("channel"), cluster.topic("stream"), key,
                          {"eventType": "issue", "code": key})
        # then the broker refuses it, and no reader of the stream ever gets it
        assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused
        reader.poll(2)
        assert [k for k, _v in reader.records if k == key] == []
    finally:
        reader.close()
    # and neither may the principal without ACLs
    refused = produce(cluster.client("mallory"), cluster.topic("stream"), key, {"eventType": "issue"})
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused


def test_a_whole_sale_over_mutual_tls(service, cluster):
    api = started(service, "mtls")
    code, issue = sell(api, cluster, how="mtls")
    assert issue["payload"]["orderId"] and api.certificate(code)["status"] == "ISSUED"


def ready(procs: Procs) -> dict | None:
    try:
        return requests.get(procs.url + "/health/ready", timeout=10).json()
    except (requests.RequestException, ValueError):
        return None


@pytest.mark.parametrize("how, kwargs, error_class, words", [
    ("scram", {"password": "wrong-password-" + uuid.uuid4().hex[:6]}, "KafkaAuthenticationFailed",
     "Kafka refused this service's login"),
    ("mtls", {"ca": "rogue-ca"}, "KafkaCertificateRefused", "Kafka refused this service's client certificate"),
    ("scram", {"trust": "rogue-ca"}, "KafkaCertificateUntrusted", "Kafka's certificate is not trusted"),
], ids=["wrong-password", "client-cert-of-another-ca", "untrusted-broker"])
def test_a_refused_login_or_certificate_is_reported_once_and_ridden_out(service, how, kwargs, error_class, words):
    # given the web and the pump with credentials the broker (or the service) refuses
    procs = service.run(how, names=("web", "pump"), **kwargs)
    # then /health/ready says kafka is down, naming the class of the refusal
    deadline, body = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        body = ready(procs)
        if body and body["checks"].get("kafka", {}).get("error") == error_class:
            break
        time.sleep(0.5)
    assert body and body["status"] == "unavailable" and body["checks"]["kafka"] == {"status": "down", "error": error_class}, body
    assert body["checks"]["postgres"]["status"] == "ok" and "kafka" in body["failing"]
    # and the pump, which cannot create or read its topics, says why in plain words, once,
    # backing off instead of exiting (a supervisor would restart it in a loop)
    deadline = time.monotonic() + 60
    while words not in procs.log_tail("pump", 10**6) and time.monotonic() < deadline:
        assert not procs.dead(), procs.log_tail("pump")
        time.sleep(0.5)
    for _ in range(3):
        ready(procs)
    time.sleep(20)  # at least one more attempt of the pump (15 s each) and of the web
    assert not procs.dead(), procs.log_tail("pump")
    for name in ("pump", "web"):
        log = procs.log_tail(name, 10**6)
        assert log.count(words) == 1, (name, log[-3000:])
        secrets = [*USERS.values(), kwargs.get("password", USERS["service"])]
        assert not [s for s in secrets if s in log], f"a password in the {name} log"


def test_a_principal_without_the_acls_is_reported_once_and_ridden_out(service):
    # given the pump as a principal the broker authenticates but grants nothing
    procs = service.run("scram", names=("pump",), user="mallory")
    words = "Kafka's ACLs deny this service's principal (user mallory)"
    # then it says so in plain words, once, and keeps trying with backoff instead of exiting
    deadline = time.monotonic() + 60
    while words not in procs.log_tail("pump", 10**6) and time.monotonic() < deadline:
        assert not procs.dead(), procs.log_tail("pump")
        time.sleep(0.5)
    time.sleep(8)  # three more attempts (1, 2, 4 s apart)
    assert not procs.dead(), procs.log_tail("pump")
    assert procs.log_tail("pump", 10**6).count(words) == 1, procs.log_tail("pump")
