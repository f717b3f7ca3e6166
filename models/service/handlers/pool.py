"""Loading the pool: the ``LoadBatch`` use case, the low-water alert, and the pool gauge.

One ``POST /batches`` chunk is one transaction:

1. the batch row is created on first sight (who: the loader's client id; when), or checked
   against the kind and currency it was created with;
2. a code repeated inside the chunk is refused (``DUPLICATE_IN_BATCH``), the first one kept;
3. fast path: the chunk is COPYed straight into ``gift_certificate`` inside a savepoint, so a
   fresh chunk (the common case) costs what a plain ``COPY`` costs;
4. when a code already exists (a chunk sent again after an interruption, or a code of another
   batch) the savepoint is rolled back and the chunk goes through a temporary staging table:
   ``INSERT ... SELECT ... ON CONFLICT (code) DO NOTHING RETURNING code``. Only the codes not
   inserted are looked up, through the unique index (never a scan of the table): those of the
   same batch count as ``alreadyLoaded``, those of another batch are refused ``DUPLICATE_CODE``;
5. refused codes are recorded once per batch (``certificate_batch_rejection``), the batch
   counters move by what is new, an audit row is written, and ``NOTIFY gcp_pool_refilled``
   wakes the paid orders waiting for the pool.

A dry run stages the chunk and classifies it with the same lookup, and writes nothing.

The reservation path calls :func:`check_low_water`, which raises one ``alert``
(``POOL_LOW_WATER``) when a pool segment falls below ``POOL_LOW_WATER_MARK``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import threading
import time
from decimal import Decimal

import psycopg2.errors
from peewee import IntegrityError

from config import get_settings
from models.domain import locks
from models.domain.certificate import Certificate
from models.domain.commands import ExpireCertificate, ExpireReservation, Issue, LoadBatch, Release, Reserve
from models.domain.errors import DomainError
from models.domain.events import Event
from models.domain.money import ZERO, fmt_money
from models.domain.policy import issue_expiry, loadable_expiry, reservation_lapsed
from models.domain.states import EventType, Status
from models.domain.timeutil import iso, utcnow
from models.service.unit_of_work import POOL_CHANNEL, Context, Deferred, UnitOfWork, change_certificate, run
from models.store import cvc as cvc_secret
from models.store.db import db
from models.store.queries import pool_summary
from models.store.repository import order_line, payment_seen, pick_available, snapshot, to_domain
from models.store.tables import BatchRejection, CertificateBatch, GiftCertificate, PoolLowWater
from observability import POOL_AVAILABLE

log = logging.getLogger("gcp.batches")

#: Why a code of a batch is refused (``rejected[].reason``).
DUPLICATE_CODE = "DUPLICATE_CODE"            # the code belongs to another batch
DUPLICATE_IN_BATCH = "DUPLICATE_IN_BATCH"    # the code appears earlier in the same request
EXPIRED = "EXPIRED"                          # its expiresAt has already passed
REASON_MESSAGES = {
    DUPLICATE_CODE: "the code was already loaded by another batch",
    DUPLICATE_IN_BATCH: "the code appears earlier in this request",
    EXPIRED: "its expiresAt has already passed",
}
#: The alert raised when a pool segment falls below the low-water mark.
LOW_WATER_ALERT = "POOL_LOW_WATER"
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


def _copy_text(value: str) -> str:
    """Escape a value for COPY's text format (codes and money never need it; ids might)."""
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def _prepare(cmd: LoadBatch, now: dt.datetime) -> tuple[list[tuple[str, str, str, str]], list[dict]]:
    """The chunk's rows as COPY fields ``(code, nominal, expires_at, cvc_hash\tcvc_key_id)``,
    the first of each code kept; the repeats are refused ``DUPLICATE_IN_BATCH``, a code whose
    ``expiresAt`` has passed ``EXPIRED``. A printed card's CVC is kept only as its keyed hash:
    the plain CVC goes no further than here."""
    seen: set[str] = set()
    rows: list[tuple[str, str, str, str]] = []
    key_id = cvc_secret.current_key_id()
    no_cvc = f"{_NULL}\t{_NULL}"
    rejected: list[dict] = []
    money: dict = {None: _NULL}
    times: dict = {None: _NULL}
    for item in cmd.certificates:
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


