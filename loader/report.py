"""The load report: counts, and every rejected row with its line number and reason.

Rejected rows are spilled to a temporary file as they come (in line order: the loader hands
them over chunk by chunk, each chunk a range of lines), so a file with a million bad rows does
not hold them in memory. Rows found late (duplicates confirmed by the second pass) are kept
aside and merged in line order when the report (JSON) is written at the end.
"""
from __future__ import annotations

import collections
import datetime as dt
import heapq
import json
import os
import resource
import tempfile
from pathlib import Path


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Report:
    """Counts and rejected rows of one ``load`` run; :meth:`write` saves the JSON report."""

    def __init__(self, **meta):
        self.meta = meta
        self.started = dt.datetime.now(dt.timezone.utc)
        self.counts = collections.Counter(rows=0, valid=0, accepted=0, alreadyLoaded=0, rejected=0,
                                          notSent=0)
        self.by_reason: collections.Counter = collections.Counter()
        self._spill = tempfile.TemporaryFile("w+", encoding="utf-8")
        self._late: list[tuple[int, str]] = []
        self.chunks = 0

    def reject(self, line: int, code: str | None, reason: str, message: str, late: bool = False) -> None:
        """Record a rejected row; rows must come in line order unless ``late``."""
        self.counts["rejected"] += 1
        self.by_reason[reason] += 1
        text = json.dumps({"line": line, "code": code, "reason": reason, "message": message})
        if late:
            self._late.append((line, text))
        else:
            self._spill.write(f"{line}\t{text}\n")

    def _spilled(self):
        self._spill.flush()
        self._spill.seek(0)
        for entry in self._spill:
            line, _, text = entry.rstrip("\n").partition("\t")
            yield int(line), text
        self._spill.seek(0, os.SEEK_END)

    def rejected_rows(self):
        """The rejected rows as JSON texts, in line order."""
        for _, text in heapq.merge(self._spilled(), sorted(self._late), key=lambda item: item[0]):
            yield text

    def summary(self, *, complete: bool, exit_code: int, error: str | None = None) -> dict:
        finished = dt.datetime.now(dt.timezone.utc)
        seconds = max((finished - self.started).total_seconds(), 1e-6)
        return {
            **self.meta,
            "complete": complete,
            "exitCode": exit_code,
            "error": error,
            "startedAt": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "finishedAt": _now(),
            "seconds": round(seconds, 3),
            "rowsPerSecond": round(self.counts["rows"] / seconds, 1),
            "chunks": self.chunks,
            "counts": {**self.counts, "loaded": self.counts["accepted"] + self.counts["alreadyLoaded"]},
            "rejectedByReason": dict(sorted(self.by_reason.items())),
            "peakRssMb": peak_rss_mb(),
        }

    def write(self, path: Path | None, summary: dict) -> None:
        """Write ``summary`` and the rejected rows as one JSON document (atomically)."""
        if path is None:
            return
        head = json.dumps(summary, indent=2)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(head[:-2] + ',\n  "rejected": [')
            for i, row in enumerate(self.rejected_rows()):
                f.write(("\n    " if i == 0 else ",\n    ") + row)
            f.write("\n  ]\n}\n")
        os.replace(tmp, path)

    def close(self) -> None:
        self._spill.close()
