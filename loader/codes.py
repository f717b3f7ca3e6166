"""Certificate codes: random bodies from ``secrets`` and a Luhn mod 36 check character.

A generated code is ``PREFIX + BODY + CHECK``: the body is ``length`` characters drawn
uniformly from ``0-9A-Z`` (``length=15`` gives 77 bits, not guessable), the check character is
Luhn mod N with N = 36 over the whole code (prefix included, hyphens ignored), where ``0-9``
count 0..9 and ``A-Z`` count 10..35. It catches every single mistyped character and almost
every swap of two neighbours. The service does not require it (other teams load their own
codes); the loader checks it unless told ``--no-check-digit``.
"""
from __future__ import annotations

import re
import secrets
from typing import Iterator

#: The characters of a code body and of the check character, in Luhn mod 36 order.
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
N = len(ALPHABET)
#: The characters a prefix may use (the contract's code format).
PREFIX_PATTERN = r"^[A-Z0-9-]{0,24}$"
DEFAULT_PREFIX = "GC"
DEFAULT_LENGTH = 15
MIN_LENGTH, MAX_CODE = 8, 32

_VALUE = {ch: i for i, ch in enumerate(ALPHABET)}
#: Byte tables for Luhn: a character's value, and its doubled value (d >= N counts d // N + d % N).
#: Any other byte maps to 255, which no valid sum check can hide (it is refused before summing).
_SINGLE = bytes(_VALUE.get(chr(b), 255) for b in range(256))
_DOUBLE = bytes((2 * _VALUE[chr(b)]) // N + (2 * _VALUE[chr(b)]) % N if chr(b) in _VALUE else 255
                for b in range(256))
_VALID = re.compile(r"^[A-Z0-9-]*$")
# Random bytes -> characters without modulo bias: 252 = 7 * 36, bytes 252..255 are dropped.
_BYTE_TABLE = bytes(ord(ALPHABET[b % N]) if b < 252 else 0 for b in range(256))
_DROP = bytes(range(252, 256))
_PREFIX_RE = re.compile(PREFIX_PATTERN)


def _luhn_sum(chars: bytes, double_last: bool) -> int:
    """Luhn sum of ``chars`` (0-9A-Z only), doubling every second one from the right, starting
    with the last one if ``double_last`` (computing a check) or the one before (verifying)."""
    rev = chars[::-1]
    doubled, single = (rev[0::2], rev[1::2]) if double_last else (rev[1::2], rev[0::2])
    return sum(single.translate(_SINGLE)) + sum(doubled.translate(_DOUBLE))


def check_char(payload: str) -> str:
    """The check character to append to ``payload`` (``A-Z0-9-``; hyphens are ignored).

    Raises:
        ValueError: ``payload`` has a character outside ``A-Z0-9-``.
    """
    if not _VALID.fullmatch(payload):
        raise ValueError(f"{payload!r} has a character outside A-Z, 0-9, -")
    total = _luhn_sum(payload.encode("ascii").replace(b"-", b""), double_last=True)
    return ALPHABET[(N - total % N) % N]


def has_valid_check(code: str, known_format: bool = False) -> bool:
    """True when the last character of ``code`` is the Luhn mod 36 check of the rest
    (``known_format``: the caller already matched the code format, skip that)."""
    if not known_format and not _VALID.fullmatch(code):
        return False
    chars = code.encode("ascii")
    if 45 in chars:  # "-"
        chars = chars.replace(b"-", b"")
    return len(chars) >= 2 and _luhn_sum(chars, double_last=False) % N == 0


def _random_chars(count: int) -> str:
    """``count`` characters drawn uniformly from :data:`ALPHABET` by ``secrets``."""
    out, have = [], 0
    while have < count:
        raw = secrets.token_bytes((count - have) * 256 // 252 + 16).translate(_BYTE_TABLE, _DROP)
        out.append(raw.decode("ascii"))
        have += len(raw)
    return "".join(out)[:count]


def check_prefix(prefix: str, length: int) -> None:
    """Raises ValueError unless ``prefix`` + ``length`` random characters + check fit the format."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"prefix {prefix!r}: up to 24 characters of A-Z, 0-9, -")
    if length < MIN_LENGTH:
        raise ValueError(f"length {length}: at least {MIN_LENGTH} random characters")
    if len(prefix) + length + 1 > MAX_CODE:
        raise ValueError(f"prefix + {length} random characters + check character is longer than {MAX_CODE}")


def generate(count: int, prefix: str = DEFAULT_PREFIX, length: int = DEFAULT_LENGTH,
             block: int = 65_536) -> Iterator[str]:
    """``count`` distinct codes ``prefix + random + check``, lazily.

    Distinctness is checked with 60-bit hashes (a few tens of bytes per code); on the rare
    hash collision the code is simply drawn again, so no duplicate can pass.
    """
    check_prefix(prefix, length)
    seen: set[int] = set()
    mask = (1 << 60) - 1
    made = 0
    while made < count:
        n = min(block, count - made)
        chars = _random_chars(n * length)
        for i in range(0, n * length, length):
            body = prefix + chars[i:i + length]
            key = hash(body) & mask
            if key in seen:
                continue
            seen.add(key)
            made += 1
            yield body + check_char(body)
