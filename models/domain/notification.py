"""The CVC notification lifecycle of the certificate aggregate: requested at issue, disclosed to
CRM once per request (never under ``NOTIFY_VIA=sms``), its result, asked for again after a
failure; and the count of wrong CVCs. A part of :class:`models.domain.certificate.Certificate`.
And what an attempt to send the CVC by SMS is told (:class:`SmsLease`)."""
from __future__ import annotations

import enum

from models.domain.errors import DomainError
from models.domain.events import Event
from models.domain.states import WORKING, EventType, NotificationStatus


class NotificationLifecycle:
    """The certificate's notification fields are ``notification``, ``notification_channel``,
    ``cvc_copy`` and ``cvc_disclosable`` (see the aggregate)."""

    # -- the CVC notification: request, disclose once, result, request again
    def _request_notification(self, channel: str = "SMS") -> None:
        self.notification, self.notification_channel = NotificationStatus.REQUESTED, channel
        self.cvc_copy = self.cvc_disclosable = True
        self._record(EventType.NOTIFICATION_REQUESTED, NotificationStatus.REQUESTED.value, notificationChannel=channel)

    def _wipe_cvc_copy(self) -> None:
        """A certificate that ends (cancel, expire, refund, transfer) keeps no CVC copy."""
        self.cvc_copy = self.cvc_disclosable = False

    @property
    def notification_due(self) -> bool:
        """A CVC notification is requested and its copy is kept: it is to be sent (by SMS or CRM)."""
        return self.notification == NotificationStatus.REQUESTED and self.cvc_copy

    def disclose_cvc(self, by: str, delivery: str) -> None:
        """CRM fetches the CVC: once per notification request, audited. ``delivery`` is the
        deployment's path (``NOTIFY_VIA``): under ``sms`` the service sends the CVC itself and the
        SMS is the only way it leaves, so nothing is ever disclosed (and nothing changes)."""
        if delivery == "sms":
            raise DomainError("NO_NOTIFICATION_PENDING", "the CVC is sent to the buyer by SMS "
                              "(NOTIFY_VIA=sms): it is never disclosed", notifyVia="sms")
        if not self.notification_due:
            raise DomainError("NO_NOTIFICATION_PENDING", "no CVC notification is pending for this "
                              "certificate", notificationStatus=self.notification and self.notification.value)
        if not self.cvc_disclosable:
            raise DomainError("CVC_ALREADY_DISCLOSED",
                              "the CVC was already disclosed for this notification request")
        self.cvc_disclosable = False
        self._record(EventType.AUDIT, action="CVC_DISCLOSED", by=by)

    def request_notification_again(self) -> None:
        """Support asks again after NOTIFICATION_FAILED: the same CVC (the buyer may already
        hold it), from the copy kept until delivery is confirmed."""
        self._require("notify")
        if self.notification != NotificationStatus.FAILED:
            raise DomainError("INVALID_STATE", "a notification can be requested again only after "
                              "NOTIFICATION_FAILED", notificationStatus=self.notification and self.notification.value)
        if not self.cvc_copy:
            raise DomainError("INVALID_STATE", "no CVC copy is kept to send again")
        self._request_notification(self.notification_channel or "SMS")

    def record_notification(self, delivered: bool, reason: str | None = None) -> bool:
        """CRM or the SMS sender reports the notification; a delivery wipes the CVC copy.
        A repeated report changes nothing (returns False)."""
        status = NotificationStatus.SENT if delivered else NotificationStatus.FAILED
        if self.notification == status:
            return False
        self.notification = status
        if delivered:
            self._wipe_cvc_copy()
        self._record(EventType.NOTIFICATION_SENT if delivered else EventType.NOTIFICATION_FAILED, status.value, reason=reason)
        return True

    def check_cvc(self, matches: bool, max_attempts: int) -> None:
        """Count a CVC check. The ``max_attempts``-th wrong one in a row locks the certificate.

        Raises CVC_MISMATCH for a wrong CVC; the caller commits the count (and the lock) anyway.
        """
        if matches:
            self.cvc_failed_attempts = 0
            return
        self.cvc_failed_attempts += 1
        if self.cvc_failed_attempts >= max_attempts and self.status in WORKING:
            self.lock("CVC_ATTEMPTS")
            self.events.append(Event(EventType.ALERT, "ALERT", {
                "code": "CVC_ATTEMPTS",
                "message": f"{self.cvc_failed_attempts} wrong CVC attempts in a row: certificate locked",
                "certificateCode": self.code}))


class SmsLease(enum.StrEnum):
    """What an attempt to send the CVC SMS of one notification request is told when it asks
    for the request's lease (exactly one SMS per request)."""

    SEND = "send"                        # the lease is this attempt's: send
    NOT_REQUESTED = "not-requested"      # no notification is due (any more)
    ALREADY_SENT = "already-sent"        # an earlier attempt sent it
    ALREADY_FAILED = "already-failed"    # an earlier attempt ended the request failed
    IN_FLIGHT = "in-flight"              # another attempt holds the lease
    UNKNOWN_OUTCOME = "unknown-outcome"  # an attempt died mid-send on a gateway that cannot tell
    NO_PHONE = "no-phone"                # the buyer's phone is unknown
    CVC_UNREADABLE = "cvc-unreadable"    # the CVC copy cannot be decrypted

    @classmethod
    def already(cls, sms_status: str) -> "SmsLease":
        """The request's SMS ended ``SENT`` or ``FAILED``."""
        return {"SENT": cls.ALREADY_SENT, "FAILED": cls.ALREADY_FAILED}[sms_status]

    @property
    def nothing_to_do(self) -> bool:
        """Nothing to send and nothing to report: the attempt just ends."""
        return self in (SmsLease.NOT_REQUESTED, SmsLease.ALREADY_SENT, SmsLease.ALREADY_FAILED,
                        SmsLease.IN_FLIGHT)

    @property
    def failure_reason(self) -> str | None:
        """Why the request fails without an attempt to send (``notification.failed``'s reason),
        or None."""
        return {SmsLease.UNKNOWN_OUTCOME: "UNKNOWN_OUTCOME", SmsLease.NO_PHONE: "NO_PHONE",
                SmsLease.CVC_UNREADABLE: "CVC_UNREADABLE"}.get(self)
