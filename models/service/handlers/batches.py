"""Loading the pool: the ``LoadBatch`` use case.

One ``POST /batches`` chunk is one transaction:

1. the batch row is created on first sight (who: the loader's client id; when), or checked
   against the kind and currency it was created with;
2. a code repeated inside the chunk is refused (``DUPLICATE_IN_BATCH``), the first one kept, and
   one whose ``expiresAt`` has passed (``EXPIRED``);
3. the codes are added as AVAILABLE (:func:`models.store.pool.insert`: a COPY, or a staging
   table when some exist already). Of the codes not inserted, those of the same batch count as
   ``alreadyLoaded``, those of another batch are refused ``DUPLICATE_CODE``;
4. refused codes are recorded once per batch (``certificate_batch_rejection``), the batch
   counters move by what is new, an audit row is written, and ``NOTIFY gcp_pool_refilled``
   wakes the paid orders waiting for the pool.

A dry run classifies the chunk the same way, and writes nothing.
"""
from __future__ import annotations

from models.domain.batch import DUPLICATE_CODE
from models.domain.commands import Context, LoadBatch
from models.domain.errors import DomainError
from models.domain.timeutil import utcnow
from models.service.unit_of_work import UnitOfWork
from models.store import pool as pool_store
from models.store.outbox import POOL_CHANNEL
from models.store.queries import refresh_pool_gauge
from models.store.tables import BatchRejection, CertificateBatch


def load_batch(cmd: LoadBatch, ctx: Context) -> dict:
    """Add codes to the pool as AVAILABLE in one transaction; the same codes again add nothing."""
    rows, rejected = pool_store.prepare(cmd.certificates, utcnow())
    with UnitOfWork(ctx) as uow:
        created = _ensure_batch(uow, cmd)
        if cmd.dry_run:
            not_inserted = pool_store.classify(rows)
        else:
            not_inserted = pool_store.insert(cmd.batch_id, cmd.kind, cmd.currency, rows, uow.now)
        unknown = [code for code, owner in not_inserted if owner is None]
        owners = pool_store.owners(unknown) if unknown else {}  # inserted meanwhile by a concurrent load
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
    if accepted and not cmd.dry_run:
        refresh_pool_gauge(max_age=30.0)
    return {"batchId": cmd.batch_id, "accepted": accepted, "alreadyLoaded": already, "rejected": rejected,
            "created": created or accepted > 0}


def _ensure_batch(uow: UnitOfWork, cmd: LoadBatch) -> bool:
    """Create the batch row on first sight (not in a dry run); True when it is new."""
    created = False
    if not cmd.dry_run:
        created = uow.execute(
            "INSERT INTO certificate_batch (batch_id, kind, currency, loaded_by, accepted, rejected, "
            "created_at, updated_at) VALUES (%s, %s, %s, %s, 0, 0, %s, %s) "
            "ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id",
            (cmd.batch_id, cmd.kind, cmd.currency, uow.ctx.actor, uow.now, uow.now)).fetchone() is not None
    if not created:
        batch = CertificateBatch.get_or_none(CertificateBatch.batch_id == cmd.batch_id)
        if batch is not None and (batch.kind != cmd.kind or batch.currency.strip() != cmd.currency):
            raise DomainError("BATCH_MISMATCH", "the batch exists with another kind or currency",
                              batchId=cmd.batch_id, kind=batch.kind, currency=batch.currency.strip())
        created = cmd.dry_run and batch is None
    return created


def _record(uow: UnitOfWork, cmd: LoadBatch, accepted: int, already: int, rejected: list[dict]) -> None:
    """Rejections once per batch and code, the batch counters, the audit row, the NOTIFY."""
    new_rejections = 0
    if rejected:
        first: dict[str, str] = {}
        for rejection in rejected:
            first.setdefault(rejection["code"], rejection["reason"])
        cursor = (BatchRejection.insert_many(
            [{"batch": cmd.batch_id, "code": code, "reason": why, "created_at": uow.now}
             for code, why in first.items()])
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
        uow.queue("SELECT pg_notify(%s, %s)", (POOL_CHANNEL, cmd.batch_id))  # delivered at commit


