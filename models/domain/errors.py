"""The one error of the domain: a refused operation, with the contract's error code; and what a
failed attempt may say of itself."""
from __future__ import annotations

from pathlib import Path


class DomainError(Exception):
    """A refused operation: ``code`` is the contract's error code (api/errors.py maps it to an
    HTTP status)."""

    def __init__(self, code: str, message: str, /, **details):  # details may hold a "code"
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


#: The checkout (models/domain/errors.py): the lines of our own code a failure passed through.
_ROOT = Path(__file__).resolve().parents[2]


def failure_summary(error: BaseException) -> str:
    """What a failed attempt may say in the inbox row, the DLQ's ``error`` header and the log:
    the error's class, a refusal's code and message, a database error's SQLSTATE, constraint and
    table, and the line that raised it. Never the exception's own text: a driver's DETAIL
    ("Failing row contains ...") or a parser's message quotes the values of the message, such
    as the buyer's phone."""
    if isinstance(error, DomainError):
        text = f"{type(error).__name__} {error.code}: {error.message}"
    else:
        # Peewee re-raises psycopg2's error as its own, the original as its first argument
        driver = next((e for e in (error, error.__cause__, error.__context__, *error.args[:1])
                       if hasattr(e, "pgcode")), None)
        text = type(driver or error).__name__
        diag = getattr(driver, "diag", None)
        for label, value in (("SQLSTATE", getattr(driver, "pgcode", None)),
                             ("constraint", getattr(diag, "constraint_name", None)),
                             ("table", getattr(diag, "table_name", None))):
            if value:
                text += f" {label} {value}"
    ours = None  # the last line of this project's code the error passed through
    tb = error.__traceback__
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename)
        if _ROOT in path.parents and "site-packages" not in path.parts:
            ours = f"{path.relative_to(_ROOT)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return (text + (f" at {ours}" if ours else ""))[:1000]
