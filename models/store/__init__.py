"""Where the model is kept: PostgreSQL (``db``, ``tables``, ``migrations/``), the loading of domain
objects (``repository``), the read models (``queries``), the Redis cache (``cache``), the CVC's
hashing and sealing (``cvc``) and the per-client CVC budget (``cvc_budget``). Imports only the
domain."""
