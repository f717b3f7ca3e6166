"""A pattern ending in `$` also matches before a trailing newline with re.match: every input
check must refuse "ABCDEF\\n" or "RUB\\n" instead of letting it reach the database (a 500)."""
import marshmallow as ma
import pytest

from api.fields import FullMatch
from models.domain.errors import DomainError
from models.domain.money import CODE_PATTERN, CURRENCY_PATTERN, parse_money, valid_code


@pytest.mark.parametrize("value", ["ABCDEF\n", "ABCDEF\r\n", "\nABCDEF", "ABC DEF"])
def test_codes_with_a_newline_or_space_are_invalid(value):
    assert not valid_code(value)
    assert valid_code("ABCDEF")


def test_money_with_a_trailing_newline_is_refused():
    with pytest.raises(DomainError) as err:
        parse_money("1500.00\n")
    assert err.value.code == "VALIDATION_ERROR"


@pytest.mark.parametrize("pattern, good", [(CURRENCY_PATTERN, "RUB"), (CODE_PATTERN, "GC-123456")])
def test_schema_validator_matches_the_whole_value(pattern, good):
    check = FullMatch(pattern)
    assert check(good) == good
    with pytest.raises(ma.ValidationError):
        check(good + "\n")
