"""A sold certificate's life through HTTP against real PostgreSQL and Redis: its CVC disclosed
once per notification and never logged, support's lock, unlock and cancel, a notification
requested again, and expiry (by date, and by CERTIFICATE_VALIDITY_DAYS)."""
from config import get_settings
from models.store.db import db
from tests.helpers import issued
from tests.integration.apikit import auth, authorize, cvc_of, issued_with_cvc


def test_cvc_disclosed_once_per_notification_request_and_audited(client):
    # given an issued electronic certificate waiting for its notification
    code = issued("100.00")
    crm = auth("certificates:cvc", client_id="crm")
    # when CRM fetches the CVC twice
    first = client.get(f"/certificates/{code}/cvc", headers=crm)
    second = client.get(f"/certificates/{code}/cvc", headers=crm)
    # then it gets it once, uncached, and the disclosure is audited
    assert first.status_code == 200 and first.json["code"] == code
    assert first.json["cvc"].isdigit() and len(first.json["cvc"]) == get_settings().cvc_length
    assert first.headers["Cache-Control"] == "no-store"
    assert second.status_code == 409 and second.json["code"] == "CVC_ALREADY_DISCLOSED"
    trail = client.get(f"/certificates/{code}/audit", headers=auth("certificates:admin")).json["items"]
    disclosed = [a for a in trail if a["action"] == "audit"]
    assert disclosed and disclosed[0]["actor"] == "crm"
    assert first.json["cvc"] not in str(trail)


def test_access_log_line_per_call_and_the_cvc_never_logged(client, caplog):
    # given a certificate whose CVC CRM fetches
    import logging

    code = issued("100.00")
    caplog.set_level(logging.INFO)
    # when the CVC is disclosed with a known request id
    resp = client.get(f"/certificates/{code}/cvc",
                      headers={**auth("certificates:cvc", client_id="crm-log"), "X-Request-ID": "req-log-1"})
    # then one structured access line names client, route, status and duration, and no log has the CVC
    assert resp.status_code == 200
    lines = [r for r in caplog.records if r.name == "gcp.access"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.client, line.route, line.status, line.method) == (
        "crm-log", "/certificates/<code>/cvc", 200, "GET")
    assert line.durationMs >= 0 and resp.headers["X-Request-ID"] == "req-log-1"
    from observability import JsonFormatter, request_id_var

    token = request_id_var.set("req-log-1")
    try:
        assert '"requestId": "req-log-1"' in JsonFormatter().format(line)
    finally:
        request_id_var.reset(token)
    assert all(resp.json["cvc"] not in r.getMessage() + str(r.__dict__) for r in caplog.records)


def test_lock_unlock_returns_to_previous_status_and_cancel_is_terminal(client):
    # given a partially redeemed certificate
    code, cvc = issued_with_cvc("1000.00")
    hold = authorize(client, code, cvc, "100.00").json
    client.post(f"/authorizations/{hold['authorizationId']}/capture", headers=auth())
    admin = auth("certificates:admin")
    # when support locks, unlocks, then cancels it
    locked = client.post(f"/certificates/{code}/actions/lock", json={"reason": "CHECK"}, headers=admin)
    refused = authorize(client, code, cvc, "1.00")
    unlocked = client.post(f"/certificates/{code}/actions/unlock", headers=admin)
    cancelled = client.post(f"/certificates/{code}/actions/cancel", json={"reason": "ANNULLED"}, headers=admin)
    again = client.post(f"/certificates/{code}/actions/unlock", headers=admin)
    # then each answers the certificate in its new status
    assert locked.status_code == 200 and locked.json["status"] == "LOCKED"
    assert locked.json["lockReason"] == "CHECK"
    assert refused.status_code == 409 and refused.json["code"] == "NOT_REDEEMABLE"
    assert unlocked.json["status"] == "PARTIALLY_REDEEMED" and unlocked.json["lockReason"] is None
    assert cancelled.json["status"] == "CANCELLED"
    assert again.status_code == 409 and again.json["code"] == "INVALID_STATE"


def test_cancel_voids_active_holds(client):
    # given a certificate with an active hold
    code, cvc = issued_with_cvc("500.00")
    hold = authorize(client, code, cvc, "200.00").json
    # when it is cancelled
    resp = client.post(f"/certificates/{code}/actions/cancel", json={"reason": "X"},
                       headers=auth("certificates:admin"))
    # then the hold is gone and cannot be captured
    assert resp.status_code == 200 and resp.json["available"] == "500.00"
    cap = client.post(f"/authorizations/{hold['authorizationId']}/capture", headers=auth())
    assert cap.status_code == 409 and cap.json["code"] == "AUTHORIZATION_NOT_ACTIVE"


def test_notification_requested_again_after_failure_resends_the_same_cvc(client):
    # given a certificate whose notification failed, after CRM fetched its CVC
    from models.domain import commands
    from models.service import messagebus

    code = issued("100.00")
    old_cvc = client.get(f"/certificates/{code}/cvc", headers=auth("certificates:cvc")).json["cvc"]
    admin = auth("certificates:admin")
    early = client.post(f"/certificates/{code}/notifications", headers=admin)
    with db.connection_context():
        messagebus.handle(commands.NotificationResult(code, delivered=False, reason="UNREACHABLE"))
    # when support requests the notification again
    resp = client.post(f"/certificates/{code}/notifications", headers=admin)
    # then it is accepted, and CRM can fetch the very same CVC once more (the buyer may hold it)
    assert early.status_code == 409 and early.json["code"] == "INVALID_STATE"
    assert resp.status_code == 202 and resp.json["notificationStatus"] == "NOTIFICATION_REQUESTED"
    new = client.get(f"/certificates/{code}/cvc", headers=auth("certificates:cvc"))
    assert new.status_code == 200 and new.json["cvc"] == old_cvc == cvc_of(code)
    again = client.get(f"/certificates/{code}/cvc", headers=auth("certificates:cvc"))
    assert again.status_code == 409 and again.json["code"] == "CVC_ALREADY_DISCLOSED"
    # and the buyer's CVC still authorizes
    assert authorize(client, code, old_cvc, "1.00").status_code == 201


def test_expired_certificate_cannot_be_authorized(client):
    # given an issued certificate whose expiresAt has passed
    import datetime as dt

    from models.store.tables import GiftCertificate

    code, cvc = issued_with_cvc("100.00")
    with db.connection_context():
        GiftCertificate.update(expires_at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)).where(
            GiftCertificate.code == code).execute()
    from models.store import cache
    cache.invalidate([code])
    # when it is authorized
    resp = authorize(client, code, cvc, "1.00")
    # then it is not redeemable
    assert resp.status_code == 409 and resp.json["code"] == "NOT_REDEEMABLE"


def test_validity_days_give_issued_certificates_an_expiry(client, monkeypatch):
    # given CERTIFICATE_VALIDITY_DAYS=30 (certificates have no expiry by default)
    import datetime as dt

    from config import reset_settings

    monkeypatch.setenv("CERTIFICATE_VALIDITY_DAYS", "30")
    reset_settings()
    try:
        # when a certificate is issued
        code = issued("100.00")
    finally:
        monkeypatch.delenv("CERTIFICATE_VALIDITY_DAYS")
        reset_settings()
    # then it expires 30 days later
    expires = client.get(f"/certificates/{code}", headers=auth()).json["expiresAt"]
    delta = dt.datetime.fromisoformat(expires.replace("Z", "+00:00")) - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=29, hours=23) < delta <= dt.timedelta(days=30)
