"""Floor (b) of the HTTP API benchmark (``bench/api.py``): the same SQL transactions as each
call, sent directly with psycopg2 (one statement per round trip), on floor certificates and copies
of the written tables, serially or from several threads."""
from __future__ import annotations

import json
import threading
import time
import uuid

FLOOR_TABLES = ("authorization_hold", "outbox_event", "audit_log", "gift_certificate_operation")


def _floor_setup(conn, n: int) -> list[tuple[int, str]]:
    """Copies of the written tables (same columns and indexes, no foreign keys, nothing reads
    them) and ``n`` floor certificates in their own currency (no reservation takes them)."""
    with conn.cursor() as cur:
        for t in FLOOR_TABLES:
            cur.execute(f"CREATE TABLE IF NOT EXISTS bench_{t} (LIKE {t} INCLUDING ALL)")
        batch = "bench-floor-" + uuid.uuid4().hex[:6]
        cur.execute("INSERT INTO certificate_batch (batch_id, kind, currency, loaded_by) "
                    "VALUES (%s, 'ELECTRONIC', 'XFL', 'bench')", (batch,))
        cur.execute(
            "INSERT INTO gift_certificate (code, batch_id, kind, currency, open_value, nominal,"
            " remaining_balance, status, stream_sequence, cvc_failed_attempts, cvc_disclosable,"
            " created_at, updated_at, cvc_hash)"
            " SELECT %s || lpad(g::text, 6, '0'), %s, 'ELECTRONIC', 'XFL', false, 1000000.00,"
            " 1000000.00, 'ISSUED', 0, 0, false, now(), now(), md5(g::text) FROM generate_series(1, %s) g"
            " RETURNING id, code", ("FL" + uuid.uuid4().hex[:4].upper(), batch, n))
        rows = cur.fetchall()
    conn.commit()
    return rows


def _envelope(code: str, kind: str) -> str:
    return json.dumps({"eventId": str(uuid.uuid4()), "eventType": kind, "occurredAt": "2026-12-02T10:00:00Z",
                       "channel": "POS", "status": "ACTIVE", "correlationId": "o-1", "causationId": "req-1",
                       "payload": {"code": code, "status": "ACTIVE", "remainingBalance": "1000000.00",
                                   "available": "999999.00", "currency": "RUB", "amount": "1.00"},
                       "sequence": 1})


def _tail(cur, cert_id: int, code: str, kind: str, ledger: bool) -> None:
    """The writes every certificate transaction ends with: the certificate update, a ledger row
    (capture), the outbox row, its audit row and the relay's NOTIFY."""
    cur.execute("UPDATE gift_certificate SET remaining_balance = remaining_balance - %s, stream_sequence ="
                " stream_sequence + 1, updated_at = now() WHERE id = %s RETURNING stream_sequence",
                ("0.00" if not ledger else "1.00", cert_id))
    seq = cur.fetchone()[0]
    if ledger:
        cur.execute("INSERT INTO bench_gift_certificate_operation (certificate_id, kind, amount, balance_after, currency,"
                    " authorization_id, order_id, channel, op_key, causation_id, created_at)"
                    " VALUES (%s, 'REDEEM', -1.00, 999999.00, 'XFL', NULL, 'o-1', 'POS', %s, 'req-1', now())",
                    (cert_id, uuid.uuid4().hex))
    env = _envelope(code, kind)
    cur.execute("INSERT INTO bench_outbox_event (event_id, message_key, event_type, channel, certificate_id,"
                " sequence, envelope, created_at) VALUES (%s, %s, %s, 'POS', %s, %s, %s, now())",
                (str(uuid.uuid4()), code, kind, cert_id, seq, env))
    cur.execute("INSERT INTO bench_audit_log (certificate_id, code, action, actor, channel, request_id,"
                " correlation_id, before, after, details, created_at)"
                " VALUES (%s, %s, %s, 'bench', 'POS', 'req-1', 'o-1', %s, %s, NULL, now())",
                (cert_id, code, kind, env, env))
    cur.execute("SELECT pg_notify('bench_floor', '')")


