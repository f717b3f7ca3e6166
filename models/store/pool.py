"""The pool's storage: loading a batch's codes, and a segment's low-water count and state.

Loading (one ``POST /batches`` chunk, in the caller's transaction):

- fast path: the chunk is COPYed straight into ``gift_certificate`` inside a savepoint, so a
  fresh chunk (the common case) costs what a plain ``COPY`` costs;
- when a code already exists (a chunk sent again after an interruption, or a code of another
  batch) the savepoint is rolled back and the chunk goes through a temporary staging table:
  ``INSERT ... SELECT ... ON CONFLICT (code) DO NOTHING RETURNING code``. Only the codes not
  inserted are looked up, through the unique index (never a scan of the table);
- a dry run stages the chunk and classifies it with the same lookup, and writes nothing.
"""
from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import psycopg2.errors

from models.domain import locks
from models.domain.batch import DUPLICATE_IN_BATCH, EXPIRED
from models.domain.money import fmt_money
from models.domain.policy import loadable_expiry
from models.store import cvc as cvc_secret
from models.store.db import db

#: Per-connection staging table of the slow path (emptied at every commit).
STAGE = "gcp_batch_stage"
_COLUMNS = ("code, batch_id, kind, currency, open_value, nominal, remaining_balance, status, "
            "batch_expires_at, cvc_hash, cvc_key_id, created_at, updated_at")
