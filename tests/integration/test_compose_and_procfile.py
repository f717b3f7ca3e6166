"""docker-compose.yml is valid compose (JSON Schema of the compose spec) and runs every Procfile process."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def procfile_processes() -> list[str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return [l.split(":", 1)[0].strip() for l in lines if l.strip() and not l.startswith("#")]


def test_compose_file_validates_against_the_compose_spec():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    jsonschema.validate(compose, schema)


def test_compose_names_every_procfile_process_and_the_servers():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = set(compose["services"])
    assert {"web", "worker", "pump"} <= set(procfile_processes())
    assert set(procfile_processes()) <= services
    assert {"postgres", "redis", "kafka"} <= services
    assert "process.roles=broker,controller" in compose["services"]["kafka"]["command"][-1]


#: What docker-compose.yml requires to be set (it refuses to start without each).
SECRETS = ("JWT_SECRET", "CVC_ENCRYPTION_KEY", "IDEMPOTENCY_KEY", "METRICS_TOKEN")
#: ... and the Kafka users' passwords (the super user's, the service's, the online-store channel's).
KAFKA_SECRETS = {"KAFKA_ADMIN_PASSWORD": "a" * 24, "KAFKA_GCP_PASSWORD": "g" * 24, "KAFKA_CHANNEL_PASSWORD": "c" * 24}


def compose_config(**env):
    import os

    base = {k: v for k, v in os.environ.items() if k not in SECRETS and k not in KAFKA_SECRETS}
    env = {**KAFKA_SECRETS, **env}
    return subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                          capture_output=True, text=True, env={**base, **{k: v for k, v in env.items() if v}})


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian docker-compose not installed")
def test_docker_compose_config_accepts_it_with_the_secrets_set():
    result = compose_config(JWT_SECRET="s" * 40, CVC_ENCRYPTION_KEY="k" * 40, IDEMPOTENCY_KEY="i" * 40,
                            METRICS_TOKEN="m" * 40)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian docker-compose not installed")
def test_docker_compose_refuses_to_start_without_the_secrets():
    result = compose_config(CVC_ENCRYPTION_KEY="k" * 40, IDEMPOTENCY_KEY="i" * 40, METRICS_TOKEN="m" * 40)
    assert result.returncode != 0 and "JWT_SECRET" in result.stderr, result.stderr
    result = compose_config(JWT_SECRET="s" * 40, CVC_ENCRYPTION_KEY="k" * 40, IDEMPOTENCY_KEY="i" * 40)
    assert result.returncode != 0 and "METRICS_TOKEN" in result.stderr, result.stderr
    result = compose_config(JWT_SECRET="s" * 40, CVC_ENCRYPTION_KEY="k" * 40, METRICS_TOKEN="m" * 40)
    assert result.returncode != 0 and "IDEMPOTENCY_KEY" in result.stderr, result.stderr
    for name in KAFKA_SECRETS:
        result = compose_config(JWT_SECRET="s" * 40, CVC_ENCRYPTION_KEY="k" * 40, IDEMPOTENCY_KEY="i" * 40,
                                METRICS_TOKEN="m" * 40, **{name: ""})
        assert result.returncode != 0 and name in result.stderr, (name, result.stderr)


def test_compose_requires_the_secrets_instead_of_defaulting_them():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["x-app"]["environment"]
    for name in SECRETS:
        assert env[name].startswith("${" + name + ":?"), env[name]


def test_only_the_web_port_is_published_and_the_bi_metrics_stay_inside_the_network():
    """The bi process's metrics port is for a Prometheus in the compose network, never the host's
    interfaces; the web's /metrics needs METRICS_TOKEN (required above)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    published = {name: service["ports"] for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"web": ["8080:8080"]}, published
    assert compose["services"]["bi"]["expose"] == ["9108"]


def test_every_process_has_a_restart_policy_and_a_healthcheck_of_its_own():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in procfile_processes():
        service = compose["services"][name]
        assert service.get("restart") == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[-1] == name or "/health/ready" in " ".join(test), (name, test)


def test_the_healthcheck_of_a_process_follows_its_heartbeat_file(tmp_path):
    import os
    import sys
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path), "HEARTBEAT_INTERVAL_MS": "1000"}
    check = [sys.executable, "-m", "workers.alive", "pump"]
    assert subprocess.run(check, cwd=ROOT, env=env, capture_output=True).returncode == 1  # never beat
    beat = tmp_path / "gcp-pump.alive"
    beat.touch()
    assert subprocess.run(check, cwd=ROOT, env=env, capture_output=True).returncode == 0
    old = time.time() - 10
    os.utime(beat, (old, old))
    stale = subprocess.run(check, cwd=ROOT, env=env, capture_output=True, text=True)
    assert stale.returncode == 1 and "last heartbeat" in stale.stderr


def test_a_heartbeat_touches_the_file_the_healthcheck_reads(stack):
    import os
    import time

    from models.store.liveness import Heartbeat
    from workers.alive import alive_file

    path = alive_file("test-alive")
    if os.path.exists(path):
        os.remove(path)
    beat = Heartbeat("test-alive", interval=0.1).start()
    try:
        deadline = time.monotonic() + 5
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.time() - os.path.getmtime(path) < 2
    finally:
        beat.stop()
        os.remove(path)


def test_the_service_connects_to_kafka_over_sasl_ssl_and_the_broker_closes_every_topic():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["x-app"]["environment"]
    assert (env["KAFKA_SECURITY_PROTOCOL"], env["KAFKA_SASL_MECHANISM"], env["KAFKA_SASL_USERNAME"]) == (
        "SASL_SSL", "SCRAM-SHA-512", "gcp")
    assert env["KAFKA_SASL_PASSWORD"].startswith("${KAFKA_GCP_PASSWORD:?") and "KAFKA_ALLOW_PLAINTEXT" not in env
    assert env["KAFKA_SSL_CA_LOCATION"] == "/certs/ca.pem" and "kafka-certs:/certs:ro" in compose["x-app"]["volumes"]
    for name, value in compose["x-kafka-env"].items():
        assert value.startswith("${KAFKA_"), (name, value)  # required, never defaulted
    broker = compose["services"]["kafka"]["command"][-1]
    listeners = next(l for l in broker.splitlines() if l.strip().startswith("listeners="))
    assert "PLAINTEXT" not in listeners and "CONTROLLER://127.0.0.1:" in listeners, listeners
    for line in ("allow.everyone.if.no.acl.found=false",
                 "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                 "listener.name.controller.ssl.client.auth=required", "super.users=User:admin;User:kafka"):
        assert line in broker, line
    assert compose["services"]["migrate"]["depends_on"]["kafka-acls"]["condition"] == "service_completed_successfully"


def acl_commands(text: str) -> list[str]:
    """The ``kafka-acls.sh ... --add`` commands of a shell script, one line each, blanks squeezed."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [" ".join(line.split()) for line in joined.splitlines()
            if line.strip().startswith("kafka-acls.sh") and "--add" in line]


def test_the_compose_grants_exactly_the_acls_of_the_docs():
    doc = (ROOT / "docs" / "kafka-security.md").read_text()
    block = doc.split("<!-- the same commands as docker-compose.yml's kafka-acls service -->\n```sh\n", 1)[1]
    documented = acl_commands(block.split("```", 1)[0])
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    granted = acl_commands(compose["services"]["kafka-acls"]["command"][-1].replace("$$", "$"))
    assert len(documented) == 7 and granted == documented
