"""The operator commands other tools depend on: migrate, topics, token."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import jwt
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_token_prints_a_signed_token_with_sub_scope_and_channel(stack):
    result = run_cli("token", "--client", "pos-7", "--scope", "certificates:read certificates:redeem",
                     "--channel", "POS")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), stack["JWT_SECRET"], algorithms=["HS256"],
                        audience=stack["JWT_AUDIENCE"])
    assert claims["sub"] == "pos-7"
    assert claims["scope"] == "certificates:read certificates:redeem"
    assert claims["channel"] == "POS"


def test_token_refuses_an_unknown_scope(stack):
    result = run_cli("token", "--client", "x", "--scope", "everything")
    assert result.returncode != 0
    assert "unknown scope" in result.stderr


def test_migrate_twice_is_a_no_op(stack):
    first = run_cli("migrate")
    second = run_cli("migrate")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "up to date" in second.stdout


def test_topics_creates_the_missing_ones_and_keeps_existing_partition_counts(stack):
    # given a run-specific set of topic names, one of them pre-created by "the platform team"
    suffix = "." + uuid.uuid4().hex[:8]
    names = {"TOPIC_SALES_ORDER": "All_SalesOrder", "TOPIC_PAYMENTS": "All_Payments",
             "TOPIC_CLIENTS": "All_Clients", "TOPIC_STREAM": "GiftCertificates.Stream",
             "TOPIC_DLQ": "GiftCertificates.DLQ"}
    env = {k: v + suffix for k, v in names.items()} | {"TOPIC_PARTITIONS": "4"}
    admin = AdminClient({"bootstrap.servers": stack["KAFKA_BOOTSTRAP_SERVERS"]})
    admin.create_topics([NewTopic(env["TOPIC_PAYMENTS"], num_partitions=2, replication_factor=1)])[
        env["TOPIC_PAYMENTS"]].result(15)
    # when topics runs twice
    first = run_cli("topics", env=env)
    second = run_cli("topics", env=env)
    # then every contract topic exists; ours have 4 partitions, the platform's keeps its 2
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    meta = admin.list_topics(timeout=10).topics
    counts = {name: len(meta[name].partitions) for name in env.values() if name in meta}
    assert counts[env["TOPIC_PAYMENTS"]] == 2
    for key in ("TOPIC_SALES_ORDER", "TOPIC_CLIENTS", "TOPIC_STREAM", "TOPIC_DLQ"):
        assert counts[env[key]] == 4
    assert first.stdout.count("(created)") == 4
    assert "(created)" not in second.stdout


def test_migrate_without_database_url_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env["GCP_LOCAL_DIR"] = str(tmp_path)  # no stack.env there
    result = subprocess.run([sys.executable, "app.py", "migrate"], cwd=ROOT, capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stderr
