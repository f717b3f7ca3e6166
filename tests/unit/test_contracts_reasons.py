"""A schema violation's reason names the JSON pointer and the failed keyword, never the value
(it goes to the DLQ header, the mart's anomalies, the logs and the BI report)."""
import copy
import json
from pathlib import Path

import pytest

from workers import contracts

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "contracts" / "examples" / "01-order-sells-certificate.json").read_text())["value"]
PHONE, EMAIL = "+7 999 000-11-22", "ivan.petrov" + "x" * 250 + "@example.ru"


def order(**changes) -> dict:
    out = copy.deepcopy(ORDER)
    out.update(changes)
    return out


@pytest.mark.parametrize("message, expected", [
    (order(customer={"phone": PHONE}), "/customer/phone: does not match pattern"),
    (order(customer={"phone": "+79990001122", "email": EMAIL}), "/customer/email: is too long"),
    (order(customer={"phone": 79990001122}), '/customer/phone: is not of type "string"'),
    (order(total=PHONE), "/total: does not match pattern"),
    (order(channel=EMAIL), "/channel: is not one of the allowed values"),
    ({k: v for k, v in ORDER.items() if k != "orderId"}, '/: required property "orderId" is missing'),
])
def test_the_reason_names_the_field_and_the_keyword_only(message, expected):
    found = contracts.errors("All_SalesOrder", message)
    assert expected in found, found
    text = "; ".join(found)
    for secret in (PHONE, EMAIL, "79990001122", "999 000-11-22"):
        assert secret not in text, text


def test_a_key_the_sender_made_up_is_masked_in_the_pointer():
    message = order(lines=[dict(ORDER["lines"][0], amount=1.5)])
    assert contracts.pointer(["lines", 0, "amount"]) == "/lines/0/amount"
    assert contracts.pointer(["notes", PHONE, "x"]) == "/notes/*/x"
    assert contracts.pointer(["notes", "ivan@example.ru"]) == "/notes/*"
    assert any(e.startswith("/lines/0/amount: ") for e in contracts.errors("All_SalesOrder", message))