def _stage(cursor, rows: list[tuple[str, str, str]]) -> None:
    cursor.execute(_CREATE_STAGE)
    cursor.execute(f"TRUNCATE {STAGE}")
    cursor.copy_expert(_COPY_STAGE, io.StringIO("".join(f"{c}\t{n}\t{e}\t{h}\n" for c, n, e, h in rows)))


def _copy_direct(cursor, cmd: LoadBatch, rows: list[tuple[str, str, str]], now: dt.datetime) -> bool:
    """COPY the rows straight into the table in a savepoint; False (and nothing written) when a
    code already exists."""
    batch = _copy_text(cmd.batch_id)
    stamp = now.isoformat()
    fixed = f"\t{batch}\t{cmd.kind}\t{cmd.currency}\t"
    tail = "\t0\tAVAILABLE\t"
    end = f"\t{stamp}\t{stamp}\n"
    text = "".join(f"{c}{fixed}{'t' if n == _NULL else 'f'}\t{n}{tail}{e}\t{h}{end}" for c, n, e, h in rows)
    try:
        with db.atomic():  # a savepoint (a fresh cursor sends it first: see models.store.db)
            db.cursor().copy_expert(_COPY_DIRECT, io.StringIO(text))
    except psycopg2.errors.UniqueViolation:
        return False
    return True


def _owners(codes: list[str]) -> dict[str, str]:
    cursor = db.execute_sql("SELECT code, batch_id FROM gift_certificate WHERE code = ANY(%s)",
                            (codes,))
    return dict(cursor.fetchall())


def _ensure_batch(cmd: LoadBatch, ctx: Context, now: dt.datetime) -> bool:
    """Create the batch row on first sight (not in a dry run); True when it is new."""
    created = False
    if not cmd.dry_run:
        created = db.execute_sql(
            "INSERT INTO certificate_batch (batch_id, kind, currency, loaded_by, accepted, rejected, "
            "created_at, updated_at) VALUES (%s, %s, %s, %s, 0, 0, %s, %s) "
            "ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
            (cmd.batch_id, cmd.kind, cmd.currency, ctx.actor, now, now)).fetchone() is not None
    if not created:
        batch = CertificateBatch.get_or_none(CertificateBatch.batch_id == cmd.batch_id)
        if batch is not None and (batch.kind != cmd.kind or batch.currency.strip() != cmd.currency):
            raise DomainError("BATCH_MISMATCH", "the batch exists with another kind or currency",
                              batchId=cmd.batch_id, kind=batch.kind, currency=batch.currency.strip())
        created = cmd.dry_run and batch is None
    return created


def load_batch(cmd: LoadBatch, ctx: Context) -> dict:
    """Add codes to the pool as AVAILABLE in one transaction; the same codes again add nothing."""
    rows, rejected = _prepare(cmd, utcnow())

    def body(uow: UnitOfWork) -> dict:
        created = _ensure_batch(cmd, ctx, uow.now)
        cursor = db.cursor()
        not_inserted: list[tuple[str, str | None]] = []
        if cmd.dry_run:
            _stage(cursor, rows)
            cursor.execute(_CLASSIFY_STAGED)
            not_inserted = cursor.fetchall()
        elif rows and not (FAST_PATH and _copy_direct(cursor, cmd, rows, uow.now)):
            _stage(cursor, rows)
            cursor.execute(_INSERT_STAGED, {"batch": cmd.batch_id, "kind": cmd.kind,
                                            "currency": cmd.currency, "now": uow.now})
            not_inserted = cursor.fetchall()
        unknown = [code for code, owner in not_inserted if owner is None]
        owners = _owners(unknown) if unknown else {}  # inserted meanwhile by a concurrent load
        already = 0
        for code, owner in not_inserted:
            owner = owner or owners.get(code)
            if owner == cmd.batch_id:
                already += 1
            else:
                rejected.append({"code": code, "reason": DUPLICATE_CODE})
        accepted = len(rows) - len(not_inserted)
        if not cmd.dry_run:
            _record(uow, cmd, accepted, already, rejected)
        return {"batchId": cmd.batch_id, "accepted": accepted, "alreadyLoaded": already, "rejected": rejected,
                "created": created or accepted > 0}

    result = run(ctx, body)
    if result["accepted"] and not cmd.dry_run:
        refresh_pool_gauge(max_age=30.0)
    return result


