"""Run every benchmark under bench/ (each module's ``main()``) and print its figures."""
from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules([str(HERE)])
                   if m.name not in ("run_all", "__init__") and not m.name.startswith("_"))
    failed = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        if not hasattr(module, "main"):
            continue
        print(f"== bench/{name}.py")
        started = time.monotonic()
        try:
            module.main()
        except Exception as exc:  # keep going: report every benchmark
            failed.append(name)
            print(f"   FAILED: {exc!r}")
        print(f"   ({time.monotonic() - started:.1f} s)\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
