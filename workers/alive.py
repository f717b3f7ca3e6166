"""``python -m workers.alive PROCESS``: a container healthcheck, cheap and local.

Every long-running process's heartbeat thread touches ``$TMPDIR/gcp-PROCESS.alive`` at each
beat, whether or not Redis (where the beats go for ``/health/ready``) answers: an outage of a
dependency is ridden through and is no reason to call the process dead. Exit 0 when the file
is fresher than ``--max-age`` seconds (default 3 heartbeat intervals), 1 otherwise. Imports
nothing of the service, so a check every few seconds costs next to nothing.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time


def alive_file(process: str) -> str:
    """The file the heartbeat touches: :func:`models.store.liveness.alive_file`'s line, copied so
    that a check imports nothing of the service (a test checks the two agree)."""
    return os.path.join(tempfile.gettempdir(), f"gcp-{process}.alive")


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python -m workers.alive PROCESS [--max-age SECONDS]", file=sys.stderr)
        return 2
    process = argv[0]
    interval = int(os.environ.get("HEARTBEAT_INTERVAL_MS") or 5000) / 1000.0
    max_age = float(argv[argv.index("--max-age") + 1]) if "--max-age" in argv else 3 * interval
    try:
        age = time.time() - os.path.getmtime(alive_file(process))
    except OSError:
        print(f"{process}: no heartbeat yet", file=sys.stderr)
        return 1
    if age > max_age:
        print(f"{process}: last heartbeat {age:.0f} s ago", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