def _record(uow: UnitOfWork, cmd: LoadBatch, accepted: int, already: int,
            rejected: list[dict]) -> None:
    """Rejections once per batch and code, the batch counters, the audit row, the NOTIFY."""
    new_rejections = 0
    if rejected:
        first = {}
        for r in rejected:
            first.setdefault(r["code"], r["reason"])
        cursor = (BatchRejection.insert_many(
            [{"batch": cmd.batch_id, "code": c, "reason": why, "created_at": uow.now}
             for c, why in first.items()])
            .on_conflict_ignore().returning(BatchRejection.code).execute())
        new_rejections = len(list(cursor))
    if accepted or new_rejections:
        (CertificateBatch.update(accepted=CertificateBatch.accepted + accepted,
                                 rejected=CertificateBatch.rejected + new_rejections,
                                 updated_at=uow.now)
         .where(CertificateBatch.batch_id == cmd.batch_id).execute())
    uow.audit("batch.load", None, details={
        "batchId": cmd.batch_id, "accepted": accepted, "alreadyLoaded": already,
        "rejected": len(rejected)})
    if accepted:
        db.execute_sql("SELECT pg_notify(%s, %s)", (POOL_CHANNEL, cmd.batch_id))


def segment_key(currency: str, kind: str, nominal: Decimal | None) -> str:
    """A pool segment as ``RUB/ELECTRONIC/1500.00`` (``.../OPEN`` for open-value codes)."""
    return f"{currency}/{kind}/{fmt_money(nominal) if nominal is not None else 'OPEN'}"


