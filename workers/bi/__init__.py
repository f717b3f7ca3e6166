"""BI: the certificate mart fed only from Kafka, its daily snapshots, report and reconciliation.

A worker process (``python -m workers.bi``, :mod:`workers.bi.__main__`) with its own library:

- :mod:`workers.bi.rules`: the mart's business rules (pure);
- :mod:`workers.bi.schema`: the ``bi`` schema and its connection (``BI_DATABASE_URL``);
- :mod:`workers.bi.mart`: one batch written into the mart, and the closing of days;
- :mod:`workers.bi.consumer`: the consumer loop;
- :mod:`workers.bi.metrics`: its Prometheus metrics and the port that serves them;
- :mod:`workers.bi.report`, :mod:`workers.bi.reconcile`, :mod:`workers.bi.cli`: ``report`` and
  ``reconcile``.
"""
