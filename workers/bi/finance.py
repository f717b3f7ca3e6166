"""Finance's pure rules over the mart: the liability roll-forward's lines, and the aging of
the outstanding balance. Standard library only, no I/O."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

from workers.bi.rules import REDEMPTIONS

# ---- the liability roll-forward -----------------------------------------------------------

#: The roll-forward's lines, in the order a finance user reads them: what adds to the liability,
#: then what takes from it. Each is the sum of the liability's movement of the events of its kind.
FLOWS_IN = ("sold", "refunded_cert", "adjust_credit", "transfer_in")
FLOWS_OUT = ("redeemed", "refunded_buyer", "expired", "cancelled", "adjust_debit", "transfer_out")
#: A movement of no known kind (it should never happen; ``reconcile`` reports it).
OTHER_FLOW = "other"


def flow_of(event_type: str, liability_delta: Decimal) -> str | None:
    """The roll-forward line an event's movement of the liability belongs to (None: it moves
    nothing). The line is chosen by the event's type, and by the movement's sign for the types
    that may go either way (a refund onto a certificate or to the buyer, an adjustment, the two
    sides of a transfer)."""
    if not liability_delta:
        return None
    up = liability_delta > 0
    if event_type == "issue":
        return "sold"
    if event_type in REDEMPTIONS:
        return "redeemed"
    if event_type == "refund":
        return "refunded_cert" if up else "refunded_buyer"
    if event_type == "adjust":
        return "adjust_credit" if up else "adjust_debit"
    if event_type == "transfer":
        return "transfer_in" if up else "transfer_out"
    if event_type == "expire":
        return "expired"
    if event_type == "cancel":
        return "cancelled"
    return OTHER_FLOW


# ---- aging ----------------------------------------------------------------------------------

#: Aging buckets: (label, up to this many days; None: no bound).
AGING_BUCKETS = (("0-3 months", 91), ("3-12 months", 365), ("1-3 years", 3 * 365 + 1), ("over 3 years", None))


def age_bucket(since: dt.datetime | None, as_of: dt.datetime) -> str:
    """The aging bucket of something that happened at ``since``, seen at ``as_of`` (unknown:
    the oldest bucket, so nothing is made to look fresher than it is)."""
    if since is None:
        return AGING_BUCKETS[-1][0]
    days = (as_of - since).total_seconds() / 86400
    for label, bound in AGING_BUCKETS:
        if bound is None or days < bound:
            return label
    return AGING_BUCKETS[-1][0]
