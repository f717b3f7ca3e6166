"""Reading a batch file (CSV or JSON Lines) row by row, and checking each row.

Nothing here holds the file: rows are read lazily, and duplicates inside the file are found
with a set of 60-bit hashes of the codes seen (about 60 bytes per code, so a million codes
take some 60 MB). A row whose hash was seen is held back as a *suspect*; a second, streaming
pass at the end (only when there are suspects) tells true duplicates, reported with the line
they repeat, from the astronomically rare hash collision, which is then loaded after all.

The format rules (code, money) are the service's own, from ``models.domain`` (pure, no I/O);
the check digit is the loader's (``loader.codes``).
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from loader import codes
from models.domain.errors import DomainError
from models.domain.money import CODE_PATTERN, positive_money
from models.domain.policy import loadable_expiry
from models.domain.timeutil import parse_time

#: The columns (CSV) or keys (JSON Lines) of a row; only ``code`` is required.
FIELDS = ("code", "nominal", "expiresAt", "cvc")
FORMATS = ("csv", "jsonl")

#: Reasons a row is refused by the loader (the service adds DUPLICATE_CODE).
INVALID_ROW = "INVALID_ROW"
INVALID_CODE = "INVALID_CODE"
INVALID_CHECK_DIGIT = "INVALID_CHECK_DIGIT"
INVALID_NOMINAL = "INVALID_NOMINAL"
INVALID_EXPIRES_AT = "INVALID_EXPIRES_AT"
INVALID_CVC = "INVALID_CVC"
EXPIRED = "EXPIRED"
DUPLICATE_IN_FILE = "DUPLICATE_IN_FILE"

_MASK = (1 << 60) - 1
_code_ok = re.compile(CODE_PATTERN).fullmatch  # the service's code rule (no trailing newline)


class FileError(Exception):
    """The file cannot be loaded at all (unknown format, bad header, not UTF-8)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    line: int
    code: str | None
    reason: str
    message: str

    def as_dict(self) -> dict:
        return {"line": self.line, "code": self.code, "reason": self.reason, "message": self.message}


#: A valid row: ``(line, code, values)``, ``values`` = ``(nominal, expiresAt, cvc)`` as they will
#: be sent (``"1500.00"`` or None; RFC 3339 UTC or None; a PHYSICAL card's printed CVC or None).
#: A plain tuple: a million of them go by, and rows with the same values share one ``values``.
Row = tuple


def detect_format(path: Path, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in FORMATS:
            raise FileError(f"unknown format {explicit!r}: one of {', '.join(FORMATS)}")
        return explicit
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".txt"):
        return "csv"
    raise FileError(f"cannot tell the format of {path.name}: name it .csv or .jsonl, or pass --format")


def fingerprint(path: Path) -> tuple[str, int]:
    """SHA-256 of the file's bytes and its number of lines (one streaming pass)."""
    digest, lines = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            lines += block.count(b"\n")
    return digest.hexdigest(), lines


def batch_id_for(digest: str) -> str:
    """The batch id of a file: its content, so the same file always resumes the same batch."""
    return "file-" + digest[:24]


# ---- raw rows -------------------------------------------------------------------------------

#: A raw row: (line, code, nominal, expiresAt, problem, cvc); ``problem`` = (reason, message) or None.
RawRow = tuple


