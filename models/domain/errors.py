"""The one error of the domain: a refused operation, with the contract's error code."""
from __future__ import annotations


class DomainError(Exception):
    """A refused operation: ``code`` is the contract's error code (api/errors.py maps it to an
    HTTP status)."""

    def __init__(self, code: str, message: str, /, **details):  # details may hold a "code"
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
