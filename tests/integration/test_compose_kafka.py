"""docker-compose.yml's secured Kafka, run here without Docker: the scripts of its ``kafka-certs``,
``kafka`` and ``kafka-acls`` services, as written (compose's ``$$`` read as ``$``), on the Maven
Central jars of ``kafka/`` in place of the apache/kafka image (paths and ports moved to a temporary
directory and free loopback ports). Then the service's own client settings, as the compose file
gives them, connect over SASL_SSL as User:gcp, create the contract's topics and write the stream,
while the channel's principal may write a payment but not the stream. Skipped, saying why,
where Java 17+ or Maven is missing."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from devstack import KAFKA_LIB, free_port, java_missing

pytestmark = [pytest.mark.skipif(java_missing() is not None, reason=str(java_missing())),
              pytest.mark.xdist_group("apache-kafka")]
ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"ADMIN_PASSWORD": "compose-admin-pw", "GCP_PASSWORD": "compose-gcp-pw",
             "CHANNEL_PASSWORD": "compose-channel-pw"}


def script(compose: dict, service: str, moves: dict[str, str]) -> str:
    """The service's script with compose's ``$$`` as ``$``, and each of ``moves`` applied once (in
    one pass: a path moved under /tmp is not moved again)."""
    text = compose["services"][service]["command"][-1].replace("$$", "$")
    pattern = "|".join(re.escape(old) for old in sorted(moves, key=len, reverse=True))
    return re.sub(pattern, lambda m: moves[m.group(0)], text)


@pytest.fixture
def compose_kafka(tmp_path):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    port, cport = free_port(), free_port()
    java = f"java -Xmx384m -cp '{KAFKA_LIB}/*'"
    moves = {"/certs": str(tmp_path / "certs"), "/var/lib/kafka/data": str(tmp_path / "data"),
             "/tmp/": f"{tmp_path}/", "cd /tmp\n": f"cd {tmp_path}\n", "kafka:9093": f"localhost:{port}",
             ":9093": f":{port}", "127.0.0.1:9094": f"127.0.0.1:{cport}",
             "/opt/kafka/bin/kafka-storage.sh": f"{java} kafka.tools.StorageTool",
             "exec /opt/kafka/bin/kafka-server-start.sh": f"exec {java} kafka.Kafka",
             "/opt/kafka/bin": str(ROOT / "kafka")}
    env = {**os.environ, **PASSWORDS, "KAFKA_LIB": str(KAFKA_LIB)}
    (tmp_path / "certs").mkdir()
    subprocess.run(["bash", "-c", script(compose, "kafka-certs", moves)], env=env, check=True, timeout=120,
                   capture_output=True)
    subprocess.run([str(ROOT / "kafka" / "run.sh"), "lib"], env=env, check=True, timeout=600, capture_output=True)
    log = open(tmp_path / "kafka.log", "wb")
    broker = subprocess.Popen(["bash", "-c", script(compose, "kafka", moves)], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield compose, port, tmp_path, broker, env, moves
    finally:
        if broker.poll() is None:
            os.killpg(broker.pid, 15)
            broker.wait(30)
        log.close()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


def produce(conf: dict, topic: str) -> KafkaError | None:
    results = []
    producer = Producer({**conf, "message.timeout.ms": 8000, "log_level": 0})
    producer.produce(topic, b"{}", key=b"k", on_delivery=lambda err, _m: results.append(err))
    producer.flush(20)
    return results[0]


def test_the_compose_files_secured_kafka_runs_and_the_service_connects_over_sasl_ssl(compose_kafka):
    compose, port, tmp_path, broker, env, moves = compose_kafka
    app = compose["x-app"]["environment"]
    # given the broker of docker-compose.yml, answering its own healthcheck's client settings
    service = {"bootstrap.servers": f"localhost:{port}", "security.protocol": app["KAFKA_SECURITY_PROTOCOL"],
               "sasl.mechanism": app["KAFKA_SASL_MECHANISM"], "sasl.username": app["KAFKA_SASL_USERNAME"],
               "sasl.password": PASSWORDS["GCP_PASSWORD"],
               "ssl.ca.location": app["KAFKA_SSL_CA_LOCATION"].replace("/certs", moves["/certs"])}
    admin = AdminClient({**service, "log_level": 0})
    deadline = time.monotonic() + 120
    while True:
        assert broker.poll() is None, (tmp_path / "kafka.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (tmp_path / "kafka.log").read_text()[-3000:]
        try:
            if admin.list_topics(timeout=2).brokers:
                break
        except KafkaException:
            time.sleep(0.5)
    # when the kafka-acls service's commands run (the docs' commands: kafka/kafka-acls.sh here)
    done = subprocess.run(["bash", "-c", script(compose, "kafka-acls", moves)], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    # and the docs' command that lists them, as written, shows the channel's write
    doc = (ROOT / "docs" / "kafka-security.md").read_text()
    listing = next(line for line in doc.splitlines() if line.startswith("kafka-acls.sh") and "--list" in line)
    shown = subprocess.run(["bash", "-c", listing], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                           env={**env, "KAFKA": f"localhost:{port}", "PATH": f"{ROOT / 'kafka'}{os.pathsep}{env['PATH']}"})
    assert "principal=User:online-store" in shown.stdout and "operation=WRITE" in shown.stdout, shown.stderr[-2000:]
    # then the service, as the compose file configures it, creates the contract's topics and writes the stream
    names = ["All_SalesOrder", "All_Payments", "All_Clients", "GiftCertificates.Stream", "GiftCertificates.DLQ"]
    time.sleep(0.5)
    for future in admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names]).values():
        future.result(30)
    assert produce(service, "GiftCertificates.Stream") is None
    # and the online-store channel writes a payment, but not the stream
    channel = {**service, "sasl.username": "online-store", "sasl.password": PASSWORDS["CHANNEL_PASSWORD"]}
    assert produce(channel, "All_Payments") is None
    for topic in ("GiftCertificates.Stream", "All_Clients"):  # All_Clients: CRM's alone
        assert produce(channel, topic).code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic
    assert produce(service, "All_Payments").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # and a wrong password gets nothing
    wrong = AdminClient({**service, "sasl.password": "not-the-password", "log_level": 0})
    with pytest.raises(KafkaException):
        wrong.list_topics(timeout=5)
