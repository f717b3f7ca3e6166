"""The service's model, in three layers (lowest first; ``tests/unit/test_architecture.py`` holds
them to it):

- ``models.domain``: the pure rules (money, statuses and the transition table, the certificate
  aggregate, support's approvals, the correlation of orders, the commands). Standard library only.
- ``models.store``: PostgreSQL and Redis (tables, migrations, the repository, the read models,
  the cache, the CVC's sealing). Imports only the domain.
- ``models.service``: the use cases (the message bus, the unit of work, the handlers, the inbox,
  the scheduler's rounds). Entry points (``api``, ``actors``, ``workers``) call ``service.messagebus``.
"""
