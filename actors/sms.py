"""The SMS actor: sends a certificate's CVC to the buyer, exactly once per notification request
(the lease and the outcome are use cases of ``models/service/handlers/notifications.py``; this is the I/O).

Used when ``NOTIFY_VIA=sms`` (otherwise CRM fetches the CVC once through
``GET /certificates/{code}/cvc`` and reports on All_Clients). The relay hands over every
``notification.requested`` it publishes; the scheduler's sweeper hands over again a request whose
send is missing (a hand-off lost with the relay or Redis) or stuck (a worker killed mid-send).

Exactly one SMS per request (``sms_message``, unique on the request's event id):

1. under the certificate's and the message's row locks an attempt takes a lease (``SENDING``
   until ``sending_until``) and commits it; a second trigger meanwhile finds the lease and
   sends nothing;
2. the gateway gets the request's event id as its idempotency key (``reference``), so the
   retry of an attempt that died after the gateway accepted is answered "already sent";
   a gateway with no such key (SMPP) is never submitted to twice: an attempt found dead there
   ends the request ``NOTIFICATION_FAILED`` (``UNKNOWN_OUTCOME``) with an alert, and support's
   re-request starts a new round;
3. the outcome is recorded with the notification result in one transaction.

Failures are retried by Dramatiq with exponential backoff, ``SMS_MAX_RETRIES`` times; the last
one gives ``notification.failed`` and an ``alert``. No phone: ``notification.failed`` with reason
``NO_PHONE`` at once. Neither the CVC nor the full phone number is ever logged.
"""
from __future__ import annotations

import logging

import dramatiq

from actors.common import ensure_db, final_attempt
from actors.gateways import GatewayError, GatewayRefused, Sms, gateway, masked
from config import get_settings

log = logging.getLogger("gcp.actors.sms")
#: The Dramatiq queue of SMS sends.
QUEUE = "gcp-sms"
_MAX_RETRIES = get_settings().sms_max_retries


def _report(code: str, delivered: bool, reason: str | None, event_id: str, gateway_id: str | None = None,
            alert: bool = False) -> None:
    from models.domain import commands
    from models.service import messagebus

    messagebus.handle(commands.RecordSmsOutcome(code, event_id, delivered, reason, gateway_id, alert),
                      commands.Context(actor="sms-gateway"))


def deliver(code: str, notification_event_id: str, final: bool = True) -> str:
    """Send the SMS of one notification request. Returns what happened; raises to be retried."""
    from models.domain import commands
    from models.domain.notification import SmsLease
    from models.service import messagebus
    from observability import mask_phone

    settings = get_settings()
    if settings.notify_via != "sms":
        return "crm-path"
    sender = gateway(settings)
    lease = messagebus.handle(commands.TakeSmsLease(code, notification_event_id, settings.sms_sweep_after_ms,
                                                    sender.idempotent))
    outcome = lease["outcome"]
    if outcome.nothing_to_do:
        return outcome
    if outcome != SmsLease.SEND:  # the domain's reason not to send: the request fails
        _report(code, False, outcome.failure_reason, notification_event_id,
                alert=outcome == SmsLease.UNKNOWN_OUTCOME)
        return "failed"
    message = Sms(lease["phone"], lease["text"], notification_event_id, masked(lease["text"], lease["cvc"]))
    try:
        accepted = sender.send(message)
    except GatewayRefused as exc:
        log.warning("sms to %s for %s refused: %s", mask_phone(lease["phone"]), code, exc)
        _report(code, False, str(exc)[:300], notification_event_id, alert=True)
        return "failed"
    except GatewayError as exc:
        reason = str(exc)[:300]
        log.warning("sms to %s for %s failed (%s): %s", mask_phone(lease["phone"]), code,
                    "last attempt" if final else "retrying", reason)
        messagebus.handle(commands.SmsAttemptFailed(notification_event_id, reason))
        if final:
            _report(code, False, reason, notification_event_id, alert=True)
            return "failed"
        raise
    _report(code, accepted.delivered, accepted.reason, notification_event_id, accepted.gateway_id,
            alert=not accepted.delivered)
    log.info("sms sent" if accepted.delivered else "sms undelivered",
             extra={"code": code, "to": mask_phone(lease["phone"]), "reference": notification_event_id})
    return "sent" if accepted.delivered else "failed"


def stuck_requests(limit: int = 200) -> list[tuple[str, str]]:
    """(code, notification event id) of the pending SMS requests whose send is missing (the
    hand-off was lost) or stuck (an attempt died, a retry was lost), older than
    ``SMS_SWEEP_AFTER_MS``."""
    from models.store.db import db

    after = get_settings().sms_sweep_after_ms / 1000.0
    cursor = db.execute_sql("""
        SELECT g.code, o.event_id::text FROM gift_certificate g
        JOIN LATERAL (SELECT event_id, created_at, published_at FROM outbox_event
                      WHERE message_key = g.code AND event_type = 'notification.requested'
                      ORDER BY id DESC LIMIT 1) o ON true
        LEFT JOIN sms_message m ON m.notification_event_id = o.event_id::text
        WHERE g.notification_status = 'NOTIFICATION_REQUESTED' AND g.cvc_encrypted IS NOT NULL
          AND o.published_at IS NOT NULL AND o.created_at < now() - make_interval(secs => %s)
          AND (m.id IS NULL OR (m.status = 'SENDING' AND m.sending_until < now())
               OR (m.status = 'PENDING' AND m.touched_at < now() - make_interval(secs => %s)))
        ORDER BY o.created_at
        LIMIT %s""", (after, after, limit))
    return [(code, event_id) for code, event_id in cursor.fetchall()]


def sweep() -> int:
    """Hand over again every stuck request (the scheduler calls this each tick)."""
    if get_settings().notify_via != "sms":
        return 0
    stuck = stuck_requests()
    for code, event_id in stuck:
        send_sms.send(code, event_id)
    if stuck:
        log.info("sms sweep", extra={"handedOverAgain": len(stuck)})
    return len(stuck)


@dramatiq.actor(queue_name=QUEUE, max_retries=_MAX_RETRIES)
def send_sms(code: str, notification_event_id: str) -> None:
    """Send the CVC of ``code`` for the notification request ``notification_event_id``."""
    ensure_db()
    deliver(code, notification_event_id, final_attempt(_MAX_RETRIES))
