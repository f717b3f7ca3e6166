"""The SMS actor: sends a certificate's CVC to the buyer through the configured gateway.

Used when ``SMS_GATEWAY_URL`` is set (otherwise CRM fetches the CVC once through
``GET /certificates/{code}/cvc`` and reports on All_Clients). The relay hands over every
``notification.requested`` event it publishes; the actor sends at most one SMS per
notification request (``sms_message`` unique on the event id, and the event id as the
gateway's ``Idempotency-Key``), retries with backoff, and reports the outcome as
``notification.sent`` / ``notification.failed``. Neither the CVC nor the full phone number is
ever logged.
"""
from __future__ import annotations

import logging

import dramatiq
import requests

from actors.common import ensure_db, final_attempt
from config import get_settings

log = logging.getLogger("gcp.actors.sms")
#: The Dramatiq queue of SMS sends.
QUEUE = "gcp-sms"
_MAX_RETRIES = get_settings().sms_max_retries


class GatewayError(RuntimeError):
    """The gateway refused or could not be reached (retried)."""


def phone_for(certificate) -> str | None:
    """The buyer's phone: the order's customer phone, else the CRM profile's."""
    from models.tables import ClientProfile, SalesOrder

    if not certificate.order_id:
        return None
    order = SalesOrder.get_or_none(SalesOrder.order_id == certificate.order_id)
    customer = (order.customer or {}) if order is not None else {}
    if customer.get("phone"):
        return customer["phone"]
    if customer.get("clientId"):
        profile = ClientProfile.get_or_none(ClientProfile.client_id == customer["clientId"])
        if profile is not None:
            return profile.phone
    return None


def sms_text(code: str, cvc: str, nominal: str | None, currency: str) -> str:
    return (f"Your gift certificate {code}: CVC {cvc}, balance {nominal} {currency}. "
            "Keep the CVC secret.")


def _report(code: str, delivered: bool, reason: str | None, event_id: str) -> None:
    from models import services as svc
    from models.domain import DomainError
    from models.tables import SmsMessage

    with svc.transaction():
        (SmsMessage.update(status="SENT" if delivered else "FAILED", last_error=reason,
                           sent_at=svc.utcnow() if delivered else None)
         .where(SmsMessage.notification_event_id == event_id).execute())
        try:
            svc.handle(svc.NotificationResult(code, delivered, reason),
                       svc.Context(actor="sms-gateway", causation_id=event_id))
        except DomainError as refused:  # e.g. cancelled meanwhile: nothing to report on
            log.warning("notification result for %s refused: %s", code, refused.code)


def deliver(code: str, notification_event_id: str, final: bool = True) -> str:
    """Send the SMS of one notification request. Returns what happened; raises to be retried."""
    from models import cvc as cvc_secret
    from models.db import connection, db
    from models.domain import fmt_money
    from models.tables import GiftCertificate, SmsMessage
    from models.services import utcnow
    from observability import mask_phone

    gateway = get_settings().sms_gateway_url
    if not gateway:
        return "no-gateway"
    with connection():
        with db.atomic():
            cert = GiftCertificate.select().where(GiftCertificate.code == code).for_update().first()
            if (cert is None or cert.notification_status != "NOTIFICATION_REQUESTED"
                    or not cert.cvc_encrypted or not cert.cvc_disclosable):
                return "not-requested"
            SmsMessage.insert(notification_event_id=notification_event_id, code=code, status="PENDING",
                              created_at=utcnow()).on_conflict_ignore().execute()
            sms = (SmsMessage.select().where(SmsMessage.notification_event_id == notification_event_id)
                   .for_update().get())
            if sms.status != "PENDING":
                return "already-" + sms.status.lower()
            sms.attempts += 1
            sms.save()
            phone = phone_for(cert)
            secret = cvc_secret.decrypt(cert.cvc_encrypted)
            text = None if secret is None else sms_text(code, secret, fmt_money(cert.nominal),
                                                        cert.currency.strip())
        if phone is None or text is None:
            _report(code, False, "NO_PHONE" if phone is None else "CVC_UNREADABLE", notification_event_id)
            return "failed"
        try:
            resp = requests.post(gateway, json={"to": phone, "text": text,
                                                "reference": notification_event_id},
                                 headers={"Idempotency-Key": notification_event_id}, timeout=5)
            if resp.status_code >= 300:
                raise GatewayError(f"gateway answered {resp.status_code}")
        except (requests.RequestException, GatewayError) as exc:
            reason = str(exc)[:300] if isinstance(exc, GatewayError) else type(exc).__name__
            log.warning("sms to %s for %s failed: %s", mask_phone(phone), code, reason)
            with db.atomic():
                SmsMessage.update(last_error=reason).where(
                    SmsMessage.notification_event_id == notification_event_id).execute()
            if final:
                _report(code, False, reason, notification_event_id)
                return "failed"
            raise
        _report(code, True, None, notification_event_id)
        log.info("sms sent", extra={"code": code, "to": mask_phone(phone)})
        return "sent"


@dramatiq.actor(queue_name=QUEUE, max_retries=_MAX_RETRIES)
def send_sms(code: str, notification_event_id: str) -> None:
    """Send the CVC of ``code`` for the notification request ``notification_event_id``."""
    ensure_db()
    deliver(code, notification_event_id, final_attempt(_MAX_RETRIES))
