"""A secured single-node Apache Kafka (KRaft, the jars of ``kafka/pom.xml`` run by ``run.sh``),
for the tests of issue 29 and ``prove_secure.py``: no service import, only the standard library,
``openssl`` and confluent-kafka.

- a test CA (openssl, PEM: Kafka reads PEM key stores directly, no keytool), the broker's
  certificate (SAN IP:127.0.0.1, DNS:localhost) and client certificates on demand
  (:meth:`Certs.issue`); another CA for certificates the broker must refuse;
- listeners on 127.0.0.1: ``SASL_SSL`` (SCRAM-SHA-512, users created when the storage is
  formatted), ``SSL`` requiring a client certificate of the test CA (principal: the
  certificate's CN), ``CONTROLLER`` (SSL, the broker's own certificate);
- KRaft's ``StandardAuthorizer``: super users ``admin`` (SCRAM) and ``broker`` (its certificate),
  nobody else may do anything until :meth:`SecureKafka.grant` says so.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN_SH = HERE / "run.sh"
#: Where run.sh resolves the jars once (shared with the embedded stack).
KAFKA_LIB = HERE.parent / ".local" / "kafka" / "lib"
#: The SCRAM mechanism of the SASL_SSL listener.
MECHANISM = "SCRAM-SHA-512"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, timeout=60, capture_output=True)


class Certs:
    """PEM files under ``root``: CAs (``<ca>.pem``/``<ca>.key``) and the certificates they sign."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> str:
        return str(self.root / name)

    def make_ca(self, name: str) -> str:
        """A self-signed CA (basicConstraints CA:true from openssl's v3_ca); returns its PEM."""
        if not (self.root / f"{name}.pem").exists():
            _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", f"/CN={name}",
                     "-keyout", self.path(f"{name}.key"), "-out", self.path(f"{name}.pem"))
        return self.path(f"{name}.pem")

    def issue(self, cn: str, ca: str = "test-ca", server: bool = False) -> tuple[str, str]:
        """A certificate for ``cn`` signed by ``ca``: (certificate PEM, unencrypted key PEM)."""
        self.make_ca(ca)
        base = f"{cn}.{ca}"
        crt, key = self.path(base + ".crt"), self.path(base + ".key")
        if os.path.exists(crt):
            return crt, key
        ext = ("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
               if server else "extendedKeyUsage=clientAuth\n")
        Path(self.path(base + ".ext")).write_text(ext)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", key,
                 "-out", self.path(base + ".csr"))
        _openssl("x509", "-req", "-in", self.path(base + ".csr"), "-CA", self.path(f"{ca}.pem"),
                 "-CAkey", self.path(f"{ca}.key"), "-CAcreateserial", "-days", "30",
                 "-extfile", self.path(base + ".ext"), "-out", crt)
        return crt, key

    def keystore(self, cn: str, ca: str = "test-ca") -> str:
        """Kafka's PEM key store: the unencrypted PKCS#8 key, then the chain, in one file."""
        crt, key = self.issue(cn, ca, server=True)
        path = self.path(f"{cn}-keystore.pem")
        Path(path).write_text("".join(Path(p).read_text() for p in (key, crt, self.path(f"{ca}.pem"))))
        return path


