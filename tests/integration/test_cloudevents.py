"""GiftCertificates.Stream carries the CloudEvents 1.0 Kafka protocol binding in binary content
mode (contract section 4, revision 3), read back with the PyPI ``cloudevents`` SDK. Here: every
event type as the relay writes it; every record the integration and e2e tests read from the
stream is checked the same way (``tests.e2e.flow.TopicReader`` -> ``assert_cloudevent``)."""
import json
import uuid

import pytest

from config import get_settings, reset_settings
from models.domain.states import EventType
from tests.e2e.flow import assert_cloudevent
from workers.relay import CLOUDEVENTS_TYPE_PREFIX, cloudevent_headers


def record(event_type: str, key: str) -> tuple[bytes, bytes, dict[str, bytes]]:
    """A stream record as the relay produces it (its headers and its value, the envelope)."""
    envelope = {"eventId": str(uuid.uuid4()), "eventType": event_type, "occurredAt": "2026-12-07T10:00:00.123Z",
                "channel": "SYSTEM", "status": "ALERT", "payload": {"code": key, "amount": "10.00"}}
    headers = dict([("eventType", event_type.encode()), ("channel", b"SYSTEM"), ("outboxId", b"1"),
                    *cloudevent_headers(get_settings().cloudevents_source, envelope["eventId"], event_type,
                                        envelope["occurredAt"], key)])
    return key.encode(), json.dumps(envelope).encode(), headers


@pytest.mark.parametrize("event_type", [t.value for t in EventType])
def test_every_event_type_reads_back_as_a_cloudevent(event_type):
    # given a record of this type, when the SDK reads it, then id, type, source, time, subject
    # and data are the envelope's
    assert_cloudevent(*record(event_type, "GC-" + uuid.uuid4().hex[:8].upper()))


def test_the_type_is_reverse_dns_and_the_source_configurable(monkeypatch):
    assert CLOUDEVENTS_TYPE_PREFIX + "issue.blocked" == "com.retailer.giftcertificates.issue.blocked"
    assert get_settings().cloudevents_source == "urn:retailer:gcp"
    monkeypatch.setenv("CLOUDEVENTS_SOURCE", "https://gcp.retailer.example/")
    reset_settings()
    try:
        headers = record("issue", "GC-1")[2]
        assert headers["ce_source"] == b"https://gcp.retailer.example/"
        assert_cloudevent(*record("issue", "GC-1"))
    finally:
        monkeypatch.delenv("CLOUDEVENTS_SOURCE")
        reset_settings()


def test_an_envelope_without_occurred_at_is_published_without_time():
    headers = dict(cloudevent_headers("urn:x", str(uuid.uuid4()), "issue", None, "GC-1"))
    assert "ce_time" not in headers and headers["ce_id"] and headers["ce_subject"] == b"GC-1"
