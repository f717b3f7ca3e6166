"""The CVC notification (CRM fetches the CVC once, results, support asks again) and alerts."""
from __future__ import annotations

import dataclasses
import logging

from models import cvc as cvc_secret
from models.commands import DiscloseCvc, NotificationResult, RaiseAlert, RecordSmsOutcome, RequestNotification
from models.domain import DomainError, E, Event
from models.repository import snapshot
from models.unit_of_work import Context, run, transaction, UnitOfWork
from models.timeutil import utcnow
from models.tables import SmsMessage

log = logging.getLogger("gcp.notifications")


def disclose_cvc(cmd: DiscloseCvc, ctx: Context) -> dict:
    """CRM fetches the CVC once per notification request."""
    def body(uow: UnitOfWork) -> dict:
        row, cert, before = uow.certificate(cmd.code)
        cert.disclose_cvc(ctx.actor)
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
        event_type = E(cmd.event_type)
        status = "ALERT" if event_type == E.ALERT else "ERROR"
        return uow.emit(Event(event_type, status, payload), None,
                        key=cmd.key or cmd.certificate_code or ctx.correlation_id or "")
    return run(ctx, body)


def record_sms_outcome(cmd: RecordSmsOutcome, ctx: Context) -> None:
    """The SMS's row, the notification result and, if asked, an alert: one transaction."""
    now = utcnow()
    with transaction():
        (SmsMessage.update(status="SENT" if cmd.delivered else "FAILED", last_error=cmd.reason, touched_at=now,
                           sending_until=None, gateway_id=cmd.gateway_id, sent_at=now if cmd.delivered else None)
         .where(SmsMessage.notification_event_id == cmd.notification_event_id).execute())
        ctx = dataclasses.replace(ctx, causation_id=cmd.notification_event_id)
        try:
            notification_result(NotificationResult(cmd.code, cmd.delivered, cmd.reason), ctx)
        except DomainError as refused:  # e.g. cancelled meanwhile: nothing to report on
            log.warning("notification result for %s refused: %s", cmd.code, refused.code)
        if cmd.alert:
            raise_alert(RaiseAlert("alert", "NOTIFICATION_FAILED", f"the CVC SMS could not be sent: {cmd.reason}",
                                "sms-gateway", certificate_code=cmd.code,
                                details={"notificationId": cmd.notification_event_id}), ctx)
