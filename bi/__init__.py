"""BI: the certificate mart fed only from Kafka, its daily snapshots, report and reconciliation.

- :mod:`bi.rules`: the mart's business rules (pure);
- :mod:`bi.schema`: the ``bi`` schema and its connection (``BI_DATABASE_URL``);
- :mod:`bi.consumer`: the consumer loop run by ``python -m workers.bi``;
- :mod:`bi.report`, :mod:`bi.reconcile`, :mod:`bi.cli`: ``report`` and ``reconcile``.
"""
