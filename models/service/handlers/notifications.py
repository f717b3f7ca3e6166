"""The CVC notification: CRM fetches the CVC once, the SMS sender takes its lease and records its
outcome, results, support asks again; and the stream's alerts."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from config import get_settings
from models.domain.commands import (
    DiscloseCvc,
    NotificationResult,
    RaiseAlert,
    RecordSmsOutcome,
    RequestNotification,
    SmsAttemptFailed,
    TakeSmsLease,
)
from models.domain.errors import DomainError
from models.domain.events import Event
from models.domain.money import ZERO, fmt_money
from models.domain.states import EventType
from models.domain.timeutil import utcnow
from models.service.unit_of_work import Context, UnitOfWork, run, transaction
from models.store import cvc as cvc_secret
from models.store.db import connection, db, one
from models.store.repository import phone_for, snapshot, to_domain
from models.store.tables import GiftCertificate, SmsMessage

log = logging.getLogger("gcp.notifications")


def disclose_cvc(cmd: DiscloseCvc, ctx: Context) -> dict:
    """CRM fetches the CVC once per notification request (never under NOTIFY_VIA=sms)."""
    def body(uow: UnitOfWork) -> dict:
        row, cert, before = uow.certificate(cmd.code)
        cert.disclose_cvc(ctx.actor, get_settings().notify_via)
        secret = cvc_secret.decrypt(row.cvc_encrypted)
        if secret is None:
            raise DomainError("INVALID_STATE", "the stored CVC cannot be decrypted with the configured key")
        uow.save(row, cert, before)
        return {"code": row.code, "cvc": secret}
    return run(ctx, body)


def request_notification(cmd: RequestNotification, ctx: Context) -> dict:
    """Support asks for the CVC notification again after NOTIFICATION_FAILED."""
    def body(uow: UnitOfWork) -> dict:
        row, cert, before = uow.certificate(cmd.code)
        cert.request_notification_again()
        if cvc_secret.decrypt(row.cvc_encrypted) is None:
            raise DomainError("INVALID_STATE", "no CVC copy is kept to send again")
        uow.save(row, cert, before)
        return snapshot(row, cert.held)
    return run(ctx, body)


def notification_result(cmd: NotificationResult, ctx: Context) -> dict:
    """CRM (or our SMS sender) reports the notification: delivered erases the stored CVC copy."""
    def body(uow: UnitOfWork) -> dict:
        row, cert, before = uow.certificate(cmd.code)
        if cert.record_notification(cmd.delivered, cmd.reason):
            uow.save(row, cert, before)
        return snapshot(row)
    return run(ctx, body)


def raise_alert(cmd: RaiseAlert, ctx: Context) -> dict:
    def body(uow: UnitOfWork) -> dict:
        payload = {**(cmd.details or {}), "code": cmd.code, "message": cmd.message,
                   "source": cmd.source}
        if cmd.certificate_code:
            payload["certificateCode"] = cmd.certificate_code
        if cmd.order_id:
            payload["orderId"] = cmd.order_id
        event_type = EventType(cmd.event_type)
        status = "ALERT" if event_type == EventType.ALERT else "ERROR"
        return uow.emit(Event(event_type, status, payload), None,
                        key=cmd.subject or ctx.correlation_id)
    return run(ctx, body)


def record_sms_outcome(cmd: RecordSmsOutcome, ctx: Context) -> None:
    """The SMS's row, the notification result and, if asked, an alert: one transaction."""
    now = utcnow()
    with transaction():
        db.execute_sql(_SMS_OUTCOME, ("SENT" if cmd.delivered else "FAILED", cmd.reason, now, cmd.gateway_id,
                                      now if cmd.delivered else None, cmd.notification_event_id))
        ctx = dataclasses.replace(ctx, causation_id=cmd.notification_event_id)
        try:
            notification_result(NotificationResult(cmd.code, cmd.delivered, cmd.reason), ctx)
        except DomainError as refused:  # e.g. cancelled meanwhile: nothing to report on
            log.warning("notification result for %s refused: %s", cmd.code, refused.code)
        if cmd.alert:
            raise_alert(RaiseAlert("alert", "NOTIFICATION_FAILED", f"the CVC SMS could not be sent: {cmd.reason}",
                                "sms-gateway", certificate_code=cmd.code,
                                details={"notificationId": cmd.notification_event_id}), ctx)