def check_low_water(uow: UnitOfWork, row) -> None:
    """After ``row`` left the pool (same transaction): raise one ``alert`` when its segment
    (currency, kind, nominal or open value, as in ``GET /pool``) falls below the low-water mark.

    The count stops at the mark (an index range of at most ``mark`` entries, never the whole
    pool). It runs under a per-segment transaction lock, so of concurrent reservations each
    counts after the previous ones committed, and the last one sees the final count: a crossing
    is never missed. ``pool_low_water`` remembers that the alert was raised; the segment is
    armed again once a reservation sees it at or above the mark (after a refill or releases).
    """
    mark = get_settings().pool_low_water_mark
    if mark <= 0:
        return
    nominal = None if row.open_value else row.nominal
    currency = row.currency.strip()
    segment = segment_key(currency, row.kind, nominal)
    db.execute_sql("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (locks.LOW_WATER, segment))
    where = "nominal IS NULL AND open_value" if nominal is None else "nominal = %s"
    params = [currency, row.kind] + ([] if nominal is None else [nominal]) + [row.id, mark]
    left = db.execute_sql(
        # in pool order: the first ``mark`` entries of the pool's index (unordered, the planner
        # read the table from its start, past every certificate sold: migration 0007)
        "SELECT count(*) FROM (SELECT 1 FROM gift_certificate WHERE status = 'AVAILABLE' "
        f"AND currency = %s AND kind = %s AND {where} AND id <> %s ORDER BY created_at, id LIMIT %s) t",
        params).fetchone()[0]
    state = PoolLowWater.get_or_none(PoolLowWater.segment == segment)
    if left < mark and not (state is not None and state.low):
        flipped = db.execute_sql(
            "INSERT INTO pool_low_water (segment, low, changed_at) VALUES (%s, true, %s) "
            "ON CONFLICT (segment) DO UPDATE SET low = true, changed_at = EXCLUDED.changed_at "
            "WHERE NOT pool_low_water.low RETURNING segment", (segment, uow.now)).fetchone()
        if flipped is not None:
            label = f"{fmt_money(nominal) or 'open value'} {currency} {row.kind}"
            uow.emit(Event(EventType.ALERT, "ALERT", {
                "code": LOW_WATER_ALERT, "source": "GCP",
                "message": f"{left} certificate(s) left in the pool for {label}, below the "
                           f"low-water mark {mark}",
                "currency": currency, "kind": row.kind, "nominal": fmt_money(nominal),
                "available": left, "lowWaterMark": mark}), None, key=f"pool:{segment}")
    elif left >= mark and state is not None and state.low:
        (PoolLowWater.update(low=False, changed_at=uow.now)
         .where((PoolLowWater.segment == segment) & PoolLowWater.low).execute())


_gauge_lock = threading.Lock()
_gauge_at = 0.0


def set_pool_gauge(available: int) -> None:
    global _gauge_at
    POOL_AVAILABLE.set(available)
    _gauge_at = time.monotonic()


def refresh_pool_gauge(max_age: float = 0.0) -> None:
    """Count the AVAILABLE certificates into ``gcp_pool_available`` (at most every ``max_age`` s)."""
    if time.monotonic() - _gauge_at < max_age or not _gauge_lock.acquire(blocking=False):
        return
    try:
        count = db.execute_sql("SELECT count(*) FROM gift_certificate WHERE status = %s",
                               (Status.AVAILABLE.value,)).fetchone()[0]
        set_pool_gauge(count)
    except Exception:  # a gauge never fails the load it follows
        log.warning("pool gauge refresh failed", exc_info=True)
    finally:
        _gauge_lock.release()


def pool_view() -> dict:
    """``GET /pool``: the AVAILABLE certificates by nominal, currency and kind (sets the gauge)."""
    summary = pool_summary()
    set_pool_gauge(summary["available"])
    return {**summary, "lowWaterMark": get_settings().pool_low_water_mark}


# ---- reservation, the sale, expiry


def reserve(cmd: Reserve, ctx: Context) -> dict:
    """Reserve the next pool certificate (or ``code``) for an order line.

    Returns the reservation with ``created``; the same order line again returns its
    certificate (``created`` false).
    """
    for _ in range(3):
        existing = order_line(cmd.channel, cmd.order_id, cmd.line_id)
        if existing is not None:
            return {**_reservation_view(existing), "created": False}
        try:
            return {**run(ctx, lambda uow: _reserve(uow, cmd)), "created": True}
        except IntegrityError:  # a concurrent call reserved this order line first
            continue
    raise DomainError("ALREADY_RESERVED", "order line is being reserved concurrently")


def _reserve(uow: UnitOfWork, cmd: Reserve) -> dict:
    if cmd.code is not None:
        row = pick_available(cmd.nominal, cmd.currency, None, cmd.code)
        if row is None:
            known = GiftCertificate.get_or_none(GiftCertificate.code == cmd.code)
            if known is None:
                raise DomainError("CERTIFICATE_NOT_FOUND", "no such certificate", code=cmd.code)
            raise DomainError("ALREADY_RESERVED", "certificate is not available",
                              status=known.status)
    else:
        row = pick_available(cmd.nominal, cmd.currency)
    if row is None:
        uow.emit(Event(EventType.ISSUE_BLOCKED, "ISSUE_BLOCKED", {
            "orderId": cmd.order_id, "lineId": cmd.line_id, "nominal": fmt_money(cmd.nominal),
            "currency": cmd.currency, "reason": "POOL_EMPTY"}), None, key=cmd.order_id)
        raise Deferred(DomainError("POOL_EMPTY", "no certificate available for this nominal",
                                   nominal=fmt_money(cmd.nominal), currency=cmd.currency))
    before = snapshot(row)
    cert = to_domain(row, ZERO)
    cert.reserve(cmd.nominal, cmd.currency)
    until = uow.now + dt.timedelta(seconds=get_settings().reservation_ttl_seconds)
    uow.save(row, cert, before, channel=cmd.channel, order_id=cmd.order_id, line_id=cmd.line_id,
             reserved_at=uow.now, reserved_until=until)
    check_low_water(uow, row)  # one `alert` when this takes the pool below the low-water mark
    return _reservation_view(row)


def _reservation_view(row: GiftCertificate) -> dict:
    return {"code": row.code, "status": row.status, "nominal": fmt_money(row.nominal),
            "currency": row.currency.strip(), "reservedUntil": iso(row.reserved_until),
            "orderId": row.order_id, "lineId": row.line_id, "channel": row.channel}


def release(cmd: Release, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        row, cert, before = uow.certificate(cmd.code, ZERO)
        cert.release(cmd.reason)
        uow.save(row, cert, before, channel=None, order_id=None, line_id=None, reserved_at=None,
                 reserved_until=None)
        return snapshot(row)
    return run(ctx, body)


def expire_reservation(cmd: ExpireReservation, ctx: Context) -> dict | None:
    """Give a lapsed reservation back to the pool, unless a payment was seen (then keep it for
    the issue). Returns the released certificate, or None when it stays as it is."""
    def body(uow: UnitOfWork) -> dict | None:
        row = uow.lock_certificate(cmd.code)
        if row.status != Status.RESERVED.value:
            return None
        if not reservation_lapsed(row.reserved_until, uow.now, payment_seen(row.order_id, row.channel)):
            return None
        uow.ctx = dataclasses.replace(uow.ctx, correlation_id=uow.ctx.correlation_id or row.order_id)
        before = snapshot(row)
        cert = to_domain(row, ZERO)
        cert.release("RESERVATION_EXPIRED")
        uow.save(row, cert, before, channel=None, order_id=None, line_id=None, reserved_at=None,
                 reserved_until=None)
        return snapshot(row)
    return run(ctx, body)


def issue(cmd: Issue, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        row = uow.lock_certificate(cmd.code)
        return issue_locked(uow, row, notify=cmd.notify)
    return run(ctx, body)


def issue_locked(uow: UnitOfWork, row: GiftCertificate, notify: bool = True) -> dict:
    """Issue an already locked, reserved row: CVC, balance, expiry, and the notification request."""
    before = snapshot(row)
    cert = to_domain(row, ZERO)
    cert.issue(issue_expiry(row.batch_expires_at, uow.now, get_settings().certificate_validity_days), notify)
    uow.save(row, cert, before, issued_at=uow.now, reserved_until=None, **sale_cvc(row, cert))
    return snapshot(row)


def sale_cvc(row: GiftCertificate, cert: Certificate) -> dict:
    """The CVC columns of a certificate being sold (or receiving a transfer): a physical card
    keeps the CVC printed under its scratch panel; any other gets a fresh CVC, and a sealed
    copy of it when the domain requested its notification to the buyer. Never logged."""
    extra: dict = {}
    if row.kind == "PHYSICAL" and row.cvc_hash:
        secret = None  # printed under the scratch panel: its hash came with the batch
    else:  # generated once, here (a physical card of a batch loaded without CVCs: unknowable)
        secret = cvc_secret.generate()
        extra.update(cvc_secret.hashed(row.code, secret))
    if cert.cvc_copy:
        extra.update(cvc_secret.sealed(row.code, secret))
    return extra


def expire_certificate(cmd: ExpireCertificate, ctx: Context) -> dict:
    return change_certificate(cmd.code, ctx, lambda uow, c: c.expire(uow.now), end_holds=True)
