"""Benchmark: load 1,000,000 codes end to end (file -> HTTP -> PostgreSQL) with the loader.

    python -m bench.load_million [--count 1000000] [--chunk-size 10000] [--workers 2] [--repeat]

Starts its own embedded PostgreSQL in a temp dir (fsync off, as the tests run it) and gunicorn
with the Procfile's settings (2 workers) on a free port; writes the file with
``python -m loader generate``; times ``python -m loader load`` as a separate process (its
peak memory comes from its report); then, as the floor measured in the same run, times one
PostgreSQL ``COPY`` of the same rows into an identical, empty database. Goals: under 30 s end
to end, loader peak RSS under 150 MB.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack import EmbeddedStack, free_port  # noqa: E402

GOAL_SECONDS = 30.0
GOAL_RSS_MB = 150.0
SECRET = "bench-secret-bench-secret-bench-secret"


def _migrate(url: str) -> None:
    subprocess.run([sys.executable, "app.py", "migrate"], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "DATABASE_URL": url})


def _create_database(stack: EmbeddedStack, name: str) -> str:
    conn = psycopg2.connect(host="127.0.0.1", port=stack.pg_port, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return f"postgresql://postgres@127.0.0.1:{stack.pg_port}/{name}"


def _start_web(url: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": url, "PORT": str(port), "HOST": "127.0.0.1",
           "JWT_SECRET": SECRET, "LOG_LEVEL": "WARNING", "RATE_LIMIT": "100000/second", "GCP_ENV": "development",
           "WEB_CONCURRENCY": "2", "PYTHONUNBUFFERED": "1"}
    for name in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py",
                             "app:create_app()"], cwd=ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health/live", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer within 60 s")


def _count(url: str, batch_id: str | None = None) -> int:
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        if batch_id:
            cur.execute("SELECT count(*) FROM gift_certificate WHERE batch_id = %s", (batch_id,))
        else:
            cur.execute("SELECT count(*) FROM gift_certificate")
        n = cur.fetchone()[0]
    conn.close()
    return n


def _copy_floor(url: str, path: Path) -> tuple[float, int]:
    """One COPY of the file's rows into gift_certificate (the text built first, not timed)."""
    out, n = io.StringIO(), 0
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            code, nominal, expires = line.rstrip("\n").split(",")
            out.write(f"{code}\tcopy-floor\tELECTRONIC\tRUB\t{'f' if nominal else 't'}\t"
                      f"{nominal or chr(92) + 'N'}\t0\tAVAILABLE\t{expires or chr(92) + 'N'}\n")
            n += 1
    data = out.getvalue()
    del out
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO certificate_batch (batch_id, kind, currency, loaded_by) "
                    "VALUES ('copy-floor', 'ELECTRONIC', 'RUB', 'bench')")
        conn.commit()
        started = time.perf_counter()
        cur.copy_expert("COPY gift_certificate (code, batch_id, kind, currency, open_value, nominal, "
                        "remaining_balance, status, batch_expires_at) FROM STDIN", io.StringIO(data))
        conn.commit()
        seconds = time.perf_counter() - started
    conn.close()
    return seconds, n


def _load(file: Path, url: str, token: str, report: Path, args) -> tuple[float, dict, int]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "loader", "load", str(file), "--url", url,
                           "--token", token, "--report", str(report), "--no-progress",
                           "--chunk-size", str(args.chunk_size), "--workers", str(args.workers)],
                          cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout, done.stderr, file=sys.stderr)
    return seconds, json.loads(report.read_text()), done.returncode


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", action="store_true", help="also time loading the same file again")
    parser.add_argument("--no-floor", action="store_true", help="skip the COPY floor (quick tuning runs)")
    args = parser.parse_args([] if argv is None else argv)  # run_all calls main()

    tmp = Path(tempfile.mkdtemp(prefix="gcp-bench-"))
    os.environ["GCP_PG_FAST"] = "1"
    os.environ["JWT_SECRET"] = SECRET
    stack = EmbeddedStack(tmp / "stack", database="postgres")
    web = None
    try:
        stack.start_postgres()
        http_db = _create_database(stack, "bench_http")
        copy_db = _create_database(stack, "bench_copy")
        _migrate(http_db)
        _migrate(copy_db)

        file = tmp / "batch.csv"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "loader", "generate", "--count", str(args.count),
                        "--out", str(file), "--nominal", "1000.00", "--expires", "2035-12-31"],
                       cwd=ROOT, check=True, capture_output=True)
        generate_s = time.perf_counter() - started

        port = free_port()
        web = _start_web(http_db, port, tmp / "gunicorn.log")
        from config import reset_settings
        reset_settings()
        from api.auth import issue_token
        token = issue_token("bench-loader", "batches:write", ttl_seconds=3600)
        url = f"http://127.0.0.1:{port}"

        load_s, report, code = _load(file, url, token, tmp / "report.json", args)
        loaded = _count(http_db, report["batchId"])
        repeat = None
        if args.repeat:
            repeat_s, repeat_report, repeat_code = _load(file, url, token, tmp / "report2.json", args)
            repeat = (repeat_s, repeat_report["counts"], repeat_code)
        floor_s, floor_n = _copy_floor(copy_db, file) if not args.no_floor else (float("nan"), args.count)
        floor_rows = _count(copy_db)
    finally:
        if web is not None:
            web.terminate()
            try:
                web.wait(20)
            except subprocess.TimeoutExpired:
                web.kill()
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.count
    rss = report["peakRssMb"]
    figures = {"count": n, "loaded": loaded, "exitCode": code, "generateSeconds": round(generate_s, 2),
               "endToEndSeconds": round(load_s, 2), "endToEndRate": round(n / load_s),
               "loaderPeakRssMb": rss, "chunks": report["chunks"], "counts": report["counts"]}
    print(f"load_million: {n:,} codes, chunks of {args.chunk_size} x {args.workers} in flight, "
          f"gunicorn 2 workers, embedded PostgreSQL (fsync off), {os.cpu_count()} cores")
    print(f"  generate (python -m loader generate)      {generate_s:8.2f} s")
    print(f"  end to end (file -> HTTP -> PostgreSQL)   {load_s:8.2f} s  {n / load_s:10,.0f} codes/s"
          f"   exit {code}, {loaded:,} rows in the table")
    if not args.no_floor:
        figures.update(copyFloorSeconds=round(floor_s, 2), copyFloorRate=round(floor_n / floor_s),
                       ratio=round(load_s / floor_s, 2))
        print(f"  floor: one COPY of the same rows          {floor_s:8.2f} s  {floor_n / floor_s:10,.0f} "
              f"codes/s   ({floor_rows:,} rows)")
        print(f"  ratio end to end / COPY floor             {load_s / floor_s:8.2f}")
    print(f"  loader peak RSS                           {rss:8.1f} MB")
    if repeat is not None:
        print(f"  same file again (adds nothing)            {repeat[0]:8.2f} s   exit {repeat[2]}, "
              f"alreadyLoaded {repeat[1]['alreadyLoaded']:,}, accepted {repeat[1]['accepted']}")
        figures["repeatSeconds"] = round(repeat[0], 2)
    print(f"  goals: < {GOAL_SECONDS:.0f} s {'met' if load_s < GOAL_SECONDS else 'MISSED'}; "
          f"RSS < {GOAL_RSS_MB:.0f} MB {'met' if rss < GOAL_RSS_MB else 'MISSED'}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
