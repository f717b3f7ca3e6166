"""The pool's rules, pure: segments, the low-water mark, and what an SMS attempt is told."""
from decimal import Decimal

import pytest

from models.domain.notification import SmsLease
from models.domain.pool import LOW_WATER_ALERT, LowWater, low_water_alert, low_water_change, segment_key


def test_a_segment_is_named_by_currency_kind_and_nominal():
    assert segment_key("RUB", "ELECTRONIC", Decimal("1500")) == "RUB/ELECTRONIC/1500.00"
    assert segment_key("RUB", "PHYSICAL", None) == "RUB/PHYSICAL/OPEN"


@pytest.mark.parametrize("left, mark, low, change", [
    (4, 5, False, LowWater.CROSSED),   # falls below: said once
    (4, 5, True, None),                # still below: said already
    (5, 5, True, LowWater.REARMED),    # back at the mark: armed again
    (9, 5, False, None),               # above, armed: nothing
    (0, 0, False, None),               # no mark
])
def test_the_low_water_alert_is_raised_once_per_fall(left, mark, low, change):
    assert low_water_change(left, mark, low) == change


def test_the_low_water_alert_says_the_segment_and_its_level():
    event = low_water_alert("RUB", "ELECTRONIC", None, 3, 5)
    assert event.payload["code"] == LOW_WATER_ALERT and event.payload["available"] == 3
    assert event.payload["message"] == ("3 certificate(s) left in the pool for open value RUB ELECTRONIC, "
                                        "below the low-water mark 5")


def test_an_sms_attempt_is_told_in_words_a_grep_finds():
    assert SmsLease.already("SENT") == "already-sent" and SmsLease.already("FAILED") == "already-failed"
    assert SmsLease.IN_FLIGHT.nothing_to_do and not SmsLease.SEND.nothing_to_do
    assert SmsLease.NO_PHONE.failure_reason == "NO_PHONE" and SmsLease.SEND.failure_reason is None