_COPY_DIRECT = f"COPY gift_certificate ({_COLUMNS}) FROM STDIN"
_COPY_STAGE = f"COPY {STAGE} (code, nominal, expires_at, cvc_hash, cvc_key_id) FROM STDIN"
_CREATE_STAGE = (f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (code text, nominal numeric(14, 2), "
                 "expires_at timestamptz, cvc_hash text, cvc_key_id text) ON COMMIT DELETE ROWS")
_INSERT_STAGED = f"""
WITH ins AS (
    INSERT INTO gift_certificate ({_COLUMNS})
    SELECT s.code, %(batch)s, %(kind)s, %(currency)s, s.nominal IS NULL, s.nominal, 0,
           'AVAILABLE', s.expires_at, s.cvc_hash, s.cvc_key_id, %(now)s, %(now)s
    FROM {STAGE} s
    ON CONFLICT (code) DO NOTHING
    RETURNING code)
SELECT s.code, (SELECT g.batch_id FROM gift_certificate g WHERE g.code = s.code)
FROM {STAGE} s WHERE s.code NOT IN (SELECT code FROM ins)"""
_CLASSIFY_STAGED = (f"SELECT s.code, g.batch_id FROM {STAGE} s "
                    "JOIN gift_certificate g ON g.code = s.code")
#: Set False to always take the staging path (tests do, to cover it on fresh chunks).
FAST_PATH = True
_NULL = "\\N"
#: A chunk's row as COPY fields: ``(code, nominal, expires_at, "cvc_hash\tcvc_key_id")``.
Row = tuple[str, str, str, str]


def _copy_text(value: str) -> str:
    """Escape a value for COPY's text format (codes and money never need it; ids might)."""
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def prepare(certificates, now: dt.datetime) -> tuple[list[Row], list[dict]]:
    """The chunk's rows as COPY fields, the first of each code kept; the repeats are refused
    ``DUPLICATE_IN_BATCH``, a code whose ``expiresAt`` has passed ``EXPIRED``. A printed card's
    CVC is kept only as its keyed hash: the plain CVC goes no further than here."""
    seen: set[str] = set()
    rows: list[Row] = []
    key_id = cvc_secret.current_key_id()
    no_cvc = f"{_NULL}\t{_NULL}"
    rejected: list[dict] = []
    money: dict = {None: _NULL}
    times: dict = {None: _NULL}
    for item in certificates:
        code = item["code"]
        if code in seen:
            rejected.append({"code": code, "reason": DUPLICATE_IN_BATCH})
            continue
        seen.add(code)
        nominal = item.get("nominal")
        text = money.get(nominal)
        if text is None:
            text = money[nominal] = fmt_money(Decimal(nominal))
        expires = item.get("expiresAt")
        if isinstance(expires, dt.datetime) and not loadable_expiry(expires, now):
            rejected.append({"code": code, "reason": EXPIRED})
            continue
        when = times.get(expires)
        if when is None:
            when = times[expires] = (expires.astimezone(dt.timezone.utc).isoformat()
                                     if isinstance(expires, dt.datetime) else _copy_text(str(expires)))
        printed = item.get("cvc")
        sealed = f"{cvc_secret.digest(code, printed)}\t{key_id}" if printed else no_cvc
        rows.append((code, text, when, sealed))
    return rows, rejected


def _stage(cursor, rows: list[Row]) -> None:
    cursor.execute(_CREATE_STAGE)
    cursor.execute(f"TRUNCATE {STAGE}")
    cursor.copy_expert(_COPY_STAGE, io.StringIO("".join(f"{c}\t{n}\t{e}\t{h}\n" for c, n, e, h in rows)))


def _copy_direct(batch_id: str, kind: str, currency: str, rows: list[Row], now: dt.datetime) -> bool:
    """COPY the rows straight into the table in a savepoint; False (and nothing written) when a
    code already exists."""
    batch = _copy_text(batch_id)
    stamp = now.isoformat()
    fixed = f"\t{batch}\t{kind}\t{currency}\t"
    tail = "\t0\tAVAILABLE\t"
    end = f"\t{stamp}\t{stamp}\n"
    text = "".join(f"{c}{fixed}{'t' if n == _NULL else 'f'}\t{n}{tail}{e}\t{h}{end}" for c, n, e, h in rows)
    try:
        with db.atomic():  # a savepoint: a code that exists undoes the whole COPY, nothing else
            db.cursor().copy_expert(_COPY_DIRECT, io.StringIO(text))
    except psycopg2.errors.UniqueViolation:
        return False
    return True


def insert(batch_id: str, kind: str, currency: str, rows: list[Row], now: dt.datetime
           ) -> list[tuple[str, str | None]]:
    """Add the rows to the pool as AVAILABLE; returns those not inserted, each with the batch
    that holds its code (None: inserted meanwhile by a concurrent load, see :func:`owners`)."""
    if not rows or (FAST_PATH and _copy_direct(batch_id, kind, currency, rows, now)):
        return []
    cursor = db.cursor()
    _stage(cursor, rows)
    cursor.execute(_INSERT_STAGED, {"batch": batch_id, "kind": kind, "currency": currency, "now": now})
    return cursor.fetchall()


def classify(rows: list[Row]) -> list[tuple[str, str | None]]:
    """A dry run: the rows that :func:`insert` would not insert, with the batch holding each."""
    cursor = db.cursor()
    _stage(cursor, rows)
    cursor.execute(_CLASSIFY_STAGED)
    return cursor.fetchall()


def owners(codes: list[str]) -> dict[str, str]:
    """The batch of each code, through the unique index."""
    cursor = db.execute_sql("SELECT code, batch_id FROM gift_certificate WHERE code = ANY(%s)", (codes,))
    return dict(cursor.fetchall())


# ---- the low-water mark of a segment

def lock_segment(segment: str) -> None:
    """Serialize the low-water counts of one segment until the end of the transaction."""
    db.execute_sql("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (locks.LOW_WATER, segment))


def available_up_to(currency: str, kind: str, nominal: Decimal | None, leaving_id: int, mark: int) -> int:
    """The certificates left AVAILABLE in a segment besides ``leaving_id``, counted up to
    ``mark``: an index range of at most ``mark`` entries, never the whole pool."""
    where = "nominal IS NULL AND open_value" if nominal is None else "nominal = %s"
    params = [currency, kind] + ([] if nominal is None else [nominal]) + [leaving_id, mark]
    return db.execute_sql(
        # in pool order: the first ``mark`` entries of the pool's index (unordered, the planner
        # read the table from its start, past every certificate sold: migration 0007)
        "SELECT count(*) FROM (SELECT 1 FROM gift_certificate WHERE status = 'AVAILABLE' "
        f"AND currency = %s AND kind = %s AND {where} AND id <> %s ORDER BY created_at, id LIMIT %s) t",
        params).fetchone()[0]


def segment_level(currency: str, kind: str, nominal: Decimal | None, besides_id: int | None
                  ) -> tuple[int, dt.datetime]:
    """The certificates AVAILABLE in a segment besides ``besides_id`` (the one changing, whose
    update is still queued), and the database's clock at the count. Call it under
    :func:`lock_segment`, so the counts of one segment follow the order of their commits."""
    where = "nominal IS NULL AND open_value" if nominal is None else "nominal = %s"
    params = [currency, kind] + ([] if nominal is None else [nominal]) + [besides_id or 0]
    return db.execute_sql(
        "SELECT count(*), clock_timestamp() FROM gift_certificate WHERE status = 'AVAILABLE' "
        f"AND currency = %s AND kind = %s AND {where} AND id <> %s", params).fetchone()


def is_low(segment: str) -> bool:
    """The segment's low-water alert was raised and it was not armed again since."""
    row = db.execute_sql("SELECT low FROM pool_low_water WHERE segment = %s", (segment,)).fetchone()
    return row is not None and row[0]


def mark_low(segment: str, now: dt.datetime) -> bool:
    """Remember the segment fell below the mark; False when another transaction did first."""
    return db.execute_sql(
        "INSERT INTO pool_low_water (segment, low, changed_at) VALUES (%s, true, %s) "
        "ON CONFLICT (segment) DO UPDATE SET low = true, changed_at = EXCLUDED.changed_at "
        "WHERE NOT pool_low_water.low RETURNING segment", (segment, now)).fetchone() is not None


def rearm(segment: str, now: dt.datetime) -> None:
    """The segment is at or above the mark again: its next fall raises the alert again."""
    db.execute_sql("UPDATE pool_low_water SET low = false, changed_at = %s WHERE segment = %s AND low",
                   (now, segment))
