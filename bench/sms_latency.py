"""From `issue` to the SMS gateway's acceptance, against a floor measured in the same run.

Starts its own embedded PostgreSQL, Redis and Tansu (a temp dir), the Procfile's worker and
relay with ``NOTIFY_VIA=sms`` and the ``log`` gateway, then issues certificates at
``BENCH_SMS_RATE`` per second (default 20) to buyers with a phone. For each:

- **floor**: the issue's commit → the relay's publication of its ``notification.requested``
  (``outbox_event.published_at - created_at``): the first hop of the path, nothing of the SMS's;
- **sms**: the issue's commit → the gateway's acceptance (``sms_message.sent_at``, recorded as
  the gateway answers): relay → Redis → worker → locks and lease → gateway → result.

Prints p50/p90/p99/max and the ratio to the floor. Contract SLA: under 5 minutes; goal with the
``log`` gateway: under 1 s.
Run: ``make bench`` or ``python -m bench.sms_latency [certificates]``.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from bench.latency import own_pipeline, paced, percentiles

ROOT = Path(__file__).resolve().parents[1]
RATE = int(os.environ.get("BENCH_SMS_RATE", "20"))


def issue_with_phone(n: int) -> list[str]:
    import uuid

    from models.domain import commands, timeutil
    from models.service import messagebus
    from models.store.db import db
    from models.store.tables import SalesOrder
    from tests.helpers import load

    codes = load(n, "1000.00")
    with db.connection_context():
        for code in paced(codes, RATE):
            order_id = "bench-" + uuid.uuid4().hex[:10]
            messagebus.handle(commands.Reserve("ONLINE_STORE", order_id, "1", Decimal("1000.00"), "RUB", code=code))
            SalesOrder.create(order_id=order_id, channel="ONLINE_STORE", currency="RUB", total=Decimal("1000.00"),
                              status="PAID", customer={"clientId": "c-" + order_id, "phone": "+79990001122"},
                              created_at=timeutil.utcnow(), updated_at=timeutil.utcnow())
            messagebus.handle(commands.Issue(code))
    return codes


def collect(codes: list[str], timeout: float = 120) -> tuple[list[float], list[float], int]:
    from models.store.db import db

    deadline = time.monotonic() + timeout
    with db.connection_context():
        while True:
            rows = db.execute_sql("""
                SELECT EXTRACT(EPOCH FROM o.published_at - g.issued_at),
                       EXTRACT(EPOCH FROM m.sent_at - g.issued_at)
                FROM gift_certificate g
                JOIN outbox_event o ON o.message_key = g.code AND o.event_type = 'notification.requested'
                LEFT JOIN sms_message m ON m.notification_event_id = o.event_id::text AND m.status = 'SENT'
                WHERE g.code = ANY(%s)""", (codes,)).fetchall()
            done = [r for r in rows if r[0] is not None and r[1] is not None]
            if len(done) == len(codes) or time.monotonic() > deadline:
                return [float(r[0]) for r in done], [float(r[1]) for r in done], len(codes) - len(done)
            time.sleep(0.5)


def main(n: int | None = None) -> dict:
    n = n or int(os.environ.get("BENCH_SMS_CERTIFICATES", "300"))
    sms_log = Path(tempfile.mkdtemp(prefix="gcp-bench-sms-log-"))
    try:
        with own_pipeline("gcp-bench-sms-", NOTIFY_VIA="sms", SMS_GATEWAY="log",
                          SMS_LOG_PATH=str(sms_log / "sms.log")):
            issue_with_phone(20)  # warm-up
            codes = issue_with_phone(n)
            floor_s, sms_s, missing = collect(codes)
            floor, sms = percentiles(floor_s), percentiles(sms_s)
            print(f"issue -> SMS gateway acceptance ('log' gateway), {n} certificates at {RATE}/s (times in ms)")
            print(f"  {'':42} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
            for label, row in (("floor: issue commit -> relay published", floor), ("sms: issue commit -> gateway accepted", sms)):
                print(f"  {label:42} {row['p50']:7.1f} {row['p90']:7.1f} {row['p99']:7.1f} {row['max']:7.1f}")
            print(f"  ratio to the floor: p50 {sms['p50'] / floor['p50']:.1f}x, p99 {sms['p99'] / floor['p99']:.1f}x;"
                  f" goal p99 < 1000 ms ({'met' if sms['p99'] < 1000 else 'NOT met'}); missing: {missing}")
            return {"floor": floor, "sms": sms, "missing": missing}
    finally:
        shutil.rmtree(sms_log, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