def server_properties(data: Path, certs: Certs, ports: dict[str, int], admin_password: str) -> str:
    p = ports
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{p['controller']}
listeners=SASL_SSL://127.0.0.1:{p['sasl_ssl']},CONTROLLER://127.0.0.1:{p['controller']},SSL://127.0.0.1:{p['ssl']}
advertised.listeners=SASL_SSL://127.0.0.1:{p['sasl_ssl']},SSL://127.0.0.1:{p['ssl']}
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL,SSL:SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
log.dirs={data}/kraft-logs
ssl.keystore.type=PEM
ssl.keystore.location={certs.keystore("broker")}
ssl.truststore.type=PEM
ssl.truststore.location={certs.make_ca("test-ca")}
listener.name.controller.ssl.client.auth=required
listener.name.ssl.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT
sasl.enabled.mechanisms={MECHANISM}
sasl.mechanism.inter.broker.protocol={MECHANISM}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="{admin_password}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:broker
allow.everyone.if.no.acl.found=false
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=1000
"""


class SecureKafka:
    """The secured broker under ``root``; ``users`` maps SCRAM user names to passwords (``admin``
    is added, a super user)."""

    def __init__(self, root: Path, users: dict[str, str]):
        self.root = Path(root)
        self.users = {"admin": "admin-" + os.urandom(6).hex(), **users}
        self.certs = Certs(self.root / "certs")
        self.ports = {"sasl_ssl": free_port(), "ssl": free_port(), "controller": free_port()}
        self.proc: subprocess.Popen | None = None

    @property
    def ca(self) -> str:
        return self.certs.make_ca("test-ca")

    def sasl(self, user: str, password: str | None = None) -> dict:
        """librdkafka settings of a SCRAM user on the SASL_SSL listener."""
        return {"bootstrap.servers": f"127.0.0.1:{self.ports['sasl_ssl']}", "security.protocol": "SASL_SSL",
                "sasl.mechanism": MECHANISM, "sasl.username": user,
                "sasl.password": self.users[user] if password is None else password,
                "ssl.ca.location": self.ca}

    def mtls(self, cn: str, ca: str = "test-ca") -> dict:
        """librdkafka settings of a client certificate (``cn``, signed by ``ca``) on the SSL listener."""
        crt, key = self.certs.issue(cn, ca)
        return {"bootstrap.servers": f"127.0.0.1:{self.ports['ssl']}", "security.protocol": "SSL",
                "ssl.ca.location": self.ca, "ssl.certificate.location": crt, "ssl.key.location": key}

    def env(self) -> dict[str, str]:
        return {**os.environ, "KAFKA_LIB": str(KAFKA_LIB), "KAFKA_DATA": str(self.root)}

    def start(self, timeout: float = 120) -> SecureKafka:
        """Write the properties, format the storage with the SCRAM users, run the broker and wait
        until the admin gets metadata."""
        if len(set(self.ports.values())) != 3:
            self.ports = {k: free_port() for k in self.ports}
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "server.properties").write_text(
            server_properties(self.root, self.certs, self.ports, self.users["admin"]))
        scram = []
        for user, password in self.users.items():
            scram += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
        subprocess.run([str(RUN_SH), "prepare", *scram], env=self.env(), check=True, timeout=600,
                       capture_output=True)
        with open(self.root / "run.out", "ab") as out:
            self.proc = subprocess.Popen([str(RUN_SH), "start"], env=self.env(), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.sasl("admin"), "socket.connection.setup.timeout.ms": 2000, "log_level": 0})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"secured kafka exited with {self.proc.returncode}: see {self.root}/run.out")
            with contextlib.suppress(Exception):
                if admin.list_topics(timeout=1).brokers:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"secured kafka answered no metadata within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient(self.sasl("admin"))

    def grant(self, bindings: list, settle: float = 0.5) -> None:
        """Create ACLs as the super user (each an ``AclBinding``); they apply once replayed."""
        admin = self.admin()  # kept until the futures are done: a destroyed client fails them
        for future in admin.create_acls(bindings).values():
            future.result(30)
        time.sleep(settle)


def acl(principal: str, kind: str, name: str, *operations: str, prefixed: bool = False) -> list:
    """``AclBinding``s allowing ``User:<principal>`` each of ``operations`` (READ, WRITE, DESCRIBE,
    CREATE...) on the ``kind`` (TOPIC, GROUP, CLUSTER) called ``name``, from any host."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    pattern = ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL
    return [AclBinding(getattr(ResourceType, kind), name, pattern, f"User:{principal}", "*",
                       getattr(AclOperation, op), AclPermissionType.ALLOW) for op in operations]


def service_acls(principal: str, inputs: list[str], outputs: list[str], group_prefix: str) -> list:
    """The service: reads the input topics with its groups, reads and writes the stream and the
    DLQ (the relay reads the stream's end, the DLQ tool the DLQ), creates these topics if missing."""
    out = []
    for topic in inputs:
        out += acl(principal, "TOPIC", topic, "READ", "DESCRIBE", "CREATE")
    for topic in outputs:
        out += acl(principal, "TOPIC", topic, "WRITE", "READ", "DESCRIBE", "CREATE")
    return out + acl(principal, "GROUP", group_prefix, "READ", prefixed=True)


def channel_acls(principal: str, inputs: list[str], stream: str, group_prefix: str) -> list:
    """A channel: writes its input topics, reads the stream with its groups."""
    out = []
    for topic in inputs:
        out += acl(principal, "TOPIC", topic, "WRITE", "DESCRIBE")
    out += acl(principal, "TOPIC", stream, "READ", "DESCRIBE")
    return out + acl(principal, "GROUP", group_prefix, "READ", prefixed=True)
