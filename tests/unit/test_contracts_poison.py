"""The pump's parser against poison pills: every one is an InvalidMessage with a reason (a DLQ
entry), never an exception that would stop the pump on the same offset forever."""
import json
from pathlib import Path

import pytest

from config import get_settings

from workers import contracts

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "contracts" / "examples" / "01-order-sells-certificate.json").read_text())["value"]


def reason(value: bytes | None) -> str:
    with pytest.raises(contracts.InvalidMessage) as bad:
        contracts.parse(get_settings().topic_sales_order, value)
    return bad.value.reason


def test_the_example_parses():
    assert contracts.parse(get_settings().topic_sales_order, json.dumps(ORDER).encode()).event_id == ORDER["eventId"]


def test_nesting_deeper_than_the_json_parser_goes_is_invalid_json():
    assert reason(b"[" * 100_000 + b"]" * 100_000) == "INVALID_JSON: nested too deeply"


def test_nesting_the_parser_takes_but_the_validator_does_not_is_a_schema_violation():
    value = json.dumps(dict(ORDER, customer=json.loads("[" * 900 + "]" * 900))).encode()
    assert reason(value).startswith("SCHEMA_VIOLATION")


@pytest.mark.parametrize("value, start", [
    (None, "INVALID_JSON"), (b"", "INVALID_JSON"), (b"\xff\xfe", "INVALID_JSON"),
    (b"not json", "INVALID_JSON"), (b"42", "SCHEMA_VIOLATION"), (b"null", "SCHEMA_VIOLATION"),
])
def test_garbage_is_refused_with_a_reason(value, start):
    assert reason(value).startswith(start)
