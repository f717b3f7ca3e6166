"""docker-compose.yml is valid compose (JSON Schema of the compose spec) and runs every Procfile process."""
import json
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
    assert "broker,controller" in compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]


def compose_config(**env):
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "CVC_ENCRYPTION_KEY")}
    return subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                          capture_output=True, text=True, env={**base, **env})


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian docker-compose not installed")
def test_docker_compose_config_accepts_it_with_the_secrets_set():
    result = compose_config(JWT_SECRET="s" * 40, CVC_ENCRYPTION_KEY="k" * 40)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian docker-compose not installed")
def test_docker_compose_refuses_to_start_without_the_secrets():
    result = compose_config(CVC_ENCRYPTION_KEY="k" * 40)
    assert result.returncode != 0 and "JWT_SECRET" in result.stderr, result.stderr


def test_compose_requires_the_secrets_instead_of_defaulting_them():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["x-app"]["environment"]
    for name in ("JWT_SECRET", "CVC_ENCRYPTION_KEY"):
        assert env[name].startswith("${" + name + ":?"), env[name]
