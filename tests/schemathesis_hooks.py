"""Schemathesis hooks (loaded by ``schemathesis.toml``): a client's side of the contract that
an OpenAPI schema cannot state.

An ``Idempotency-Key`` names one request: a client sends a new key with each new request, and
the same key only to retry that very request (the same key with another body is 422
IDEMPOTENCY_KEY_REUSED, by the contract). Generated cases reuse whatever valid value the
generator drew ("0", the documented example...), so before each call a valid key is replaced
by a fresh one, as a client would send. An invalid key (a negative case) is sent as drawn.
"""
import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and VALID_KEY.fullmatch(key):
        case.headers["Idempotency-Key"] = "st-" + uuid.uuid4().hex
