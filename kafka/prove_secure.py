#!/usr/bin/env python3
"""Exploratory: Kafka 4.x (same jars, same run.sh) with TLS + SCRAM-SHA-512 + StandardAuthorizer.

Run:  /work/main/.venv/bin/python kafka/prove_secure.py

  - a test CA, a broker cert (SAN IP:127.0.0.1, DNS:localhost) and a client cert, all made with
    openssl into the data dir (PEM; Kafka reads PEM key stores directly, no keytool)
  - listeners, all on 127.0.0.1:
      SASL_SSL    clients + inter-broker, SCRAM-SHA-512
      CONTROLLER  SSL with client auth required (the broker cert is its own client cert)
      SSL         mutual TLS for clients holding a cert of the CA (principal = the cert's CN)
  - SCRAM users created at format time: run.sh prepare --add-scram ... (admin = super user,
    alice = ordinary user)
  - authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer,
    super.users=User:admin;User:broker, allow.everyone.if.no.acl.found=false
Checks: admin connects over SASL_SSL with a CA location; a wrong password is refused; alice is
denied until ACLs are created, then produces and consumes; the client cert connects on the SSL
listener and a client without one is refused. Exits non-zero on failure; stops the broker.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                   NewTopic, ResourcePatternType, ResourceType)


def _sibling(name: str):
    """kafka/<name>.py, loaded by path: these scripts are not a package of the service."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


prove = _sibling("prove")  # start/stop helpers, check, say
Failed, check, say = prove.Failed, prove.check, prove.say

DATA = os.path.join(prove.KAFKA_HOME, "prove-secure-data")
prove.DATA = DATA                       # prove.env()/start_broker() use this data dir
CERTS = os.path.join(DATA, "certs")
USERS = {"admin": "admin-secret", "alice": "alice-secret"}
TOPIC = "secure"


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, timeout=60, capture_output=True)


