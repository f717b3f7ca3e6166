"""Run every benchmark under bench/ (each module's ``main()``), print its figures, and write one
Markdown report, bench/report.md, with the raw results kept in bench/runs/<timestamp>.json.

``BENCH_QUICK=1``: short runs for iterating (the report says so, and goes to report-quick.md).
``BENCH_ONLY=api,events``: only those modules. ``BENCH_BASELINE=bench/runs/<run>.json``: a section
comparing this run with that one. ``python -m bench.report bench/runs/<run>.json`` writes a run's
report again. The order: the API first (the longest), then the event paths, then the others.
"""
from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import pkgutil
import sys
import time
import subprocess
import tempfile
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST = ("api", "events", "latency")
NOT_BENCHMARKS = ("run_all", "report", "__init__")
SKIP_QUICK = ("load_million",)


def main() -> int:
    from bench import report
    from bench._proc import machine

    quick = os.environ.get("BENCH_QUICK") == "1"
    found = sorted(m.name for m in pkgutil.iter_modules([str(HERE)])
                   if m.name not in NOT_BENCHMARKS and not m.name.startswith("_"))
    names = [n for n in FIRST if n in found] + [n for n in found if n not in FIRST]
    only = [x for x in os.environ.get("BENCH_ONLY", "").split(",") if x]
    if only:
        names = [n for n in names if n in only]
    elif quick:
        names = [n for n in names if n not in SKIP_QUICK]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    meta = {"started": stamp, "quick": quick, "machine": machine(), "failed": {}, "seconds_each": {}}
    results: dict = {}
    started_all = time.monotonic()
    for name in names:
        if not hasattr(importlib.import_module(f"bench.{name}"), "main"):
            continue
        print(f"== bench/{name}.py", flush=True)
        started = time.monotonic()
        # each benchmark in a process of its own: module state (clients of the servers of an
        # earlier benchmark, Dramatiq's broker) never leaks from one to the next
        out = Path(tempfile.gettempdir()) / f"gcp-bench-{stamp}-{name}.json"
        done = subprocess.run([sys.executable, "-m", "bench.run_all", "--one", name, str(out)], cwd=HERE.parent)
        if done.returncode == 0 and out.exists():
            results[name] = json.loads(out.read_text())
            out.unlink()
        else:
            meta["failed"][name] = f"exit code {done.returncode} (its output is above)"
            print(f"   FAILED: exit code {done.returncode}")
        meta["seconds_each"][name] = round(time.monotonic() - started, 1)
        print(f"   ({time.monotonic() - started:.1f} s)\n", flush=True)
    meta["seconds"] = time.monotonic() - started_all
    meta.update(machine_end=machine(), versions=report.versions(), git=report.git_head())
    runs = HERE / "runs"
    runs.mkdir(exist_ok=True)
    raw = runs / f"{stamp}{'-quick' if quick else ''}.json"
    meta["raw"] = str(raw.relative_to(HERE.parent))
    raw.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    out = HERE / ("report-quick.md" if quick else "report.md")
    report.write(results, meta, out)
    raw.with_suffix(".md").write_text(out.read_text())  # the report of this run, kept with its raw results
    print(f"report: {out}\nraw: {raw}")
    return 1 if meta["failed"] else 0


def one(name: str, out: str) -> int:
    module = importlib.import_module(f"bench.{name}")
    try:
        result = module.main()
    except Exception:
        traceback.print_exc()
        return 1
    if hasattr(module, "print_summary"):
        module.print_summary(result)
    Path(out).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        sys.exit(one(sys.argv[2], sys.argv[3]))
    sys.exit(main())
