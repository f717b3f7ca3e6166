"""Sending a batch file to ``POST /batches`` in chunks, and the load run itself.

The file is read once, lazily: rows are checked as they come (``loader.reader``), gathered into
chunks (``chunk_size`` rows and at most ``max_body_bytes`` of JSON), and each chunk is POSTed by
a small thread pool while the next ones are read (at most ``workers + 1`` chunks in memory).
Answers are handled in file order. A chunk is retried on network errors, 429 (after
``Retry-After``) and 5xx, which is safe: the service loads a code of a batch once, and a chunk
sent again reports its codes as ``alreadyLoaded``. A chunk too large for the service (413) is
split in two. Loading the same file again, or after an interruption, completes it without
duplicates: the batch id comes from the file's content.
"""
from __future__ import annotations

import collections
import json
import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from config import get_settings
from loader import reader
from loader.report import Report

log = logging.getLogger("gcp.loader")

#: Exit codes of ``python -m loader load``.
OK, REJECTED, FAILED, INTERRUPTED = 0, 1, 2, 3
#: HTTP answers worth retrying (the chunk is idempotent).
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class LoadError(Exception):
    """The load cannot go on (authentication, a refused chunk, the service unreachable)."""


class TooLarge(Exception):
    """The service refused the body as too large (413)."""


@dataclass
class Chunk:
    """Rows sent in one request, and the rows refused locally since the previous chunk."""

    rows: list[reader.Row] = field(default_factory=list)
    local: list[reader.Rejection] = field(default_factory=list)
    size: int = 0  # bytes of JSON
    read: int = 0  # rows of the file this chunk accounts for (sent + refused locally)


@dataclass
class Outcome:
    accepted: int = 0
    already: int = 0
    rejected: list[dict] = field(default_factory=list)


class BatchClient:
    """``POST /batches`` with retries; one ``requests.Session`` per thread."""

    def __init__(self, url: str, token: str, *, timeout: float = 120.0, attempts: int = 6,
                 backoff: float = 0.5):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update({"Authorization": f"Bearer {self.token}",
                                    "Content-Type": "application/json",
                                    "User-Agent": "gcp-loader"})
        return session

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        """Send with retries; returns (status, JSON body) of a 2xx. Raises LoadError, TooLarge."""
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                resp = self._session().request(method, self.url + path, data=body, timeout=(10, self.timeout))
            except requests.RequestException as exc:
                if attempt == self.attempts:
                    raise LoadError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from None
                log.warning("%s %s failed (%s), retrying in %.1fs", method, path, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10)
                continue
            if resp.status_code < 300:
                return resp.status_code, resp.json()
            if resp.status_code == 413:
                raise TooLarge()
            if resp.status_code in RETRY_STATUS and attempt < self.attempts:
                wait = _retry_after(resp) or delay
                log.warning("%s %s answered %s, retrying in %.1fs", method, path, resp.status_code, wait)
                time.sleep(wait)
                delay = min(delay * 2, 10)
                continue
            raise LoadError(_describe(resp))
        raise LoadError(f"{method} {path}: no answer after {self.attempts} attempts")  # pragma: no cover

    def pool(self) -> dict:
        return self.request("GET", "/pool")[1]


def _retry_after(resp: requests.Response) -> float | None:
    try:
        return min(float(resp.headers.get("Retry-After", "")), 30.0)
    except ValueError:
        return None


def _describe(resp: requests.Response) -> str:
    try:
        err = resp.json()
        text = f"{err.get('code')}: {err.get('message')}"
        if err.get("details"):
            text += " " + json.dumps(err["details"])[:500]
    except ValueError:
        text = resp.text[:300]
    hint = ""
    if resp.status_code == 401:
        hint = " (get a token: python app.py token --client loader --scope batches:write)"
    elif resp.status_code == 403:
        hint = " (the token needs the scope batches:write)"
    return f"the service answered {resp.status_code} {text}{hint}"


@dataclass
class LoadOptions:
    path: Path
    url: str
    token: str
    kind: str = "ELECTRONIC"
    currency: str = "RUB"
    batch_id: str | None = None
    dry_run: bool = False
    fmt: str | None = None
    check_digit: bool = True
    chunk_size: int = 10_000
    max_body_bytes: int = 1_000_000
    workers: int = 2
    max_chunks: int | None = None  # stop after this many chunks (to test resuming)
    report_path: Path | None = None
    progress: bool = True


