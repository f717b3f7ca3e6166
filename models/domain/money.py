"""Money as exact ``Decimal`` with two places, the contract's money, currency and code patterns."""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from models.domain.errors import DomainError

#: The contract's money format: a string with two decimals, at most 12 integer digits.
MONEY_PATTERN = r"^(0|[1-9][0-9]{0,11})\.[0-9]{2}$"
_MONEY_RE = re.compile(MONEY_PATTERN)
#: The same, above 0.00 (what :func:`positive_money` takes), for the API's documentation.
POSITIVE_MONEY_PATTERN = r"^(0\.(0[1-9]|[1-9][0-9])|[1-9][0-9]{0,11}\.[0-9]{2})$"
#: ISO 4217 alphabetic code.
CURRENCY_PATTERN = r"^[A-Z]{3}$"
#: A certificate code, as printed on the card.
CODE_PATTERN = r"^[A-Z0-9-]{6,32}$"
_CODE_RE = re.compile(CODE_PATTERN)
ZERO = Decimal("0.00")


def parse_money(value: object, name: str = "amount") -> Decimal:
    """Parse the contract's money string (``"1500.00"``) exactly; floats are refused."""
    if not isinstance(value, str) or not _MONEY_RE.fullmatch(value):
        raise DomainError("VALIDATION_ERROR", f"{name} must be a string like \"1500.00\"",
                          field=name)
    try:
        return Decimal(value)
    except InvalidOperation:  # pragma: no cover - the pattern already excludes it
        raise DomainError("VALIDATION_ERROR", f"{name} is not a number", field=name) from None


def positive_money(value: object, name: str = "amount") -> Decimal:
    amount = parse_money(value, name)
    if amount <= 0:
        raise DomainError("VALIDATION_ERROR", f"{name} must be greater than 0.00", field=name)
    return amount


def fmt_money(value: Decimal | None) -> str | None:
    """Format an amount as the contract's money string (``None`` stays ``None``)."""
    return None if value is None else f"{Decimal(value):.2f}"


def valid_code(code: object) -> bool:
    return isinstance(code, str) and bool(_CODE_RE.fullmatch(code))



def available_of(balance: Decimal, held: Decimal) -> Decimal:
    """What can still be spent: the balance less the active holds, never below zero."""
    return max(balance - held, ZERO)
