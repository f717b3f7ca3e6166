"""HTTP API benchmark with wrk, every figure beside floors measured in the same run.

Starts its own embedded PostgreSQL, Redis and Tansu (a temp dir), the service's web (gunicorn
with ``gunicorn.conf.py``), worker, pump and relay, and the floor app ``bench/_bare_app.py``
under the same gunicorn settings. Then, at 1 and at 16 connections:

- ``GET /certificates/{code}`` (balance read), ``POST /certificates/next`` (reserve),
  ``POST /certificates/{code}/authorizations``, ``POST /authorizations/{id}/capture`` and
  ``/void``, spread over ``BENCH_TARGETS`` (400) issued certificates, with 64 client ids (so no
  per-client limit is reached) and the right CVC (so the CVC budget is never touched);
- floor (a): ``GET /bare/{code}``, the same primary-key read in a bare Flask route;
- floor (b): the same SQL transactions sent directly with psycopg2 (one statement per round
  trip), serially and from 16 threads, on 400 floor certificates and copies of the tables.

The CPU each process tree spent per request (web, worker, pump, relay, postgres with all its
backends, redis, the broker, wrk) comes from /proc. Then growth: the key figures again with
10,000 certificates (the start), with 1,000,000, and with 100,000 past holds on one
certificate, with the plans (EXPLAIN) of the hot statements at each size.

Run: ``make bench`` (all benchmarks, report in bench/report.md) or ``python -m bench.api``.
``BENCH_QUICK=1``: short runs and 100,000 instead of 1,000,000 certificates.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import _proc
from bench._api_kit import (
    BASE_SIZE,
    BIG_SIZE,
    CLIENTS,
    CONNS,
    DURATION,
    FLOOR_SERIAL_N,
    PAST_HOLDS,
    QUICK,
    TARGETS,
    WRK,
    Runner,
    _fill,
    _gunicorn,
    _issue_targets,
    _stop,
)
from bench._sql_floor import (
    _floor_authorize,
    _floor_end_hold,
    _floor_read,
    _floor_reserve,
    _floor_setup,
    floor_sql,
)

# ---- the benchmark -----------------------------------------------------------------------------

def _explain(conn, targets) -> dict:
    code, _cvc, cid = targets[0]
    plans = {}
    queries = {
        "read by code": ("SELECT * FROM gift_certificate WHERE code = %s", (code,)),
        "held sum": ("SELECT coalesce(sum(amount), 0) FROM authorization_hold WHERE certificate_id = %s"
                     " AND status = 'ACTIVE'", (cid,)),
        "overdue holds": ("SELECT * FROM authorization_hold WHERE certificate_id = %s AND status = 'ACTIVE'"
                          " AND expires_at <= now() ORDER BY id FOR UPDATE", (cid,)),
        "next available (before: one query, nominal OR open value)": (
            "SELECT * FROM gift_certificate WHERE status = 'AVAILABLE' AND currency = 'RUB'"
            " AND (nominal = 1000.00 OR open_value) AND kind = 'ELECTRONIC'"
            " ORDER BY open_value, id LIMIT 1 FOR UPDATE SKIP LOCKED", ()),
        "next available (before: by id, printed for the nominal)": (
            "SELECT * FROM gift_certificate WHERE status = 'AVAILABLE' AND currency = 'RUB'"
            " AND kind = 'ELECTRONIC' AND nominal = 1000.00 AND NOT open_value"
            " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED", ()),
        "next available (now: printed for the nominal first, in loading order)": (
            "SELECT * FROM gift_certificate WHERE status = 'AVAILABLE' AND currency = 'RUB'"
            " AND kind = 'ELECTRONIC' AND nominal = 1000.00 AND NOT open_value"
            " ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED", ()),
        "next available (now: then open value)": (
            "SELECT * FROM gift_certificate WHERE status = 'AVAILABLE' AND currency = 'RUB'"
            " AND kind = 'ELECTRONIC' AND nominal IS NULL AND open_value"
            " ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED", ()),
        "low-water count (before: unordered)": (
            "SELECT count(*) FROM (SELECT 1 FROM gift_certificate WHERE status = 'AVAILABLE' AND currency = 'RUB'"
            " AND kind = 'ELECTRONIC' AND nominal = 1000.00 AND id <> 0 LIMIT 100) t", ()),
        "low-water count (now: the pool index's first entries)": (
            "SELECT count(*) FROM (SELECT 1 FROM gift_certificate WHERE status = 'AVAILABLE' AND currency = 'RUB'"
            " AND kind = 'ELECTRONIC' AND nominal = 1000.00 AND id <> 0 ORDER BY created_at, id LIMIT 100) t", ()),
    }
    with conn.cursor() as cur:
        for name, (sql, args) in queries.items():
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, args)
            plans[name] = "\n".join(r[0] for r in cur.fetchall())
    conn.rollback()
    return plans


def main() -> dict:
    if WRK is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="gcp-bench-api-"))
    saved = dict(os.environ)
    procs: dict[str, subprocess.Popen] = {}
    stack = None
    result: dict = {"settings": {}, "runs": [], "floors_sql": [], "growth": {}, "plans": {}}
    try:
        import psycopg2

        from bench._pipeline import start_procs
        from devstack import EmbeddedStack

        for var in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
            os.environ.pop(var, None)
        stack = EmbeddedStack(tmp / "stack", database="gcp")
        os.environ.update(stack.start())
        prom = tmp / "prometheus"
        prom.mkdir()
        os.environ.update(LOG_LEVEL="WARNING", POOL_LOW_WATER_MARK="0", GCP_ENV="development",
                          PROMETHEUS_MULTIPROC_DIR=str(prom), PYTHONUNBUFFERED="1",
                          PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
        from config import get_settings, reset_settings

        reset_settings()
        __import__("models.store.cache").store.cache.reset()  # a client of an earlier benchmark's Redis
        from api.auth import issue_token
        from models.store.db import init_db, migrate
        from workers.kafka import ensure_topics

        s = get_settings()
        init_db(s.database_url)
        migrate()
        ensure_topics()
        result["settings"] = {
            "duration_s": DURATION, "targets": TARGETS, "clients": CLIENTS, "wrk": "-t1 --timeout 5s",
            "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", "2"), "WEB_THREADS": os.environ.get("WEB_THREADS", "8"),
            "RATE_LIMIT": s.rate_limit, "CVC_CLIENT_BUDGET": os.environ.get("CVC_CLIENT_BUDGET", "20/10 minutes"),
            "GCP_PG_FAST": os.environ.get("GCP_PG_FAST", "") or "off (durable commits)",
            "database": "embedded PostgreSQL (pgserver)"}
        url = s.database_url
        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            result["settings"]["postgres"] = cur.fetchone()[0]
            cur.execute("SHOW fsync")
            result["settings"]["fsync"] = cur.fetchone()[0]
            cur.execute("SHOW synchronous_commit")
            result["settings"]["synchronous_commit"] = cur.fetchone()[0]
        conn.rollback()

        t0 = time.perf_counter()
        targets = _issue_targets(TARGETS)
        floor_certs = _floor_setup(conn, TARGETS)
        fill_s = _fill(conn, BASE_SIZE)
        print(f"  set-up: {TARGETS} issued targets, {BASE_SIZE:,} certificates ({time.perf_counter() - t0:.1f} s,"
              f" fill {fill_s:.1f} s)")

        env = dict(os.environ)
        procs = start_procs(env, tmp)
        procs["web"] = _gunicorn("app:create_app()", web_port := _free(), env, tmp / "web.log")
        procs["bare"] = _gunicorn("bench._bare_app:app", bare_port := _free(), env, tmp / "bare.log")
        roots = {name: p.pid for name, p in procs.items()}
        roots.update(stack.pids())
        roots["postgres"] = int((stack.pgdata / "postmaster.pid").read_text().split()[0])
        runner = Runner(tmp, roots)

        tokens = [issue_token(f"bench-client-{i}", "certificates:read certificates:reserve certificates:redeem",
                              None, ttl_seconds=7200) for i in range(CLIENTS)]
        tok = lambda i: tokens[i % CLIENTS]  # noqa: E731
        read_lines = [("GET", f"/certificates/{c}", tok(i), "") for i, (c, _v, _id) in enumerate(targets)]
        bare_lines = [("GET", f"/bare/{c}", tok(i), "") for i, (c, _v, _id) in enumerate(targets)]
        reserve_lines = [("POST", "/certificates/next", tok(i),
                          '{"channel":"ONLINE_STORE","orderId":"bench-{n}","lineId":"1","nominal":"1000.00",'
                          '"currency":"RUB"}') for i in range(CLIENTS)]

        def auth_lines(subset):
            return [("POST", f"/certificates/{c}/authorizations", tok(i),
                     '{"channel":"POS","orderId":"bench-{n}","amount":"1.00","cvc":"%s"}' % v)
                    for i, (c, v, _id) in enumerate(subset)]

        def hold_lines(ids_file: Path, action: str, body: str):
            ids = ids_file.read_text().split()
            return [("POST", f"/authorizations/{h}/{action}", tok(i), body) for i, h in enumerate(ids)]

        # warm-up: every worker, thread and connection pool
        runner.wrk("warm", web_port, read_lines, 16, 2, record=False)
        runner.wrk("warm", bare_port, bare_lines, 16, 2, record=False)
        runner.wrk("warm", web_port, auth_lines(targets), 16, 2, record=False)

        # holds to capture and void: an untimed authorize run, long enough to feed them
        hold_files = {}
        for c in CONNS:
            for action in ("capture", "void"):
                f = tmp / f"holds-{action}-{c}.txt"
                runner.wrk("preload", web_port, auth_lines(targets), 16, DURATION * (1.4 if c == 1 else 1.2),
                           ids_out=f, record=False)
                hold_files[(action, c)] = f

        for c in CONNS:
            runner.wrk("bare route (floor a)", bare_port, bare_lines, c)
            runner.wrk("balance read", web_port, read_lines, c)
            runner.wrk("reserve", web_port, reserve_lines, c)
            runner.wrk("authorize", web_port, auth_lines(targets), c)
            runner.wrk("capture", web_port, hold_lines(hold_files[("capture", c)], "capture", '{}'), c, once=True)
            runner.wrk("void", web_port, hold_lines(hold_files[("void", c)], "void", '{}'), c, once=True)
            runner.wrk("bare route (floor a)", bare_port, bare_lines, c)  # again: drift within the run

        state: list = []
        for c in CONNS:
            for name, txn in (("read", _floor_read), ("reserve", _floor_reserve), ("authorize", _floor_authorize),
                              ("capture", _floor_end_hold(True)), ("void", _floor_end_hold(False))):
                if name == "authorize":
                    state.clear()
                if name == "capture":  # half of the floor's holds captured, the other half voided
                    st = state[: len(state) // 2]
                    del state[: len(state) // 2]
                else:
                    st = state
                before = _proc.tree_cpu({"postgres": roots["postgres"]})
                t_cpu = time.process_time()
                r = floor_sql(url, floor_certs, txn, c, DURATION, FLOOR_SERIAL_N, st)
                after = _proc.tree_cpu({"postgres": roots["postgres"]})
                r.update(name=name, conns=c, cpu_ms={"postgres": (after["postgres"] - before["postgres"]) * 1000 / r["n"],
                                                     "bench (psycopg2)": (time.process_time() - t_cpu) * 1000 / r["n"]})
                result["floors_sql"].append(r)

        # growth: the key figures at 10,000 certificates, at BIG_SIZE, and with past holds on one
        from bench import latency

        def key_figures(label: str, read_l, auth_l) -> dict:
            out = {"bare c1": runner.wrk(f"bare route c1 [{label}]", bare_port, bare_lines, 1, record=False),
                   "balance read c1": runner.wrk(f"balance read c1 [{label}]", web_port, read_l, 1, record=False),
                   "authorize c1": runner.wrk(f"authorize c1 [{label}]", web_port, auth_l, 1, record=False),
                   "reserve c1": runner.wrk(f"reserve c1 [{label}]", web_port, reserve_lines, 1, record=False)}
            # the relay first publishes the outbox rows of the wrk runs above (thousands), else
            # the sales' events queue behind them and the figure measures that backlog
            waited = _drain_outbox(conn)
            latency.RATE = 100
            marks = []  # CPU of every process tree over the burst (as for the API figures)
            samples, lost = latency.measure_service(200 if QUICK else 400,
                                                    probe=lambda: marks.append(_proc.tree_cpu(runner.roots)))
            sales = len(samples) or 1
            cpu = {n: (marks[1][n] - marks[0][n]) * 1000 / sales for n in marks[1]} if len(marks) == 2 else {}
            out["sale latency"] = dict(latency.percentiles(samples), lost=lost, outbox_drain_s=waited, cpu_ms=cpu)
            return out

        result["growth"]["10,000 certificates"] = key_figures("10k", read_lines, auth_lines(targets))
        result["plans"]["10,000 certificates"] = _explain(conn, targets)
        fill_s = _fill(conn, BIG_SIZE)
        print(f"  filled to {BIG_SIZE:,} certificates in {fill_s:.1f} s")
        result["growth"][f"{BIG_SIZE:,} certificates"] = key_figures("big", read_lines, auth_lines(targets))
        result["plans"][f"{BIG_SIZE:,} certificates"] = _explain(conn, targets)
        one = targets[:1]
        with conn.cursor() as cur:  # past holds on one certificate: captured, voided, expired
            cur.execute(
                "INSERT INTO authorization_hold (id, certificate_id, channel, client_id, order_id, amount,"
                " captured_amount, currency, status, expires_at, created_at, updated_at)"
                " SELECT 'auth-past-' || g, %s, 'POS', 'bench', 'o-' || g, 1.00, 0, 'RUB',"
                " (ARRAY['CAPTURED','VOIDED','EXPIRED'])[1 + g %% 3], now() - interval '1 day',"
                " now() - interval '2 days', now() - interval '1 day' FROM generate_series(1, %s) g",
                (one[0][2], PAST_HOLDS))
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE authorization_hold")
        conn.autocommit = False
        label = f"{PAST_HOLDS:,} past holds on one certificate"
        one_read = [("GET", f"/certificates/{one[0][0]}", tok(i), "") for i in range(CLIENTS)]
        one_auth = [l for i in range(CLIENTS) for l in auth_lines(one)]
        one_auth = [(m, p, tok(i), b) for i, (m, p, _t, b) in enumerate(one_auth)]
        result["growth"][label] = key_figures("holds", one_read, one_auth)
        result["plans"][label] = _explain(conn, one)
        conn.close()
        result["runs"] = runner.runs
        return result
    finally:
        for name in ("web", "bare"):
            if name in procs:
                _stop(procs.pop(name))
        from bench._pipeline import stop_procs

        stop_procs(procs)
        if stack is not None:
            try:
                stack.stop()
            except Exception:
                pass
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)


def _drain_outbox(conn, timeout: float = 120) -> float:
    """Wait until the relay has published every outbox row; returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM outbox_event WHERE published_at IS NULL")
            left = cur.fetchone()[0]
        conn.rollback()
        if not left:
            break
        time.sleep(0.2)
    return round(time.perf_counter() - started, 1)


def _free() -> int:
    from devstack import free_port

    return free_port()


def print_summary(r: dict) -> None:
    for run in r["runs"]:
        print(f"  {run['name']:24} c{run['conns']:<3} {run['rps']:8.1f} req/s  p50 {run['p50']:7.2f}  p99 {run['p99']:7.2f} ms"
              f"  non-2xx {run['non2xx']}  {run['codes']}")
    for f in r["floors_sql"]:
        print(f"  sql floor {f['name']:14} c{f['conns']:<3} {f['rps']:8.1f} txn/s  p50 {f['p50']:7.2f}  p99 {f['p99']:7.2f} ms")
    for label, figs in r["growth"].items():
        print(f"  growth [{label}]: " + ", ".join(
            f"{k} p50 {v['p50']:.2f}" for k, v in figs.items()))


if __name__ == "__main__":
    res = main()
    print_summary(res)
    out = Path(tempfile.gettempdir()) / "bench-api.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"  raw: {out}")
