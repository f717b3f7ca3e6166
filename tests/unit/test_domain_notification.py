"""The certificate's CVC notification lifecycle, the issue policy, the hold rules and the closed
list of event types: pure rules, no database."""
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from models.domain.certificate import Certificate
from models.domain.errors import DomainError
from models.domain.events import UNSEQUENCED
from models.domain.hold import Hold
from models.domain.money import available_of
from models.domain.policy import issue_expiry, notifies_buyer
from models.domain.states import EventType, HoldStatus, Status
from models.domain.states import NotificationStatus as N

NOW = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.timezone.utc)
D = Decimal
ROOT = Path(__file__).resolve().parents[2]


def sold(kind: str = "ELECTRONIC", notify: bool = True) -> Certificate:
    cert = Certificate("GC-TEST-1", Status.AVAILABLE, "RUB", False, nominal=D("1000.00"), kind=kind)
    cert.reserve(D("1000.00"), "RUB")
    cert.issue(None, notify)
    return cert


def refused(code: str, action) -> DomainError:
    with pytest.raises(DomainError) as caught:
        action()
    assert caught.value.code == code, caught.value.code
    return caught.value


def types(cert: Certificate) -> list[str]:
    return [e.type.value for e in cert.events]


# ---- issue policy

def test_an_electronic_sale_requests_the_notification_and_keeps_a_disclosable_copy():
    cert = sold()
    assert types(cert) == ["reserve", "issue", "notification.requested"]
    assert cert.events[-1].status == "NOTIFICATION_REQUESTED"
    assert cert.events[-1].payload == {"notificationChannel": "SMS"}
    assert (cert.notification, cert.cvc_copy, cert.cvc_disclosable, cert.notification_due) == (
        N.REQUESTED, True, True, True)


@pytest.mark.parametrize("kind, notify", [("PHYSICAL", True), ("ELECTRONIC", False)])
def test_a_physical_card_or_a_silent_issue_requests_nothing(kind, notify):
    cert = sold(kind, notify)
    assert types(cert) == ["reserve", "issue"]
    assert (cert.notification, cert.cvc_copy, cert.notification_due) == (None, False, False)
    assert notifies_buyer(kind, notify) is False


def test_the_expiry_comes_from_the_batch_else_the_validity_days_else_never():
    batch = NOW + dt.timedelta(days=10)
    assert issue_expiry(batch, NOW, 365) == batch
    assert issue_expiry(None, NOW, 365) == NOW + dt.timedelta(days=365)
    assert issue_expiry(None, NOW, 0) is None and issue_expiry(None, NOW, None) is None


# ---- disclose once, result, request again

def test_crm_gets_the_cvc_once_and_the_disclosure_is_audited():
    cert = sold()
    cert.disclose_cvc("crm", "crm")
    assert types(cert)[-1] == "audit" and cert.events[-1].payload == {"action": "CVC_DISCLOSED", "by": "crm"}
    assert cert.cvc_copy and not cert.cvc_disclosable
    refused("CVC_ALREADY_DISCLOSED", lambda: cert.disclose_cvc("crm", "crm"))


def test_nothing_to_disclose_without_a_pending_request():
    refused("NO_NOTIFICATION_PENDING", lambda: sold("PHYSICAL").disclose_cvc("crm", "crm"))
    cert = sold()
    cert.record_notification(True)
    refused("NO_NOTIFICATION_PENDING", lambda: cert.disclose_cvc("crm", "crm"))


def test_under_sms_delivery_the_cvc_is_never_disclosed_and_nothing_changes():
    # given a pending notification that the service itself sends by SMS
    cert = sold()
    events = list(cert.events)
    # when a cvc holder asks for the CVC, then it is refused, and the request stays as it was
    error = refused("NO_NOTIFICATION_PENDING", lambda: cert.disclose_cvc("crm", "sms"))
    assert error.details == {"notifyVia": "sms"}
    assert (cert.notification_due, cert.cvc_disclosable, cert.events) == (True, True, events)


def test_a_delivery_wipes_the_copy_and_a_repeated_report_changes_nothing():
    cert = sold()
    assert cert.record_notification(True) is True
    assert (cert.notification, cert.cvc_copy, cert.cvc_disclosable) == (N.SENT, False, False)
    assert types(cert)[-1] == "notification.sent" and cert.events[-1].status == "NOTIFICATION_SENT"
    events = len(cert.events)
    assert cert.record_notification(True) is False and len(cert.events) == events


def test_a_failure_keeps_the_copy_and_support_may_request_again_only_then():
    cert = sold()
    refused("INVALID_STATE", cert.request_notification_again)  # still requested
    cert.record_notification(False, "NO_PHONE")
    assert (cert.notification, cert.cvc_copy) == (N.FAILED, True)
    assert cert.events[-1].type == EventType.NOTIFICATION_FAILED and cert.events[-1].payload == {"reason": "NO_PHONE"}
    cert.request_notification_again()
    assert (cert.notification, cert.cvc_disclosable, types(cert)[-1]) == (N.REQUESTED, True, "notification.requested")


def test_no_request_again_on_a_certificate_that_ended():
    cert = sold()
    cert.record_notification(False)
    cert.cancel("ANNULLED")
    refused("INVALID_STATE", cert.request_notification_again)


@pytest.mark.parametrize("end", ["cancel", "expire", "refund", "transfer"])
def test_every_terminal_transition_wipes_the_cvc_copy(end):
    cert = sold()
    cert.expires_at = NOW - dt.timedelta(seconds=1) if end == "expire" else None
    {"cancel": lambda: cert.cancel("ANNULLED"),
     "expire": lambda: cert.expire(NOW),
     "refund": lambda: (cert.request_purchase_refund(D("1000.00")), cert.confirm_purchase_refund()),
     "transfer": lambda: cert.transfer_out("GC-OTHER-1", "DAMAGED_CARD", "trf-1", NOW)}[end]()
    assert not cert.cvc_copy and not cert.cvc_disclosable and not cert.notification_due


# ---- holds

def test_hold_rules_overdue_and_ownership():
    hold = Hold("h1", D("10.00"), NOW, channel="POS")
    assert hold.lapsed(NOW) and hold.overdue(NOW)
    hold.status = HoldStatus.CAPTURED
    assert hold.lapsed(NOW) and not hold.overdue(NOW)
    assert hold.visible_to("POS") and hold.visible_to(None) and not hold.visible_to("ONLINE_STORE")


def test_available_never_goes_below_zero():
    assert available_of(D("10.00"), D("4.00")) == D("6.00")
    assert available_of(D("1.00"), D("4.00")) == D("0.00")


# ---- event types

def test_the_event_types_are_the_contracts_closed_list():
    schema = json.loads((ROOT / "contracts" / "giftcertificates_stream.schema.json").read_text())
    assert [t.value for t in EventType] == schema["properties"]["eventType"]["enum"]
    unsequenced = schema["allOf"][0]["if"]["properties"]["eventType"]["not"]["enum"]
    assert {t.value for t in UNSEQUENCED} == set(unsequenced)
