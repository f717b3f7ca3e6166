"""Where the web's time goes during authorize at 16 connections: py-spy and pg_stat_statements.

Not part of `make bench` (a leading underscore): ``python -m bench._profile [seconds]``;
``PROFILE_GIL=1``: only the thread holding the GIL is sampled (where the web's CPU goes).
Runs a private PostgreSQL 15 from Debian's packages (``/usr/lib/postgresql/15``, for its
pg_stat_statements; the embedded pgserver has no contrib) in a temp dir, the embedded Redis and
Tansu, the service's web, worker, pump and relay; plays ``POST /certificates/{code}/authorizations``
with wrk at 16 connections while py-spy samples every web worker (no idle threads), then prints:

- the share of the web's samples under each library or module (inclusive: a sample counts for
  every group on its stack), and the top leaf functions;
- the statements per authorize (pg_stat_statements calls / requests) and their mean times.
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import api

PG = Path("/usr/lib/postgresql/15/bin")
#: PROFILE_OP=balance profiles GET /certificates/{code} instead of authorize.
OP = os.environ.get("PROFILE_OP", "authorize")
IDLE = ("_worker (concurrent/futures/thread.py", "select (selectors.py", "wait_for_signals", "Arbiter.sleep",
        "WorkerTmp.notify")
GROUPS = {
    "flask_limiter (rate limit)": ("flask_limiter",),
    "  of which limits' strategies (Redis round trips)": ("limits/strategies",),
    "redis client": ("redis/",),
    "peewee": ("peewee",),
    "PostgreSQL round trips (models/store/db.py Statements, peewee execute)": ("Statements.flush", "_execute_cursor"),
    "jwt": ("jwt/",),
    "marshmallow / flask_smorest / webargs": ("marshmallow", "flask_smorest", "webargs"),
    "logging": ("logging/",),
    "prometheus_client": ("prometheus_client",),
    "cvc (hash check)": ("models/store/cvc.py",),
    "models/service/handlers, unit_of_work, repository": ("models/service/handlers/", "models/service/unit_of_work.py", "models/store/repository.py"),
    "models/store/cvc_budget.py": ("models/store/cvc_budget.py",),
    "models/store/cache.py": ("models/store/cache.py",),
    "api/idempotency.py": ("api/idempotency.py",),
}


def _pg15(root: Path) -> str:
    data = root / "pg15"
    data.mkdir(parents=True)
    shutil.chown(root, "postgres")
    shutil.chown(data, "postgres")
    port = api._free()
    run = lambda *a: subprocess.run(["runuser", "-u", "postgres", "--", *a], check=True,  # noqa: E731
                                    capture_output=True, cwd="/tmp")
    run(str(PG / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    run(str(PG / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"), "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements "
        f"-c max_connections=200", "start")
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    import psycopg2

    c = psycopg2.connect(url)
    c.autocommit = True
    c.cursor().execute("CREATE DATABASE gcp")
    c.close()
    return url.rsplit("/", 1)[0] + "/gcp"


def main(seconds: float = 15) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gcp-profile-"))
    os.chmod(tmp, 0o755)
    procs = {}
    stack = None
    try:
        import psycopg2

        from bench._pipeline import start_procs
        from devstack import EmbeddedStack

        url = _pg15(tmp)
        stack = EmbeddedStack(tmp / "stack")
        (tmp / "stack").mkdir()
        os.environ.update(DATABASE_URL=url, REDIS_URL=stack.start_redis(), KAFKA_BOOTSTRAP_SERVERS=stack.start_kafka())
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

        init_db(url)
        migrate()
        ensure_topics()
        conn = psycopg2.connect(url)
        conn.autocommit = True
        conn.cursor().execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        targets = api._issue_targets(api.TARGETS)
        env = dict(os.environ)
        procs = start_procs(env, tmp)
        procs["web"] = api._gunicorn("app:create_app()", port := api._free(), env, tmp / "web.log")
        runner = api.Runner(tmp, {"web": procs["web"].pid})
        tokens = [issue_token(f"prof-{i}", "certificates:read certificates:redeem", None, 7200) for i in range(64)]
        if OP == "balance":
            lines = [("GET", f"/certificates/{c}", tokens[i % 64], "") for i, (c, _v, _id) in enumerate(targets)]
        else:
            lines = [("POST", f"/certificates/{c}/authorizations", tokens[i % 64],
                      '{"channel":"POS","orderId":"prof-{n}","amount":"1.00","cvc":"%s"}' % v)
                     for i, (c, v, _id) in enumerate(targets)]
        runner.wrk("warm", port, lines, 16, 3, record=False)
        conn.cursor().execute("SELECT pg_stat_statements_reset()")
        out = tmp / "spy.txt"
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(procs["web"].pid),
                                "--subprocesses", "-r", "200", *(["--gil"] if os.environ.get("PROFILE_GIL") else []), "-d", str(int(seconds) + 2), "-f", "raw", "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        r = runner.wrk(OP, port, lines, 16, seconds)
        spy.wait(60)
        with conn.cursor() as cur:
            cur.execute("SELECT calls, mean_exec_time, total_exec_time, query FROM pg_stat_statements"
                        " ORDER BY calls DESC LIMIT 40")
            stmts = cur.fetchall()
        print(f"{OP} c16: {r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, codes {r['codes']}")
        total, groups, leaves = 0, collections.Counter(), collections.Counter()
        idle_n = 0
        for line in out.read_text().splitlines():
            stack_s, _, n = line.rpartition(" ")
            n = int(n)
            if any(k in stack_s.split(";")[-1] for k in IDLE):  # a thread waiting for work
                idle_n += n
                continue
            total += n
            for g, keys in GROUPS.items():
                if any(k in stack_s for k in keys):
                    groups[g] += n
            leaves[stack_s.split(";")[-1]] += n
        print(f"py-spy: {total} busy samples of the web workers ({idle_n} more of threads waiting for work)")
        for g, n in groups.most_common():
            print(f"  {n / total:6.1%}  {g}")
        print("  top leaves:")
        for leaf, n in leaves.most_common(15):
            print(f"  {n / total:6.1%}  {leaf[:150]}")
        req = r["requests"]
        print(f"pg_stat_statements over {req} requests (every process; calls per request):")
        for calls, mean, tot, q in stmts:
            print(f"  {calls / req:6.2f}  {mean:7.3f} ms  {' '.join(q.split())[:140]}")
        (Path(tempfile.gettempdir()) / "gcp-profile-spy.txt").write_text(out.read_text())
    finally:
        from bench._pipeline import stop_procs

        if "web" in procs:
            api._stop(procs.pop("web"))
        stop_procs(procs)
        if stack is not None:
            stack.stop()
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG / "pg_ctl"), "-D", str(tmp / "pg15"), "-w",
                        "-m", "fast", "stop"], capture_output=True, cwd="/tmp")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 15)
