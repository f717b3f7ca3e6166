"""The CVC notification: CRM fetches the CVC once, the SMS sender takes its lease and records its
outcome, results, support asks again; and the stream's alerts."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from config import get_settings
from models.domain.commands import (
    Context,
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
from models.domain.notification import SmsLease
from models.domain.states import EventType
from models.domain.timeutil import utcnow
from models.service.unit_of_work import UnitOfWork
from models.store import cvc as cvc_secret
from models.store.db import connection, row_by
from models.store.repository import certificate_view_of, phone_for, to_domain
from models.store.tables import GiftCertificate, SmsMessage

log = logging.getLogger("gcp.notifications")


def disclose_cvc(cmd: DiscloseCvc, ctx: Context) -> dict:
    """CRM fetches the CVC once per notification request (never under NOTIFY_VIA=sms)."""
    with UnitOfWork(ctx) as uow:
        row, cert, before = uow.certificate(cmd.code)
        cert.disclose_cvc(ctx.actor, get_settings().notify_via)
        secret = cvc_secret.decrypt(row.cvc_encrypted)
        if secret is None:
            raise DomainError("INVALID_STATE", "the stored CVC cannot be decrypted with the configured key")
        uow.save(row, cert, before)
        return {"code": row.code, "cvc": secret}


def request_notification(cmd: RequestNotification, ctx: Context) -> dict:
    """Support asks for the CVC notification again after NOTIFICATION_FAILED."""
    with UnitOfWork(ctx) as uow:
        row, cert, before = uow.certificate(cmd.code)
        cert.request_notification_again()
        if cvc_secret.decrypt(row.cvc_encrypted) is None:
            raise DomainError("INVALID_STATE", "no CVC copy is kept to send again")
        uow.save(row, cert, before)
        return certificate_view_of(row, cert.held)


def notification_result(cmd: NotificationResult, ctx: Context) -> dict:
    """CRM (or our SMS sender) reports the notification: delivered erases the stored CVC copy."""
    with UnitOfWork(ctx) as uow:
        row, cert, before = uow.certificate(cmd.code)
        if cert.record_notification(cmd.delivered, cmd.reason):
            uow.save(row, cert, before)
        return certificate_view_of(row)


def raise_alert(cmd: RaiseAlert, ctx: Context) -> dict:
    """An ``alert`` or ``error`` event on the stream; returns its envelope."""
    with UnitOfWork(ctx) as uow:
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


def record_sms_outcome(cmd: RecordSmsOutcome, ctx: Context) -> None:
    """The SMS's row, the notification result and, if asked, an alert: one transaction."""
    now = utcnow()
    with UnitOfWork(ctx) as uow:
        uow.execute(_SMS_OUTCOME, ("SENT" if cmd.delivered else "FAILED", cmd.reason, now, cmd.gateway_id,
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

    Returns ``outcome``, a :class:`~models.domain.notification.SmsLease`: ``SEND`` (with
    ``phone``, the ``text`` of the SMS and the ``cvc`` in it, for the sender to mask in its
    logs), or why not."""
    with connection(), UnitOfWork(ctx) as uow:
        cert = row_by(GiftCertificate, "code", cmd.code, lock=True)
        if cert is None or not to_domain(cert, ZERO).notification_due:
            return {"outcome": SmsLease.NOT_REQUESTED}
        now = utcnow()
        uow.execute(_SMS_CLAIM, (cmd.notification_event_id, cmd.code, now, now))
        sms = row_by(SmsMessage, "notification_event_id", cmd.notification_event_id, lock=True)
        if sms.status in ("SENT", "FAILED"):
            return {"outcome": SmsLease.already(sms.status)}
        if sms.status == "SENDING" and sms.sending_until and sms.sending_until > now:
            return {"outcome": SmsLease.IN_FLIGHT}
        if sms.status == "SENDING" and not cmd.gateway_idempotent:  # maybe sent: never submit twice
            return {"outcome": SmsLease.UNKNOWN_OUTCOME}
        phone, secret = phone_for(cert), cvc_secret.decrypt(cert.cvc_encrypted)
        if phone is None or secret is None:
            return {"outcome": SmsLease.NO_PHONE if phone is None else SmsLease.CVC_UNREADABLE}
        uow.execute(_SMS_LEASE, (now + dt.timedelta(milliseconds=cmd.lease_ms), now, sms.id))
        text = sms_text(cmd.code, secret, fmt_money(cert.nominal), cert.currency.strip(), cert.expires_at,
                        get_settings().sms_template)
        return {"outcome": SmsLease.SEND, "phone": phone, "text": text, "cvc": secret}


def sms_attempt_failed(cmd: SmsAttemptFailed, ctx: Context) -> None:
    """The gateway failed this attempt: the lease is given back, for the retry."""
    with connection(), UnitOfWork(ctx):
        (SmsMessage.update(status="PENDING", sending_until=None, last_error=cmd.reason, touched_at=utcnow())
         .where(SmsMessage.notification_event_id == cmd.notification_event_id).execute())
