"""Where the model is kept: PostgreSQL (``db``, ``tables``, ``migrations/``), the loading of domain
objects (``repository``), the channels' orders (``orders``), the pool's loading and low-water
state (``pool``), the read models (``queries``), the Redis cache (``cache``), the CVC's
hashing and sealing (``cvc``), the per-client CVC budget (``cvc_budget``), and what the
long-running processes read and write beside the use cases: the outbox and the NOTIFY channels
(``outbox``), the DLQ's replays (``dlq``), heartbeats and outages in Redis (``liveness``), and
the HTTP edge's ``Idempotency-Key`` rows (``idempotency``). Imports only the domain."""
