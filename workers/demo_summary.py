"""`make demo`'s bookkeeping: each step's checked outcome, and the closing summary that states
every figure beside its bound and says plainly when one is out of bounds."""
from __future__ import annotations

from dataclasses import dataclass, field

#: The contract's bound on an input message's processing, to its event on the stream (section 4).
LATENCY_BOUND_MS = 200.0


@dataclass
class Steps:
    """What each step did, as it checked it (never what it meant to do)."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def check(self, ok: bool, said: str, failure: str) -> bool:
        """Print ``said`` when ``ok`` (the step checked its outcome), else ``failure``, marked."""
        if ok:
            self.done.append(said)
            print(f"  ok    {said}")
        else:
            self.failed.append(failure)
            print(f"  FAIL  {failure}")
        return ok


def sequence_gaps(events: dict[str, list[dict]]) -> list[str]:
    """The certificates whose stream ``sequence``s, as read, repeat or skip a number."""
    gaps = []
    for key, evs in events.items():
        seqs = sorted(ev["sequence"] for ev in evs if ev.get("sequence") is not None)
        if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            gaps.append(key)
    return gaps


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summary(steps: Steps, latencies_ms: list[float], events: dict[str, list[dict]],
            dlq_added: int) -> list[str]:
    """The closing lines: each figure, its bound, and whether it kept it."""
    lines = []
    total = len(steps.done) + len(steps.failed)
    lines.append(f"Steps that did what they said: {len(steps.done)} of {total} (bound: all) -> "
                 + ("within bounds" if not steps.failed else "OUT OF BOUNDS: " + "; ".join(steps.failed)))
    if latencies_ms:
        median, p95, worst = (percentile(latencies_ms, q) for q in (0.5, 0.95, 1.0))
        over = sum(v > LATENCY_BOUND_MS for v in latencies_ms)
        verdict = ("within bounds" if not over else
                   f"OUT OF BOUNDS: {over} of {len(latencies_ms)} events took longer than "
                   f"{LATENCY_BOUND_MS:.0f} ms (a loaded machine, or a slow broker: see docs/runbook.md)")
        lines.append(f"Input message -> stream event, {len(latencies_ms)} events: median {median:.0f} ms, "
                     f"p95 {p95:.0f} ms, max {worst:.0f} ms (bound: each under {LATENCY_BOUND_MS:.0f} ms, "
                     f"contract section 4) -> {verdict}")
    else:
        lines.append(f"Input message -> stream event: nothing measured (bound: each under "
                     f"{LATENCY_BOUND_MS:.0f} ms) -> OUT OF BOUNDS: no event was read back")
    gaps = sequence_gaps(events)
    count = sum(len(v) for v in events.values())
    lines.append(f"Stream: {count} events on {len(events)} keys, sequence gaps or repeats: {len(gaps)} "
                 f"(bound: 0) -> " + ("within bounds" if not gaps else "OUT OF BOUNDS: " + ", ".join(gaps)))
    lines.append(f"DLQ: {dlq_added} new entries for the 1 broken message sent (bound: exactly 1) -> "
                 + ("within bounds" if dlq_added == 1 else "OUT OF BOUNDS"))
    return lines