class Loader:
    """One ``load`` run: read, check, send in chunks, report. :meth:`run` returns the exit code."""

    def __init__(self, opts: LoadOptions, client: BatchClient | None = None):
        self.opts = opts
        self.client = client or BatchClient(opts.url, opts.token)
        self.report: Report | None = None
        self._stop = False
        self._base: dict = {}
        self._heads: dict = {}
        self._owns: dict = {}

    # -- chunks
    def _body(self, rows: list[reader.Row]) -> bytes:
        """The request: the first row's nominal and expiry become the chunk's defaults, so most
        certificates are just ``{"code": ...}``; the others carry their own values."""
        default = rows[0][2][:2] + (None,)
        head = self._heads.get(default)
        if head is None:
            nominal, expires, _ = default
            fields = {**self._base, **({"nominal": nominal} if nominal else {}),
                      **({"expiresAt": expires} if expires else {})}
            head = self._heads[default] = json.dumps(fields)[:-1] + ',"certificates":['
        own = self._own
        parts = ['{"code":"' + code + ('"}' if values is default or values == default else own(values))
                 for _, code, values in rows]
        return (head + ",".join(parts) + "]}").encode()

    def _own(self, values: tuple) -> str:
        """A certificate's own values, nulls included (they override the chunk's defaults)."""
        text = self._owns.get(values)
        if text is None:
            nominal, expires, cvc = values
            text = ('","nominal":' + json.dumps(nominal) + ',"expiresAt":' + json.dumps(expires)
                    + (',"cvc":' + json.dumps(cvc) if cvc else "") + "}")
            if cvc is None:  # a printed card's values are its own: not worth remembering
                self._owns[values] = text
        return text

    def _send(self, rows: list[reader.Row]) -> Outcome:
        """POST one chunk; a chunk the service finds too large is sent as two halves."""
        try:
            _, answer = self.client.request("POST", "/batches", self._body(rows))
        except TooLarge:
            if len(rows) < 2:
                raise LoadError("the service refuses even a one-row chunk as too large") from None
            half = len(rows) // 2
            first, second = self._send(rows[:half]), self._send(rows[half:])
            return Outcome(first.accepted + second.accepted, first.already + second.already,
                           first.rejected + second.rejected)
        return Outcome(answer["accepted"], answer["alreadyLoaded"], answer["rejected"])

    def _chunks(self, rows, validator: reader.Validator):
        """Group the checked rows into chunks; local rejections travel with the next chunk."""
        opts = self.opts
        chunk = Chunk()
        budget = opts.max_body_bytes - 200 - len(json.dumps(self._base))
        for raw in rows:
            result = validator.check(raw)
            chunk.read += 1
            if type(result) is not tuple:
                if result is not None:
                    chunk.local.append(result)
                continue
            size = len(result[1]) + len(self._own(result[2])) + 12
            if chunk.rows and (len(chunk.rows) >= opts.chunk_size or chunk.size + size > budget):
                chunk.read -= 1
                yield chunk
                chunk = Chunk(read=1)
            chunk.rows.append(result)
            chunk.size += size
        yield chunk

    def _apply(self, chunk: Chunk, outcome: Outcome | None, sent: bool = True, late: bool = False) -> None:
        """Count a chunk's outcome; refused rows get their line numbers back (in line order:
        a chunk is a range of lines)."""
        report = self.report
        report.counts["rows"] += chunk.read
        report.counts["valid"] += len(chunk.rows)
        refused = [(r.line, r.code, r.reason, r.message) for r in chunk.local]
        if not sent:
            report.counts["notSent"] += len(chunk.rows)
        if outcome is not None:
            report.chunks += 1
            report.counts["accepted"] += outcome.accepted
            report.counts["alreadyLoaded"] += outcome.already
            if outcome.rejected:
                lines = collections.defaultdict(list)
                for line, code, _ in chunk.rows:
                    lines[code].append(line)
                for r in outcome.rejected:
                    line = lines[r["code"]].pop(0) if lines.get(r["code"]) else 0
                    refused.append((line, r["code"], r["reason"], r.get("message") or r["reason"]))
        for line, code, reason, message in sorted(refused, key=lambda r: r[0]):
            report.reject(line, code, reason, message, late=late)

    # -- the run
    def run(self) -> int:
        opts = self.opts
        self.report = Report(file=str(opts.path), kind=opts.kind, currency=opts.currency,
                             dryRun=opts.dry_run, checkDigit=opts.check_digit, url=opts.url)
        error, code, interrupted = None, OK, False
        previous = {}
        if _main_thread():  # Ctrl-C or SIGTERM: finish the requests in flight, report, stop
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            interrupted = self._run()
        except (reader.FileError, LoadError) as exc:
            error, code = str(exc), FAILED
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if code == OK and interrupted:
            code = INTERRUPTED
            error = "interrupted before the end of the file: run the same command again to resume"
        elif code == OK and self.report.counts["rejected"]:
            code = REJECTED
        self.summary = self.report.summary(complete=code in (OK, REJECTED), exit_code=code, error=error)
        self.report.write(opts.report_path, self.summary)
        self.report.close()
        return code

    def _run(self) -> bool:
        """Read, send and account for the whole file; True when interrupted."""
        opts = self.opts
        fmt = reader.detect_format(opts.path, opts.fmt)
        digest, lines = reader.fingerprint(opts.path)
        batch_id = opts.batch_id or reader.batch_id_for(digest)
        self.report.meta.update(format=fmt, sha256=digest, batchId=batch_id)
        self._base = {"batchId": batch_id, "kind": opts.kind, "currency": opts.currency,
                      "dryRun": opts.dry_run}
        validator = reader.Validator(check_digit=opts.check_digit, kind=opts.kind,
                                     cvc_length=get_settings().cvc_length)
        progress = _Progress(opts.progress, max(lines - (1 if fmt == "csv" else 0), 0), opts.dry_run)
        with progress, ThreadPoolExecutor(max(opts.workers, 1), thread_name_prefix="loader") as pool:
            try:
                if self._pump(pool, reader.read_rows(opts.path, fmt), validator, progress) or self._stop:
                    return True
                extra, dupes = validator.resolve_suspects(reader.read_rows(opts.path, fmt))
                self._apply(Chunk(rows=extra, local=dupes), self._send(extra) if extra else None, late=True)
            except KeyboardInterrupt:
                return True
        return False

    def _on_signal(self, signum, frame) -> None:
        """The first Ctrl-C / SIGTERM stops after the requests in flight; a second one at once."""
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        log.warning("stopping after the requests in flight (again to stop at once)")

    def _pump(self, pool: ThreadPoolExecutor, rows, validator, progress) -> bool:
        """Read, chunk and send; handle answers in order. True when stopped early."""
        inflight: collections.deque[tuple[Chunk, Future | None]] = collections.deque()
        sent = 0
        try:
            for chunk in self._chunks(rows, validator):
                if chunk.rows and (self._stop or (self.opts.max_chunks is not None
                                                  and sent >= self.opts.max_chunks)):
                    self._drain(inflight, progress)
                    self._apply(chunk, None, sent=False)
                    return True
                future = pool.submit(self._send, chunk.rows) if chunk.rows else None
                sent += future is not None
                inflight.append((chunk, future))
                while len(inflight) > self.opts.workers:
                    self._settle(*inflight.popleft(), progress)
            self._drain(inflight, progress)
        except BaseException:
            for _, future in inflight:
                if future is not None:
                    future.cancel()
            self._drain(inflight, progress, quiet=True)
            raise
        return False

    def _settle(self, chunk: Chunk, future: Future | None, progress) -> None:
        self._apply(chunk, future.result() if future is not None else None)
        progress.advance(chunk.read)

    def _drain(self, inflight, progress, quiet: bool = False) -> None:
        while inflight:
            chunk, future = inflight.popleft()
            if future is not None and future.cancelled():
                continue
            try:
                self._settle(chunk, future, progress)
            except Exception:
                if not quiet:
                    raise


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()




class _Progress:
    """A progress bar on stderr (rich), shown only on a terminal."""

    def __init__(self, enabled: bool, total: int, dry_run: bool):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            console = Console(stderr=True)
            if console.is_terminal:
                self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                    console=console, transient=False)
                self.task = self.bar.add_task("checking" if dry_run else "loading", total=total or None)

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)
