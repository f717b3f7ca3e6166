"""The rules of a batch of pre-generated codes: why one of its codes is refused, in the words
``POST /batches`` answers with (``rejected[].reason`` and ``message``)."""
from __future__ import annotations

#: The code belongs to another batch.
DUPLICATE_CODE = "DUPLICATE_CODE"
#: The code appears earlier in the same request.
DUPLICATE_IN_BATCH = "DUPLICATE_IN_BATCH"
#: Its ``expiresAt`` has already passed (see ``policy.loadable_expiry``).
EXPIRED = "EXPIRED"
#: Every reason a code of a batch is refused, and what the answer says of it.
REASON_MESSAGES = {
    DUPLICATE_CODE: "the code was already loaded by another batch",
    DUPLICATE_IN_BATCH: "the code appears earlier in this request",
    EXPIRED: "its expiresAt has already passed",
}

