"""Helpers of the ``POST /batches`` tests (``test_batches_load.py``, ``test_batches_validation.py``,
``test_batches_pool.py``): post a chunk as the loader, build one of fresh codes, and read back its
certificates and its batch record."""
from models.store.db import db
from models.store.tables import CertificateBatch, GiftCertificate
from tests.helpers import uid, unique_code, unique_currency
from tests.integration.apikit import auth


def post(client, body, headers=None):
    return client.post("/batches", json=body, headers=headers or auth("batches:write", client_id="loader-t"))


def batch(n=3, currency=None, **extra):
    items = [{"code": unique_code("B"), "nominal": "500.00"} for _ in range(n)]
    return {"batchId": uid("b-"), "currency": currency or unique_currency(), "certificates": items, **extra}


def rows(codes):
    with db.connection_context():
        return {r.code: r for r in GiftCertificate.select().where(GiftCertificate.code.in_(codes))}


def record(batch_id):
    with db.connection_context():
        return CertificateBatch.get_or_none(CertificateBatch.batch_id == batch_id)
