"""What correlating an order decides: the actions, their outcomes, and the key of each effect.

An effect is applied once per order, ever: its key is written to ``order_effect`` with its
outcome, and :func:`models.domain.correlation.decide` leaves out every key already there. The
key strings are stored, so their spelling never changes: :func:`effect_key` writes them and
:func:`parse_effect_key` reads them, nothing else does.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Action(enum.StrEnum):
    """What an effect does to an order's certificates (or says on the stream)."""

    ISSUE = "issue"                    # sell the line's certificate: the order is paid in full
    RELEASE = "release"                # the order was cancelled: its reservations go back
    REDEEM = "redeem"                  # a certificate tender was captured: debit it
    CONFIRM = "confirm"                # a tender names an API capture: check it, debit nothing
    REFUND_REQUEST = "refund_request"  # ORDER_REFUNDED for a sold line: REFUND_PENDING
    REFUND_DETAILS = "refund_details"  # Payments needs the buyer's requisites
    REFUND_CONFIRM = "refund_confirm"  # Payments gave the buyer's money back: REFUNDED
    REFUND_CREDIT = "refund_credit"    # a refund onto a certificate the order was paid with
    CURRENCY_ERROR = "currency_error"  # a capture in another currency: an ``error`` event
    ALERT = "alert"                    # support is told (``alert`` event)


class Outcome(enum.StrEnum):
    """How an applied effect ended (``order_effect.outcome``)."""

    APPLIED = "APPLIED"
    REFUSED = "REFUSED"   # the domain said no: an ``error`` event says why
    SKIPPED = "SKIPPED"   # nothing to do any more (the certificate moved on meanwhile)
    BLOCKED = "BLOCKED"   # the pool is empty: the line waits for a refill (``blocked_issue``)


#: The first part of each action's key (stored: never reworded).
_PREFIX = {action: action.value for action in Action} | {Action.CURRENCY_ERROR: "currency_mismatch"}
_ACTION_OF_PREFIX = {prefix: action for action, prefix in _PREFIX.items()}
#: How many parts follow the prefix: an alert names its kind; redeem and refund_credit the
#: certificate and the payment; release nothing; the others one id. The last part may hold ``:``.
_PARTS = {Action.RELEASE: 0, Action.REDEEM: 2, Action.REFUND_CREDIT: 2}


def effect_key(action: Action, *about: str) -> str:
    """The key of an effect: ``issue:<lineId>``, ``redeem:<code>:<paymentId>``,
    ``currency_mismatch:<paymentId>``, ``alert:<what>``, ``release``..."""
    if len(about) != _PARTS.get(action, 1):
        raise ValueError(f"{action} keys have {_PARTS.get(action, 1)} part(s), not {len(about)}")
    return ":".join((_PREFIX[action], *about))


def parse_effect_key(key: str) -> tuple[Action, tuple[str, ...]] | None:
    """The action and the parts of a stored key (None: not a key :func:`effect_key` writes)."""
    prefix, _, rest = key.partition(":")
    action = _ACTION_OF_PREFIX.get(prefix)
    if action is None:
        return None
    count = _PARTS.get(action, 1)
    return action, (tuple(rest.split(":", count - 1)) if count else ())


@dataclass(frozen=True)
class Decision:
    """An effect to apply. ``cause`` is the eventId it derives from (None: the current one)."""

    key: str
    action: Action
    params: dict = field(default_factory=dict)
    cause: str | None = None