def make_certs():
    os.makedirs(CERTS)
    c = lambda name: os.path.join(CERTS, name)
    # self-signed CA (Debian's openssl.cnf [v3_ca] makes it basicConstraints=critical,CA:true)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=test-ca",
            "-keyout", c("ca.key"), "-out", c("ca.pem"))
    for name, ext in (("broker", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth,clientAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", c(f"{name}.key"), "-out", c(f"{name}.csr"))
        with open(c(f"{name}.ext"), "w") as f:
            f.write(ext)
        openssl("x509", "-req", "-in", c(f"{name}.csr"), "-CA", c("ca.pem"), "-CAkey", c("ca.key"),
                "-CAcreateserial", "-days", "30", "-extfile", c(f"{name}.ext"), "-out", c(f"{name}.crt"))
    # Kafka PEM key store: unencrypted PKCS#8 key followed by the cert chain, in one file
    with open(c("broker-keystore.pem"), "w") as f:
        for part in ("broker.key", "broker.crt", "ca.pem"):
            f.write(open(c(part)).read())
    return c


def write_props(c, port, cport, mport):
    props = f"""\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{cport}
listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport},SSL://127.0.0.1:{mport}
advertised.listeners=SASL_SSL://127.0.0.1:{port},SSL://127.0.0.1:{mport}
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL,SSL:SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
log.dirs={DATA}/kraft-logs

# TLS: PEM files straight from openssl (key store = key + chain in one file, key unencrypted)
ssl.keystore.type=PEM
ssl.keystore.location={c("broker-keystore.pem")}
ssl.truststore.type=PEM
ssl.truststore.location={c("ca.pem")}
listener.name.controller.ssl.client.auth=required
listener.name.ssl.ssl.client.auth=required
# principal of a TLS client = its cert's CN ("User:broker", "User:client")
ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT

# SASL/SCRAM-SHA-512 (credentials are in the metadata log, added by `format --add-scram`)
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="{USERS['admin']}";

# ACLs in the KRaft metadata log
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
    with open(os.path.join(DATA, "server.properties"), "w") as f:
        f.write(props)
    return props


def sasl_conf(port, c, user, password):
    return {"bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": password,
            "ssl.ca.location": c("ca.pem")}


def first_error(conf, timeout=10):
    """Connect with conf; return (metadata ok?, first client error seen)."""
    errors = []
    a = AdminClient({**conf, "error_cb": errors.append, "log_level": 0})
    try:
        md = a.list_topics(timeout=timeout)
        return bool(md.brokers), errors[0] if errors else None
    except KafkaException as e:
        a.poll(0.5)
        return False, errors[0] if errors else e.args[0]


def main():
    def deadline_hit(*_):
        raise Failed("over the 300 s budget")
    signal.signal(signal.SIGALRM, deadline_hit)
    signal.alarm(300)
    shutil.rmtree(DATA, ignore_errors=True)
    c = make_certs()
    port, cport, mport = free_port(), free_port(), free_port()
    check(len({port, cport, mport}) == 3, "port clash, run again")
    write_props(c, port, cport, mport)
    scram = []
    for user, pw in USERS.items():
        scram += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={pw}]"]
    subprocess.run([prove.RUN_SH, "prepare", *scram], env=prove.env(), check=True, timeout=300)

    admin_conf = sasl_conf(port, c, "admin", USERS["admin"])
    admin, ready, cluster = prove.start_broker(admin_conf)
    say(f"broker pid {prove.broker.pid} ready over SASL_SSL (admin) in {ready:.2f} s, cluster {cluster}")

    # 1. wrong password is refused
    ok, err = first_error(sasl_conf(port, c, "admin", "wrong-password"))
    check(not ok, "wrong password got metadata")
    check(isinstance(err, KafkaError) and err.code() == KafkaError._AUTHENTICATION,
          f"wrong password: expected _AUTHENTICATION, got {err!r}")
    say(f"wrong password refused: {err.str()}")
    # ... and so is an unknown user, and a client that does not trust the CA
    ok, err = first_error(sasl_conf(port, c, "mallory", "x"))
    check(not ok and err.code() == KafkaError._AUTHENTICATION, f"unknown user: {err!r}")
    ok, err = first_error({**admin_conf, "ssl.ca.location": c("client.crt")}, timeout=5)
    check(not ok, "client without the CA got metadata")
    say(f"client not trusting the CA refused: {err.str() if isinstance(err, KafkaError) else err}")

    # 2. admin (super user) creates the topic
    for f in admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1)]).values():
        f.result(15)

    # 3. alice: denied without ACLs
    alice = sasl_conf(port, c, "alice", USERS["alice"])
    md = AdminClient(alice).list_topics(timeout=10)
    check(TOPIC not in md.topics, "alice sees the topic without any ACL")
    errs = []
    p = Producer({**alice, "error_cb": errs.append, "log_level": 0, "message.timeout.ms": 4000})
    dr = []
    p.produce(TOPIC, b"denied?", on_delivery=lambda e, m: dr.append(e))
    p.flush(10)
    check(dr and dr[0] is not None, f"alice produced without ACLs: {dr}")
    say(f"alice without ACLs: produce refused ({dr[0].str()})")
    del p

    # 4. admin grants alice the topic and her group, then she produces and consumes
    acls = [AclBinding(ResourceType.TOPIC, TOPIC, ResourcePatternType.LITERAL, "User:alice", "*",
                       AclOperation.ALL, AclPermissionType.ALLOW),
            AclBinding(ResourceType.GROUP, "alice-", ResourcePatternType.PREFIXED, "User:alice", "*",
                       AclOperation.ALL, AclPermissionType.ALLOW)]
    for f in admin.create_acls(acls).values():
        f.result(15)
    time.sleep(0.5)   # ACLs are metadata records: applied once the broker has replayed them
    dr = []
    p = Producer({**alice, "enable.idempotence": True, "acks": "all"})
    for i in range(10):
        p.produce(TOPIC, key=str(i).encode(), value=f"m{i}".encode(), on_delivery=lambda e, m: dr.append(e))
    check(p.flush(15) == 0 and len(dr) == 10 and not any(dr), f"alice produce with ACLs: {dr}")
    cons = Consumer({**alice, "group.id": "alice-g", "auto.offset.reset": "earliest"})
    cons.subscribe([TOPIC])
    got, t_end = [], time.monotonic() + 30
    while len(got) < 10 and time.monotonic() < t_end:
        m = cons.poll(0.2)
        if m is not None:
            check(m.error() is None, f"alice consume: {m.error()}")
            got.append(m)
    cons.close()
    check(len(got) == 10, f"alice consumed {len(got)}/10")
    say("alice with ACLs (topic ALL, group prefix alice- ALL): produced 10 (idempotent), consumed 10")

    # 5. mutual TLS listener: the client cert works, no cert is refused
    mtls = {"bootstrap.servers": f"127.0.0.1:{mport}", "security.protocol": "SSL",
            "ssl.ca.location": c("ca.pem"), "ssl.certificate.location": c("client.crt"),
            "ssl.key.location": c("client.key")}
    ok, err = first_error(mtls)
    check(ok, f"client cert on the SSL listener: {err!r}")
    ok, err = first_error({k: v for k, v in mtls.items() if not k.startswith(("ssl.cert", "ssl.key"))}, 5)
    check(not ok, "SSL listener let a client without a cert in")
    say(f"mTLS listener: client cert accepted; no cert refused ({err.str() if isinstance(err, KafkaError) else err})")

    del admin
    rc, took = prove.stop_broker()
    check(rc in (0, 143, -15), f"broker exit code on SIGTERM {rc}")
    say(f"stopped in {took:.2f} s")
    shutil.rmtree(DATA, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    except (Failed, KafkaException, subprocess.SubprocessError, OSError) as e:
        say(f"FAILED: {e!r}\n(data dir kept: {DATA})")
        log = os.path.join(DATA, "logs", "server.log")
        if os.path.exists(log):
            say("".join([l for l in open(log) if " ERROR " in l or " WARN " in l][-15:]))
        rc = 1
    finally:
        signal.alarm(0)
        prove.stop_broker()
    say("OK" if rc == 0 else "NOT OK")
    sys.exit(rc)
