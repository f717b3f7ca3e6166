"""What may be said of a secret-bearing value on a console, in a log or in the DLQ (no I/O)."""
from config import redact_url
from models.domain.errors import DomainError, failure_summary


def test_a_url_is_shown_without_its_password():
    assert redact_url("postgresql://gcp:s3cret@db:5432/gcp") == "postgresql://gcp:***@db:5432/gcp"
    assert redact_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_url("postgresql://gcp@db/gcp") == "postgresql://gcp@db/gcp"
    assert redact_url(None) is None


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


def test_a_failure_is_summarised_without_the_values_it_quotes():
    # given an error whose text quotes the message (a buyer's phone)
    summary = failure_summary(raised(ValueError("invalid literal for int(): '+7 999 000-11-22'")))
    # then only its class and where it was raised are said
    assert summary.startswith("ValueError at tests/unit/test_redaction.py:") and "999" not in summary
    # and a refusal keeps its code and message, which the domain writes without secrets
    refused = failure_summary(raised(DomainError("INVALID_STATE", "a fully redeemed certificate cannot be refunded")))
    assert refused.startswith("DomainError INVALID_STATE: a fully redeemed certificate cannot be refunded at ")