def sms_text(code: str, cvc: str, nominal: str | None, currency: str,
             expires_at: dt.datetime | None, template: str) -> str:
    """The SMS from ``SMS_TEMPLATE`` (Russian by default)."""
    expiry = f", до {expires_at.astimezone(dt.timezone.utc):%d.%m.%Y}" if expires_at else ""
    return template.format(
        code=code, cvc=cvc, nominal=nominal or "", currency=currency, expiry=expiry)


# The SMS path's statements, written once (Peewee's query builder cost more than each of them:
# a third of the worker's CPU per sale was the SMS path).
_SMS_CLAIM = ("INSERT INTO sms_message (notification_event_id, code, status, attempts, created_at, touched_at)"
              " VALUES (%s, %s, 'PENDING', 0, %s, %s) ON CONFLICT (notification_event_id) DO NOTHING")
_SMS_LEASE = ("UPDATE sms_message SET status = 'SENDING', sending_until = %s, touched_at = %s,"
              " attempts = attempts + 1 WHERE id = %s")
_SMS_OUTCOME = ("UPDATE sms_message SET status = %s, last_error = %s, touched_at = %s, sending_until = NULL,"
                " gateway_id = %s, sent_at = %s WHERE notification_event_id = %s")


def take_sms_lease(cmd: TakeSmsLease, ctx: Context) -> dict:
    """Exactly one SMS per notification request: under the certificate's and the message's row
    locks an attempt takes a lease (``SENDING`` until ``sending_until``) and commits it; a second
    trigger meanwhile finds the lease and sends nothing.

    Returns ``outcome``: ``send`` (with ``phone``, the ``text`` of the SMS and the ``cvc`` in it,
    for the sender to mask in its logs), or why not: not-requested, already-sent, already-failed,
    in-flight (another attempt holds the lease), unknown-outcome (an attempt died mid-send on a
    gateway that cannot tell), no-phone, cvc-unreadable."""
    with connection(), db.atomic():
        cert = one(GiftCertificate, "code", cmd.code, lock=True)
        if cert is None or not to_domain(cert, ZERO).notification_due:
            return {"outcome": "not-requested"}
        now = utcnow()
        db.execute_sql(_SMS_CLAIM, (cmd.notification_event_id, cmd.code, now, now))
        sms = one(SmsMessage, "notification_event_id", cmd.notification_event_id, lock=True)
        if sms.status in ("SENT", "FAILED"):
            return {"outcome": "already-" + sms.status.lower()}
        if sms.status == "SENDING" and sms.sending_until and sms.sending_until > now:
            return {"outcome": "in-flight"}
        if sms.status == "SENDING" and not cmd.gateway_idempotent:  # maybe sent: never submit twice
            return {"outcome": "unknown-outcome"}
        phone, secret = phone_for(cert), cvc_secret.decrypt(cert.cvc_encrypted)
        if phone is None or secret is None:
            return {"outcome": "no-phone" if phone is None else "cvc-unreadable"}
        db.execute_sql(_SMS_LEASE, (now + dt.timedelta(milliseconds=cmd.lease_ms), now, sms.id))
        text = sms_text(cmd.code, secret, fmt_money(cert.nominal), cert.currency.strip(), cert.expires_at,
                        get_settings().sms_template)
        return {"outcome": "send", "phone": phone, "text": text, "cvc": secret}


def sms_attempt_failed(cmd: SmsAttemptFailed, ctx: Context) -> None:
    with connection(), db.atomic():
        (SmsMessage.update(status="PENDING", sending_until=None, last_error=cmd.reason, touched_at=utcnow())
         .where(SmsMessage.notification_event_id == cmd.notification_event_id).execute())