def _floor_read(cur, cert_id: int, code: str, _state) -> None:
    cur.execute("SELECT * FROM gift_certificate WHERE code = %s", (code,))
    cur.fetchone()
    cur.execute("SELECT coalesce(sum(amount), 0) FROM authorization_hold WHERE certificate_id = %s"
                " AND status = 'ACTIVE'", (cert_id,))
    cur.fetchone()


def _floor_authorize(cur, cert_id: int, code: str, state) -> None:
    cur.execute("SELECT * FROM gift_certificate WHERE code = %s FOR UPDATE", (code,))
    cur.fetchone()
    cur.execute("SELECT coalesce(sum(amount), 0) FROM bench_authorization_hold WHERE certificate_id = %s"
                " AND status = 'ACTIVE'", (cert_id,))
    cur.fetchone()
    hold = "auth-" + uuid.uuid4().hex
    cur.execute("INSERT INTO bench_authorization_hold (id, certificate_id, channel, client_id, order_id,"
                " amount, captured_amount, currency, status, expires_at, created_at, updated_at)"
                " VALUES (%s, %s, 'POS', 'bench', 'o-1', 1.00, 0, 'XFL', 'ACTIVE', now() + interval '15 min',"
                " now(), now())", (hold, cert_id))
    _tail(cur, cert_id, code, "authorize", False)
    state.append((cert_id, code, hold))


class _NoHold(Exception):
    """The floor's capture or void ran out of holds: its loop ends there."""


def _floor_end_hold(capture: bool):
    def run(cur, cert_id: int, code: str, state) -> None:
        try:
            cert_id, code, hold = state.pop()
        except IndexError:
            raise _NoHold() from None
        cur.execute("SELECT certificate_id, order_id FROM bench_authorization_hold WHERE id = %s", (hold,))
        cur.fetchone()
        cur.execute("SELECT * FROM gift_certificate WHERE id = %s FOR UPDATE", (cert_id,))
        cur.fetchone()
        cur.execute("SELECT * FROM bench_authorization_hold WHERE id = %s FOR UPDATE", (hold,))
        cur.fetchone()
        cur.execute("SELECT coalesce(sum(amount), 0) FROM bench_authorization_hold WHERE certificate_id = %s"
                    " AND status = 'ACTIVE'", (cert_id,))
        cur.fetchone()
        cur.execute("UPDATE bench_authorization_hold SET status = %s, captured_amount = %s, updated_at = now()"
                    " WHERE id = %s", ("CAPTURED" if capture else "VOIDED", "1.00" if capture else "0", hold))
        _tail(cur, cert_id, code, "redeem" if capture else "void", capture)
    return run


def _floor_reserve(cur, cert_id: int, code: str, state) -> None:
    cur.execute("SELECT * FROM gift_certificate WHERE status = 'AVAILABLE' AND currency = 'RUB' AND"
                " kind = 'ELECTRONIC' AND nominal = 1000.00 AND NOT open_value ORDER BY created_at, id LIMIT 1"
                " FOR UPDATE SKIP LOCKED")  # models.store.repository.pick_available's first query
    row = cur.fetchone()
    # the row stays as it is (the service's own reservations need the pool): the same reads,
    # the update of a floor certificate instead
    _tail(cur, cert_id, code, "reserve", False)


def floor_sql(url: str, certs: list[tuple[int, str]], txn, conns: int, duration: float,
              serial_n: int, state: list) -> dict:
    """Per-transaction latency of ``txn`` (autocommit off: BEGIN is sent with the first
    statement, COMMIT is a round trip of its own), serially or from ``conns`` threads."""
    import psycopg2

    lat: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def loop(i: int) -> None:
        conn = psycopg2.connect(url)
        mine, k = [], 0
        with conn.cursor() as cur:
            while (len(mine) < serial_n) if conns == 1 else (time.perf_counter() < stop_at):
                cert_id, code = certs[(i + k * conns) % len(certs)]
                k += 1
                t0 = time.perf_counter()
                try:
                    txn(cur, cert_id, code, state)
                except _NoHold:
                    conn.rollback()
                    break
                conn.commit()
                mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            lat.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - started
    s = sorted(lat)
    pick = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1)))] * 1000  # noqa: E731
    return {"n": len(s), "rps": len(s) / secs, "p50": pick(0.5), "p99": pick(0.99)}
