"""CVC key rotation: re-seal the stored CVCs made with a retired key (``python app.py
rotate-cvc-key``).

A row with an encrypted copy (a notification not yet confirmed) is decrypted with the key it
was made with and sealed again, hash and copy, with ``CVC_ENCRYPTION_KEY``. A row that keeps
only the hash cannot be re-hashed without its CVC: it is counted, and re-sealed at its next
correct CVC (``models.service.handlers.holds.authorize``), so its key stays in ``CVC_OLD_KEYS`` until then.
Rows are locked one batch at a time (``SKIP LOCKED``): the service keeps running meanwhile.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.service.unit_of_work import UnitOfWork
from models.store import cvc
from models.store.tables import GiftCertificate


@dataclass
class RotationResult:
    key_id: str
    resealed: int = 0
    hash_only: int = 0
    unreadable: int = 0


def rotate_cvc_keys(batch: int = 1000) -> RotationResult:
    current = cvc.current_key_id()
    result = RotationResult(current)
    last_id = 0
    stale = ((GiftCertificate.cvc_key_id.is_null() | (GiftCertificate.cvc_key_id != current))
             & GiftCertificate.cvc_hash.is_null(False))
    while True:
        with UnitOfWork():
            rows = list(GiftCertificate.select()
                        .where(stale & GiftCertificate.cvc_encrypted.is_null(False)
                               & (GiftCertificate.id > last_id))
                        .order_by(GiftCertificate.id).limit(batch).for_update(skip_locked=True))
            if not rows:
                break
            for row in rows:
                last_id = row.id
                secret = cvc.decrypt(row.cvc_encrypted)
                if secret is None or not cvc.matches(row.code, secret, row.cvc_hash, row.cvc_key_id):
                    result.unreadable += 1
                    continue
                (GiftCertificate.update(**cvc.sealed(row.code, secret))
                 .where(GiftCertificate.id == row.id).execute())
                result.resealed += 1
    result.hash_only = (GiftCertificate.select()
                        .where(stale & GiftCertificate.cvc_encrypted.is_null()).count())
    return result