def read_csv(lines: Iterable[str]) -> Iterator[RawRow]:
    """Rows of a CSV file with a header naming its columns (``code`` required)."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    names = [h.strip() for h in header]
    unknown = [n for n in names if n not in FIELDS]
    if "code" not in names or unknown or len(set(names)) != len(names):
        raise FileError(f"CSV header {','.join(names)!r}: expected the columns code[,nominal][,expiresAt][,cvc]"
                        + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    width = len(names)
    at = {name: names.index(name) for name in names}
    i_code, i_nominal, i_expires, i_cvc = at["code"], at.get("nominal"), at.get("expiresAt"), at.get("cvc")
    for row in reader:
        if not row:
            continue
        line = reader.line_num
        if len(row) != width:
            if len(row) == 1 and not row[0].strip():
                continue
            yield (line, row[i_code] if i_code < len(row) else None, None, None,
                   (INVALID_ROW, f"expected {width} fields, found {len(row)}"), None)
            continue
        nominal = row[i_nominal] if i_nominal is not None else ""
        expires = row[i_expires] if i_expires is not None else ""
        cvc = row[i_cvc] if i_cvc is not None else ""
        yield line, row[i_code] or None, nominal or None, expires or None, None, cvc or None


def read_jsonl(lines: Iterable[str]) -> Iterator[RawRow]:
    """Rows of a JSON Lines file: one object a line, ``{"code": ..., "nominal": ..., "expiresAt": ...}``."""
    for line, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            doc = json.loads(text)
        except ValueError:
            yield line, None, None, None, (INVALID_ROW, "not a JSON object"), None
            continue
        if not isinstance(doc, dict):
            yield line, None, None, None, (INVALID_ROW, "not a JSON object"), None
            continue
        unknown = sorted(set(doc) - set(FIELDS))
        code = doc.get("code")
        if unknown:
            yield (line, code if isinstance(code, str) else None, None, None,
                   (INVALID_ROW, f"unknown field(s): {', '.join(unknown)}"), None)
            continue
        yield line, code, doc.get("nominal"), doc.get("expiresAt"), None, doc.get("cvc")


def read_rows(path: Path, fmt: str) -> Iterator[RawRow]:
    """The raw rows of ``path``, streamed."""
    try:
        with open(path, newline="" if fmt == "csv" else None, encoding="utf-8-sig") as f:
            yield from (read_csv(f) if fmt == "csv" else read_jsonl(f))
    except UnicodeDecodeError as exc:
        raise FileError(f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start} of a block)") from None


# ---- checking rows ------------------------------------------------------------------------

def format_time(moment: dt.datetime) -> str:
    moment = moment.astimezone(dt.timezone.utc)
    fraction = f".{moment.microsecond:06d}" if moment.microsecond else ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


class Validator:
    """Checks rows one by one: format, check digit, nominal, expiry, duplicates in the file.

    Parameters:
        check_digit: require the Luhn mod 36 check character (``--no-check-digit`` turns it off).
        now: the time an ``expiresAt`` must be after.
    """

    def __init__(self, check_digit: bool = True, now: dt.datetime | None = None,
                 kind: str = "ELECTRONIC", cvc_length: int = 6):
        self.check_digit = check_digit
        self.kind = kind
        self.cvc_length = cvc_length
        self.now = now or dt.datetime.now(dt.timezone.utc)
        self.seen: set[int] = set()
        self.suspects: list[Row] = []
        self._values: dict = {}  # (nominal, expiresAt) as read -> as sent (shared tuples)

    def _check_values(self, line: int, code: str, nominal, expires) -> tuple | Rejection:
        """Check a (nominal, expiresAt) pair: the values to send, or why the row is refused."""
        if nominal is not None:
            try:
                positive_money(nominal, "nominal")
            except DomainError as exc:
                return Rejection(line, code, INVALID_NOMINAL, exc.message)
        when = None
        if expires is not None:
            try:
                moment = parse_time(expires) if isinstance(expires, str) else None
                if moment is None:
                    raise ValueError(expires)
            except (ValueError, OverflowError):
                return Rejection(line, code, INVALID_EXPIRES_AT,
                                 "expiresAt must be an RFC 3339 time like 2027-12-31T23:59:59Z")
            if not loadable_expiry(moment, self.now):
                return Rejection(line, code, EXPIRED, f"expiresAt {expires} has already passed")
            when = format_time(moment)
        self._values[(nominal, expires)] = values = (nominal, when, None)
        return values

    def check(self, raw: RawRow) -> Row | Rejection | None:
        """A valid row ``(line, code, values)``, a :class:`Rejection`, or None for a suspected
        duplicate (held back until :meth:`resolve_suspects`)."""
        line, code, nominal, expires, problem, *rest = raw
        cvc = rest[0] if rest else None
        if problem is not None:
            return Rejection(line, code if isinstance(code, str) else None, *problem)
        if type(code) is not str or not _code_ok(code):
            return Rejection(line, code if isinstance(code, str) else None, INVALID_CODE,
                             "the code is missing" if code is None else
                             "a code is 6 to 32 characters of A-Z, 0-9, -" if isinstance(code, str)
                             else "the code must be a string")
        if self.check_digit and not codes.has_valid_check(code, known_format=True):
            return Rejection(line, code, INVALID_CHECK_DIGIT, "the last character is not the code's "
                             "Luhn mod 36 check character (mistyped? or load with --no-check-digit)")
        try:
            values = self._values[(nominal, expires)]
        except (KeyError, TypeError):
            values = self._check_values(line, code, nominal, expires)
            if type(values) is not tuple:
                return values
        if self.kind == "PHYSICAL":  # the CVC printed under the scratch panel comes with the card
            if not (type(cvc) is str and len(cvc) == self.cvc_length and cvc.isascii() and cvc.isdigit()):
                return Rejection(line, code, INVALID_CVC, f"a PHYSICAL card needs its printed CVC: "
                                 f"{self.cvc_length} digits")
            values = values[:2] + (cvc,)
        elif cvc is not None:
            return Rejection(line, code, INVALID_CVC, "an ELECTRONIC certificate brings no CVC: "
                             "it is generated at issue")
        row = (line, code, values)
        key = hash(code) & _MASK
        if key in self.seen:
            self.suspects.append(row)
            return None
        self.seen.add(key)
        return row

    def resolve_suspects(self, rows: Iterable[RawRow]) -> tuple[list[Row], list[Rejection]]:
        """Second pass over the file for the held-back rows: the true duplicates (named with the
        line they repeat) and the rows that only shared a hash (to load after all)."""
        if not self.suspects:
            return [], []
        keys = {hash(row[1]) & _MASK for row in self.suspects}
        first: dict[str, int] = {}
        for raw in rows:
            code = raw[1]
            if isinstance(code, str) and (hash(code) & _MASK) in keys and code not in first:
                again = Validator(self.check_digit, self.now, self.kind, self.cvc_length)
                if type(again.check(raw)) is tuple:
                    first[code] = raw[0]
        load, dupes = [], []
        for row in self.suspects:
            line, code, _ = row
            origin = first.get(code, line)
            if origin < line:
                dupes.append(Rejection(line, code, DUPLICATE_IN_FILE, f"the same code as line {origin}"))
            else:
                load.append(row)
        self.suspects = []
        return load, dupes
