"""The newcomer path, as CI proves it before `make test`: on a runtime-only install.

Run with the venv that `make run` made from requirements.txt alone (`.ci/run` does it):

1. `make run` on the embedded default (no server URL set);
2. `/health/ready` answers 200, and every Procfile process reports its heartbeat;
3. one certificate is sold end to end through the running processes: reserved over HTTP,
   then the order and its payment on Kafka, then its `issue` read from GiftCertificates.Stream;
4. Ctrl-C, and no process is left behind.

On failure it prints the log of the process that died (or the whole log's tail) and exits 1.
Only the standard library and runtime requirements are used.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests
from confluent_kafka import Consumer, Producer

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / ".local"
LOG = ROOT / ".local-newcomer.log"
PROCESSES = ("worker", "pump", "relay", "scheduler", "bi")
SERVER_VARS = ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")


class Failed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def died_process_log(text: str) -> str:
    """The lines of the Procfile process that exited first (honcho prefixes each line)."""
    match = re.search(r"^\S+ system\s+\| (\w+)\.\d+ stopped \(rc=(?!-15\))", text, re.M)
    if not match:
        return text[-6000:]
    name = match.group(1)
    lines = [line for line in text.splitlines() if re.match(rf"^\S+ {name}\.\d+\s+\|", line)]
    return f"process '{name}' died first; its log:\n" + "\n".join(lines[-80:]) + "\n\n" + text[-1500:]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> dict:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failed(f"make run exited with code {proc.returncode} before it was ready")
        try:
            resp = requests.get(base + "/health/ready", timeout=3)
            last = resp.json()
            procs = last.get("processes", {})
            if resp.status_code == 200 and all(procs.get(p, {}).get("status") == "ok" for p in PROCESSES):
                return last
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    raise Failed(f"not ready with every process within {timeout:.0f}s; last answer: {last}")


def stack_env() -> dict:
    pairs = (line.split("=", 1) for line in (LOCAL / "stack.env").read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def token() -> str:
    out = subprocess.run([sys.executable, "app.py", "token", "--client", "ci-newcomer", "--scope",
                          "certificates:reserve certificates:read", "--channel", "ONLINE_STORE"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise Failed(f"python app.py token failed: {out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def kafka_conf(kafka: str) -> dict:
    """The service's own Kafka connection settings (``config.kafka``: the one builder every
    client uses), pointed at the broker of `make run`."""
    import dataclasses

    sys.path.insert(0, str(ROOT))
    from config import load_settings
    from config.kafka import connection_config

    return connection_config(dataclasses.replace(load_settings(), kafka_bootstrap_servers=kafka))


def sell_one(base: str, kafka: str) -> dict:
    """Reserve over HTTP, order + payment on Kafka, and wait for the `issue` on the stream."""
    headers = {"Authorization": f"Bearer {token()}"}
    order_id = "ci-" + uuid.uuid4().hex[:12]
    resp = requests.post(base + "/certificates/next", headers=headers, timeout=10, json={
        "channel": "ONLINE_STORE", "orderId": order_id, "lineId": "1", "nominal": "1000.00"})
    if resp.status_code != 201:
        raise Failed(f"reserve answered {resp.status_code}: {resp.text}")
    code = resp.json()["code"]
    consumer = Consumer({**kafka_conf(kafka), "group.id": "ci-newcomer-" + order_id,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 20, "session.timeout.ms": 6000,
                         "heartbeat.interval.ms": 1500})
    consumer.subscribe(["GiftCertificates.Stream"])
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    producer = Producer({**kafka_conf(kafka), "enable.idempotence": True, "linger.ms": 2})
    order = {"eventId": str(uuid.uuid4()), "eventType": "ORDER_CREATED", "occurredAt": now,
             "orderId": order_id, "channel": "ONLINE_STORE", "currency": "RUB", "total": "1000.00",
             "lines": [{"lineId": "1", "type": "GIFT_CERTIFICATE", "amount": "1000.00",
                        "certificateCode": code}],
             "customer": {"clientId": "ci-client", "phone": "+79990001122"}}
    payment = {"eventId": str(uuid.uuid4()), "eventType": "PAYMENT_CAPTURED", "occurredAt": now,
               "paymentId": "pay-" + order_id, "orderId": order_id, "channel": "ONLINE_STORE",
               "amount": "1000.00", "currency": "RUB", "method": "CARD"}
    producer.produce("All_SalesOrder", key=order_id, value=json.dumps(order))
    producer.produce("All_Payments", key=order_id, value=json.dumps(payment))
    if producer.flush(30):
        raise Failed("could not produce the order and payment to Kafka")
    started, deadline = time.monotonic(), time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            event = json.loads(msg.value())
            if event.get("eventType") == "issue" and event["payload"].get("code") == code:
                return {"code": code, "orderId": order_id,
                        "issueAfterSeconds": round(time.monotonic() - started, 2)}
    finally:
        consumer.close()
    raise Failed(f"no `issue` of {code} on GiftCertificates.Stream within 90 s")


def ancestors() -> set[int]:
    """This process and the ones that started it (a shell in this checkout is not a leftover)."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def leftovers(own: set[int]) -> list[str]:
    """Processes still running from this checkout (cwd or command line in it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cmd.strip() and (str(LOCAL) in cmd or cwd == str(ROOT) or cwd.startswith(str(LOCAL))):
            found.append(f"{entry.name}: {cmd[:160]}")
    return found


def main() -> int:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    env.update(PORT=str(port), WEB_CONCURRENCY="1")
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    log = open(LOG, "w")
    proc = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    own = ancestors()
    try:
        try:
            ready = wait_ready(base, proc, timeout=240)
            ready_after = time.monotonic() - started
            sale = sell_one(base, stack_env()["KAFKA_BOOTSTRAP_SERVERS"])
            if proc.poll() is not None:
                raise Failed(f"make run exited with code {proc.returncode} during the sale")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            except ProcessLookupError:
                pass
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                raise Failed("make run did not stop within 60 s of Ctrl-C")
        deadline = time.monotonic() + 20
        while leftovers(own) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = leftovers(own)
        if left:
            raise Failed("processes left after Ctrl-C:\n" + "\n".join(left))
    except Failed as failure:
        log.close()
        print(f"newcomer path FAILED: {failure}\n\n{died_process_log(LOG.read_text())}", flush=True)
        return 1
    print(f"newcomer path ok: ready with {', '.join(sorted(ready['processes']))} after "
          f"{ready_after:.1f}s; sold {sale['code']} (order {sale['orderId']}), issue on the stream "
          f"{sale['issueAfterSeconds']}s after the payment; Ctrl-C left no process", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
