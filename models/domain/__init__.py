"""The business rules of gift certificates. Pure: standard library only, no I/O, no clock (``now``
is passed in). Nothing else decides whether a transition or an amount is allowed.

- ``errors``: ``DomainError``, a refusal with the contract's error code; what a failure may say.
- ``money``: exact money, the money, currency and code patterns.
- ``policy``: the time rules (what enters the pool, lapsed reservations, expiry, who is notified).
- ``states``: statuses, the stream's event types, the transition table.
- ``events``: what the aggregate records (stream events, ledger entries) and how they are keyed.
- ``hold``: an authorization hold.
- ``adjustment``: support's corrections and their four eyes.
- ``certificate``, ``notification``: the certificate aggregate and its CVC notification lifecycle.
- ``order``: a channel's order and its payments, as their messages tell them.
- ``correlation``: the rules that correlate them (pure decisions); ``effects``: the actions
  decided, their outcomes and their stored keys.
- ``pool``: the pool's segments and its low-water alert; ``batch``: why a batch's code is refused.
- ``commands``: every command and the ``Context`` it is asked in, plain data. ``timeutil``:
  RFC 3339. ``locks``: advisory-lock keys.
"""
