"""How the service connects to Kafka: the security settings (TLS, SASL), what refuses a start
about them, the one builder of librdkafka's connection settings that every client of the service
uses (:func:`connection_config`), and how a refused login or certificate is reported.

The settings are read once per :class:`config.settings.Settings` snapshot (so
``reset_settings()`` forgets them too); docs/kafka-security.md says what each is for.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from config.settings import UNREADABLE, Settings, _bool, _secret, _str, get_settings

#: ``KAFKA_SECURITY_PROTOCOL``'s values (librdkafka's ``security.protocol``).
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: ``KAFKA_SASL_MECHANISM``'s values (librdkafka's ``sasl.mechanism``).
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
#: Hosts whose traffic never leaves the machine: a plaintext connection to them is no exposure
#: (a local TLS sidecar, the test suite's embedded broker).


@dataclass(frozen=True)
class KafkaSecurity:
    """The ``KAFKA_*`` connection settings (secrets from ``NAME`` or ``NAME_FILE``)."""

    security_protocol: str = "PLAINTEXT"
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    oauth_token_endpoint_url: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: str | None = None
    oauth_scope: str | None = None
    #: ``KAFKA_ALLOW_PLAINTEXT=true``: the operator vouches for the network (outside development).
    allow_plaintext: bool = False

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")


def load_kafka_security() -> KafkaSecurity:
    """:class:`KafkaSecurity` from ``os.environ`` (no caching)."""
    oauth = "KAFKA_SASL_OAUTHBEARER_"
    return KafkaSecurity(
        security_protocol=(_str("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").strip().upper(),
        ssl_ca_location=_str("KAFKA_SSL_CA_LOCATION"),
        ssl_certificate_location=_str("KAFKA_SSL_CERTIFICATE_LOCATION"),
        ssl_key_location=_str("KAFKA_SSL_KEY_LOCATION"),
        ssl_key_password=_secret("KAFKA_SSL_KEY_PASSWORD"),
        sasl_mechanism=((_str("KAFKA_SASL_MECHANISM") or "").strip().upper() or None),
        sasl_username=_str("KAFKA_SASL_USERNAME"),
        sasl_password=_secret("KAFKA_SASL_PASSWORD"),
        oauth_token_endpoint_url=_str(oauth + "TOKEN_ENDPOINT_URL"),
        oauth_client_id=_str(oauth + "CLIENT_ID"),
        oauth_client_secret=_secret(oauth + "CLIENT_SECRET"),
        oauth_scope=_str(oauth + "SCOPE"),
        allow_plaintext=_bool("KAFKA_ALLOW_PLAINTEXT"),
    )


_cached: tuple[Settings, KafkaSecurity] | None = None
_cache_lock = threading.Lock()


def kafka_security(settings: Settings | None = None) -> KafkaSecurity:
    """The Kafka security settings of ``settings`` (the process's by default): read from the
    environment once per settings snapshot."""
    global _cached
    settings = settings or get_settings()
    with _cache_lock:
        if _cached is None or _cached[0] is not settings:
            _cached = (settings, load_kafka_security())
        return _cached[1]


def kafka_problems(settings: Settings, sec: KafkaSecurity | None = None) -> list[str]:
    """Every Kafka connection setting that cannot work, or (outside development) is unsafe; each
    names the setting, never a secret's value."""
    sec = sec or kafka_security(settings)
    problems = []
    proto, mech = sec.security_protocol, sec.sasl_mechanism
    if proto not in SECURITY_PROTOCOLS:
        return [f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, not {proto!r}"]
    for name, value in (("KAFKA_SSL_KEY_PASSWORD", sec.ssl_key_password), ("KAFKA_SASL_PASSWORD", sec.sasl_password),
                        ("KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET", sec.oauth_client_secret)):
        if value and value.startswith(UNREADABLE):
            problems.append(f"{name}_FILE cannot be read ({value[len(UNREADABLE):]})")
    if sec.sasl:
        if mech is None:
            problems.append(f"KAFKA_SECURITY_PROTOCOL={proto} needs KAFKA_SASL_MECHANISM "
                            f"({', '.join(SASL_MECHANISMS)})")
        elif mech not in SASL_MECHANISMS:
            problems.append(f"KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, not {mech!r}")
        elif mech == "OAUTHBEARER":
            missing = [n for n, v in (("TOKEN_ENDPOINT_URL", sec.oauth_token_endpoint_url),
                                      ("CLIENT_ID", sec.oauth_client_id),
                                      ("CLIENT_SECRET", sec.oauth_client_secret)) if not v]
            if missing:
                problems.append("KAFKA_SASL_MECHANISM=OAUTHBEARER needs "
                                + " and ".join("KAFKA_SASL_OAUTHBEARER_" + n for n in missing))
            url = urlparse(sec.oauth_token_endpoint_url or "")
            if sec.oauth_token_endpoint_url and url.scheme not in ("https", "http"):
                problems.append("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL must be an https:// URL")
            elif url.scheme == "http" and not settings.development:
                problems.append("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL is http://: the client secret "
                                "would cross the network in clear; use https:// outside development")
        elif not (sec.sasl_username and sec.sasl_password):
            missing = [n for n, v in (("KAFKA_SASL_USERNAME", sec.sasl_username),
                                      ("KAFKA_SASL_PASSWORD", sec.sasl_password)) if not v]
            problems.append(f"KAFKA_SASL_MECHANISM={mech} needs {' and '.join(missing)}")
    else:
        stray = [n for n, v in (("KAFKA_SASL_MECHANISM", mech), ("KAFKA_SASL_USERNAME", sec.sasl_username),
                                ("KAFKA_SASL_PASSWORD", sec.sasl_password)) if v]
        if stray:
            problems.append(f"{', '.join(stray)} set but KAFKA_SECURITY_PROTOCOL={proto} does not use SASL "
                            "(SASL_SSL, SASL_PLAINTEXT)")
    problems += _tls_problems(sec)
    if proto in ("PLAINTEXT", "SASL_PLAINTEXT") and not settings.development and not sec.allow_plaintext:
        problems.append(f"KAFKA_SECURITY_PROTOCOL={proto} sends the channels' orders and payments"
                        f"{' and the SASL password' if proto == 'SASL_PLAINTEXT' else ''} in clear: use SSL "
                        "or SASL_SSL outside development, or set KAFKA_ALLOW_PLAINTEXT=true for a private "
                        "network you vouch for")
    return problems


def _tls_problems(sec: KafkaSecurity) -> list[str]:
    files = (("KAFKA_SSL_CA_LOCATION", sec.ssl_ca_location),
             ("KAFKA_SSL_CERTIFICATE_LOCATION", sec.ssl_certificate_location),
             ("KAFKA_SSL_KEY_LOCATION", sec.ssl_key_location))
    given = [name for name, value in files if value]
    if given and not sec.tls:
        return [(f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL={sec.security_protocol} does not use "
                 "TLS (SSL, SASL_SSL)")]
    problems = [f"{name} names {value!r}, which is not a readable file" for name, value in files
                if value and not (os.path.isfile(value) and os.access(value, os.R_OK))]
    if bool(sec.ssl_certificate_location) != bool(sec.ssl_key_location):
        problems.append("KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together "
                        "(a client certificate and its key)")
    if sec.ssl_key_password and not sec.ssl_key_location:
        problems.append("KAFKA_SSL_KEY_PASSWORD is set without KAFKA_SSL_KEY_LOCATION")
    return problems


# ---- the one builder ---------------------------------------------------------------------------

def connection_config(settings: Settings | None = None, **overrides) -> dict:
    """librdkafka's connection settings (servers, TLS, SASL, the error reporting of
    :func:`report_error`), then ``overrides``. librdkafka's ``debug`` is dropped while SASL is on
    (its protocol traces could carry credentials)."""
    settings = settings or get_settings()
    sec = kafka_security(settings)
    if not settings.kafka_bootstrap_servers:
        raise RuntimeError("KAFKA_BOOTSTRAP_SERVERS is not set")
    conf = {"bootstrap.servers": settings.kafka_bootstrap_servers, "security.protocol": sec.security_protocol,
            "error_cb": report_error, "logger": LIBRDKAFKA_LOG}
    optional = {"ssl.ca.location": sec.ssl_ca_location, "ssl.certificate.location": sec.ssl_certificate_location,
                "ssl.key.location": sec.ssl_key_location, "ssl.key.password": sec.ssl_key_password}
    if sec.sasl:
        optional["sasl.mechanism"] = sec.sasl_mechanism
        if sec.sasl_mechanism == "OAUTHBEARER":
            optional.update({"sasl.oauthbearer.method": "oidc",
                             "sasl.oauthbearer.token.endpoint.url": sec.oauth_token_endpoint_url,
                             "sasl.oauthbearer.client.id": sec.oauth_client_id,
                             "sasl.oauthbearer.client.secret": sec.oauth_client_secret,
                             "sasl.oauthbearer.scope": sec.oauth_scope})
        else:
            optional.update({"sasl.username": sec.sasl_username, "sasl.password": sec.sasl_password})
    conf.update({k: v for k, v in optional.items() if v})
    conf.update(overrides)
    if str(conf.get("security.protocol", "")).upper().startswith("SASL_"):
        conf.pop("debug", None)
    return conf


# ---- a refused login or certificate, reported once -------------------------------------------

class KafkaAccessRefused(RuntimeError):
    """Kafka answered, but refused this service's credentials or certificate."""


class KafkaAuthenticationFailed(KafkaAccessRefused):
    """The broker refused the SASL login (wrong user name, password or token)."""


class KafkaCertificateRefused(KafkaAccessRefused):
    """The broker refused this service's client certificate (mutual TLS)."""


class KafkaCertificateUntrusted(KafkaAccessRefused):
    """This service does not trust the broker's certificate (KAFKA_SSL_CA_LOCATION)."""


class KafkaAccessDenied(KafkaAccessRefused):
    """The broker's ACLs deny this service's principal a topic or group it needs."""


_WORDS = {
    KafkaAuthenticationFailed: "Kafka refused this service's login (SASL {mechanism}, user {user}): check "
                               "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (or the OAUTHBEARER client); "
                               "retrying with backoff",
    KafkaCertificateRefused: "Kafka refused this service's client certificate (KAFKA_SSL_CERTIFICATE_LOCATION): "
                             "it is not signed by a CA the broker trusts, has expired or was not sent; "
                             "retrying with backoff",
    KafkaCertificateUntrusted: "Kafka's certificate is not trusted: it is not signed by the CA of "
                               "KAFKA_SSL_CA_LOCATION, or does not name the host of KAFKA_BOOTSTRAP_SERVERS; "
                               "retrying with backoff",
    KafkaAccessDenied: "Kafka's ACLs deny this service's principal (user {user}) a topic or consumer group it "
                       "needs: grant it the ACLs of docs/kafka-security.md; retrying with backoff",
}
_REFUSED_CERT = re.compile(r"alert (bad certificate|unknown ca|certificate required|certificate expired|"
                           r"certificate unknown|access denied|handshake failure)", re.IGNORECASE)


def classify(error) -> type[KafkaAccessRefused] | None:
    """The kind of refusal a librdkafka ``KafkaError`` is, or None (an outage, anything else)."""
    from confluent_kafka import KafkaError

    code, text = error.code(), error.str() or ""
    if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                KafkaError.CLUSTER_AUTHORIZATION_FAILED):
        return KafkaAccessDenied
    if code == KafkaError._AUTHENTICATION:
        return KafkaAuthenticationFailed
    if code in (KafkaError._SSL, KafkaError._TRANSPORT) and _REFUSED_CERT.search(text):
        return KafkaCertificateRefused
    if code == KafkaError._SSL and "verify failed" in text:
        return KafkaCertificateUntrusted
    return None


class _Access:
    """This process's last refusal by Kafka: logged once per kind until Kafka accepts again."""

    def __init__(self):
        self.lock = threading.Lock()
        self.refused: type[KafkaAccessRefused] | None = None
        self.at = 0.0
        self.logged: set[type] = set()


ACCESS = _Access()
log = logging.getLogger("gcp.kafka")


def report_error(error) -> None:
    """librdkafka's ``error_cb``: a refused login or certificate is logged once, in plain words
    (never the password); other errors (a broker away) are librdkafka's log's and the outage
    handling's business."""
    kind = classify(error)
    if kind is None:
        return
    with ACCESS.lock:
        ACCESS.refused, ACCESS.at = kind, time.monotonic()
        first = kind not in ACCESS.logged
        ACCESS.logged.add(kind)
    if first:
        sec = kafka_security()
        user = sec.sasl_username or sec.oauth_client_id or "of the client certificate"
        words = _WORDS[kind].format(mechanism=sec.sasl_mechanism, user=user)
        log.error(words, extra={"errorClass": kind.__name__, "detail": (error.str() or "")[:300]})


def access_refused(within: float = 60.0) -> type[KafkaAccessRefused] | None:
    """The kind of the last refusal seen in this process in the last ``within`` seconds, if any."""
    with ACCESS.lock:
        if ACCESS.refused and time.monotonic() - ACCESS.at <= within:
            return ACCESS.refused
    return None


def access_granted() -> None:
    """Kafka answered this process: a later refusal is news again, and logged."""
    with ACCESS.lock:
        if ACCESS.refused is not None:
            log.warning("Kafka accepts this service's credentials again")
        ACCESS.refused, ACCESS.logged = None, set()


class _OncePerMinute(logging.Filter):
    """librdkafka repeats a failure at every reconnection (every few milliseconds for a refused
    handshake): one line per distinct message (digits aside) and minute."""

    def __init__(self):
        super().__init__()
        self.seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())[:300]
        now = time.monotonic()
        if now - self.seen.get(key, -1e9) < 60:
            return False
        if len(self.seen) > 1000:
            self.seen.clear()
        self.seen[key] = now
        return True


#: Where librdkafka's own log lines go (the service's JSON log), each once a minute at most.
LIBRDKAFKA_LOG = logging.getLogger("gcp.kafka.librdkafka")
LIBRDKAFKA_LOG.addFilter(_OncePerMinute())
