"""CPU of process trees from /proc (utime + stime of a process and all its descendants)."""
from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, cpu seconds) for every process now."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # utime + stime, and cutime + cstime: the children it reaped (a postgres backend or an
        # autovacuum worker that exited meanwhile is then still counted, in the postmaster's)
        out[int(d.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / TICK)
    return out


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named root pid and its descendants (one /proc scan).

    Each process counts its own time and that of the children it reaped, so a descendant that
    exits between two readings moves from one term to another and the sum stays right."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu) in table.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, root in roots.items():
        total, stack = 0.0, [root]
        while stack:
            pid = stack.pop()
            if pid in table:
                total += table[pid][1]
            stack.extend(children.get(pid, ()))
        out[name] = total
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def machine() -> dict:
    """Cores, CPU model, kernel, memory and the load average now."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    u = os.uname()
    return {"cores": os.cpu_count(), "cpu": model, "kernel": f"{u.sysname} {u.release}",
            "memory": mem, "loadavg": os.getloadavg()}
