"""The business rules of gift certificates. Pure: standard library only, no I/O, no clock (``now``
is passed in). Nothing else decides whether a transition or an amount is allowed.

- ``errors``: ``DomainError``, a refusal with the contract's error code.
- ``money``: exact money, the money, currency and code patterns.
- ``policy``: the time rules (what enters the pool, lapsed reservations, expiry, who is notified).
- ``states``: statuses, the stream's event types, the transition table.
- ``events``: what the aggregate records (stream events, ledger entries) and how they are keyed.
- ``hold``: an authorization hold.
- ``adjustment``: support's corrections and their four eyes.
- ``certificate``, ``notification``: the certificate aggregate and its CVC notification lifecycle.
- ``correlation``: the channels' orders and payments, correlated (pure decisions).
- ``commands``: every command, plain data. ``timeutil``: RFC 3339. ``locks``: advisory-lock keys.
"""
