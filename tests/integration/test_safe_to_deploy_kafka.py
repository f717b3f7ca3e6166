"""Safe to deploy, the Kafka connection (issue 29): the ``KAFKA_*`` security settings become
librdkafka's through one builder that every client uses, what can never work is refused at start
naming the setting, plaintext is refused outside development unless the operator vouches for the
network, no secret is ever named, and a refused login is told from an outage."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from app import create_app
from config import ConfigError, check_settings, get_settings
from config import kafka as kafka_config
from workers import kafka

ROOT = Path(__file__).resolve().parents[2]
SECURE = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
          "KAFKA_SASL_USERNAME": "gcp-service"}


@pytest.fixture
def pem(tmp_path):
    files = {}
    for name in ("ca.pem", "client.crt", "client.key"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
        files[name] = str(tmp_path / name)
    return files


def problems() -> list[str]:
    return check_settings(get_settings())


def test_scram_settings_reach_every_client_of_the_service_and_never_debug(env, tmp_path, pem):
    secret = tmp_path / "kafka-password"
    secret.write_text("a-scram-password-from-a-file\n")
    # given SASL_SSL/SCRAM with the password in a mounted file
    env(**SECURE, KAFKA_SASL_PASSWORD_FILE=str(secret), KAFKA_SSL_CA_LOCATION=pem["ca.pem"])
    want = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "gcp-service",
            "sasl.password": "a-scram-password-from-a-file", "ssl.ca.location": pem["ca.pem"]}
    # then the producer's, the consumer's and the admin's settings all carry them
    for conf in (kafka.producer_config(), kafka.consumer_config("gcp-x"), kafka_config.connection_config()):
        assert {k: conf.get(k) for k in want} == want
        assert conf["bootstrap.servers"] == get_settings().kafka_bootstrap_servers
    # and librdkafka's protocol traces are never on while SASL is, whoever asks for them
    assert "debug" not in kafka.producer_config(debug="security,broker")
    assert "debug" not in kafka.consumer_config("gcp-x", debug="all")
    assert "debug" not in kafka_config.connection_config(debug="all")
    assert problems() == []


def test_mutual_tls_and_oauthbearer_settings(env, pem):
    env(KAFKA_SECURITY_PROTOCOL="ssl", KAFKA_SSL_CA_LOCATION=pem["ca.pem"],
        KAFKA_SSL_CERTIFICATE_LOCATION=pem["client.crt"], KAFKA_SSL_KEY_LOCATION=pem["client.key"],
        KAFKA_SSL_KEY_PASSWORD="key-pass")
    conf = kafka_config.connection_config()
    assert (conf["security.protocol"], conf["ssl.certificate.location"], conf["ssl.key.location"],
            conf["ssl.key.password"]) == ("SSL", pem["client.crt"], pem["client.key"], "key-pass")
    assert not [k for k in conf if k.startswith("sasl.")] and problems() == []
    env(KAFKA_SSL_CERTIFICATE_LOCATION=None, KAFKA_SSL_KEY_LOCATION=None, KAFKA_SSL_KEY_PASSWORD=None,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="OAUTHBEARER",
        KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL="https://idp.example/oauth2/token",
        KAFKA_SASL_OAUTHBEARER_CLIENT_ID="gcp", KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET="client-secret",
        KAFKA_SASL_OAUTHBEARER_SCOPE="kafka")
    conf = kafka_config.connection_config()
    assert {k: v for k, v in conf.items() if k.startswith("sasl.")} == {
        "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.token.endpoint.url": "https://idp.example/oauth2/token",
        "sasl.oauthbearer.client.id": "gcp", "sasl.oauthbearer.client.secret": "client-secret",
        "sasl.oauthbearer.scope": "kafka"}
    assert problems() == []


@pytest.mark.parametrize("settings, names", [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({**SECURE, "KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_MECHANISM must be one of"),
    ({**SECURE, "KAFKA_SASL_MECHANISM": None}, "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_MECHANISM"),
    (SECURE, "KAFKA_SASL_MECHANISM=SCRAM-SHA-512 needs KAFKA_SASL_PASSWORD"),
    ({**SECURE, "KAFKA_SASL_USERNAME": None, "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_MECHANISM=SCRAM-SHA-512 needs KAFKA_SASL_USERNAME"),
    ({**SECURE, "KAFKA_SASL_MECHANISM": "OAUTHBEARER", "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "gcp"},
     ("KAFKA_SASL_MECHANISM=OAUTHBEARER needs KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL and "
      "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET")),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"},
     "KAFKA_SSL_CA_LOCATION names '/nonexistent/ca.pem', which is not a readable file"),
    ({"KAFKA_SASL_USERNAME": "gcp"}, "KAFKA_SASL_USERNAME set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use SASL"),
    ({"KAFKA_SSL_CA_LOCATION": "/etc/hostname"}, "KAFKA_SSL_CA_LOCATION set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ({**SECURE, "KAFKA_SASL_PASSWORD_FILE": "/nonexistent/password"},
     "KAFKA_SASL_PASSWORD_FILE cannot be read (No such file or directory)"),
])
def test_what_can_never_work_is_refused_naming_the_setting_in_development_too(env, settings, names):
    for gcp_env in (None, "development"):
        env(**settings, GCP_ENV=gcp_env)
        assert [p for p in problems() if p.startswith(names)], problems()
        with pytest.raises(ConfigError, match=names.split()[0].split("=")[0]):
            create_app(get_settings())


def test_the_certificate_and_its_key_go_together(env, pem):
    env(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CERTIFICATE_LOCATION=pem["client.crt"])
    assert any("KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together" in p for p in problems())


def test_plaintext_is_refused_outside_development_unless_the_operator_vouches_for_the_network(env):
    # given a broker across the network, outside development
    for protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
        extra = {"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "gcp",
                 "KAFKA_SASL_PASSWORD": "pw-of-gcp"} if protocol.startswith("SASL") else {}
        env(KAFKA_BOOTSTRAP_SERVERS="kafka-1.retail.example:9092,kafka-2.retail.example:9092",
            KAFKA_SECURITY_PROTOCOL=protocol, GCP_ENV=None, KAFKA_ALLOW_PLAINTEXT=None, **extra)
        # then the start is refused, naming the setting and the way out
        refused = [p for p in problems() if p.startswith(f"KAFKA_SECURITY_PROTOCOL={protocol}")]
        assert refused and "KAFKA_ALLOW_PLAINTEXT=true" in refused[0], problems()
        assert not [p for p in problems() if "pw-of-gcp" in p]
        with pytest.raises(ConfigError, match="KAFKA_SECURITY_PROTOCOL"):
            create_app(get_settings())
        # unless the operator vouches for the network, or in development
        env(KAFKA_ALLOW_PLAINTEXT="true")
        assert not [p for p in problems() if p.startswith("KAFKA_")], problems()
        env(KAFKA_ALLOW_PLAINTEXT=None, GCP_ENV="development")
        assert not [p for p in problems() if p.startswith("KAFKA_")], problems()
    # and a broker on loopback is no exception: only the operator can vouch for what is behind it
    env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9092,localhost:9093", KAFKA_SECURITY_PROTOCOL=None, GCP_ENV=None,
        KAFKA_SASL_MECHANISM=None, KAFKA_SASL_USERNAME=None, KAFKA_SASL_PASSWORD=None, KAFKA_ALLOW_PLAINTEXT=None)
    assert [p for p in problems() if p.startswith("KAFKA_SECURITY_PROTOCOL=PLAINTEXT")], problems()


def test_a_process_refuses_to_start_naming_the_kafka_setting():
    env = {k: v for k, v in os.environ.items() if k != "COV_CORE_SOURCE"}
    env.update(PYTHONPATH=str(ROOT), KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
               KAFKA_SASL_USERNAME="gcp", KAFKA_SASL_PASSWORD="")
    done = subprocess.run([sys.executable, "-m", "workers.pump"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "refusing to start" in done.stderr and "KAFKA_SASL_PASSWORD" in done.stderr, done.stderr[-2000:]


def test_a_refused_login_or_certificate_is_told_from_an_outage_and_logged_once(env, caplog):
    env(**SECURE, KAFKA_SASL_PASSWORD="the-password-itself")
    kafka_config.access_granted()
    refused = KafkaError(KafkaError._AUTHENTICATION, "sasl_ssl://k:9093/bootstrap: SASL authentication error: "
                         "Authentication failed during authentication due to invalid credentials")
    caplog.set_level(logging.WARNING, logger="gcp.kafka")
    # when librdkafka reports the same refused login at every reconnection
    for _ in range(5):
        kafka_config.report_error(refused)
    # then it is logged once, in plain words that name the settings to check, never the password
    lines = [r for r in caplog.records if r.name == "gcp.kafka"]
    assert len(lines) == 1 and lines[0].errorClass == "KafkaAuthenticationFailed", lines
    assert "check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD" in lines[0].getMessage()
    assert "the-password-itself" not in caplog.text
    assert kafka_config.access_refused() is kafka_config.KafkaAuthenticationFailed
    # and the certificates' refusals are told apart; a broker away is no refusal
    cases = {"ssl://k:9093/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls alert bad "
             "certificate: SSL alert number 42": (KafkaError._TRANSPORT, kafka_config.KafkaCertificateRefused),
             "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker "
             "certificate could not be verified": (KafkaError._SSL, kafka_config.KafkaCertificateUntrusted),
             "Connect to ipv4#127.0.0.1:9 failed: Connection refused": (KafkaError._TRANSPORT, None),
             "1/1 brokers are down": (KafkaError._ALL_BROKERS_DOWN, None),
             "FindCoordinator response error: Group authorization failed.":
                 (KafkaError.GROUP_AUTHORIZATION_FAILED, kafka_config.KafkaAccessDenied),
             "Authorization failed.": (KafkaError.TOPIC_AUTHORIZATION_FAILED, kafka_config.KafkaAccessDenied)}
    for text, (code, kind) in cases.items():
        assert kafka_config.classify(KafkaError(code, text)) is kind, text
    # once Kafka accepts again, a later refusal is news again
    kafka_config.access_granted()
    assert kafka_config.access_refused() is None


def test_oauthbearer_fetches_its_token_from_the_endpoint_with_the_client_credentials(env):
    """librdkafka's OIDC method, as the settings configure it, asks the token endpoint itself
    (client credentials grant, the client id and secret as HTTP Basic auth, the scope)."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import parse_qs

    from devstack import free_port

    asked = []

    class TokenEndpoint(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            asked.append((self.headers.get("Authorization"), parse_qs(body)))
            self.send_response(400)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), TokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # given OAUTHBEARER with a (development: http://) token endpoint
        env(GCP_ENV="development", KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM="OAUTHBEARER",
            KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL=f"http://127.0.0.1:{server.server_port}/token",
            KAFKA_SASL_OAUTHBEARER_CLIENT_ID="gcp", KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET="the-client-secret",
            KAFKA_SASL_OAUTHBEARER_SCOPE="kafka")
        assert problems() == []
        # when a client of the service starts
        producer = kafka.producer(**{"bootstrap.servers": "127.0.0.1:9", "log_level": 0})
        deadline = time.monotonic() + 10
        while not asked and time.monotonic() < deadline:
            producer.poll(0.1)
        # then it asked the endpoint for a token with the client's credentials
        assert asked, "the token endpoint was never asked"
        authorization, form = asked[0]
        assert authorization == "Basic " + base64.b64encode(b"gcp:the-client-secret").decode()
        assert form["grant_type"] == ["client_credentials"] and form["scope"] == ["kafka"]
    finally:
        server.shutdown()
