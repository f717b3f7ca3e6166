"""Schema-valid ``GiftCertificates.Stream`` records of a retailer's life over any number of days,
for the BI benchmark (``bench/bi.py``) and the report's rendering test: certificates reserved
(with the pool level of contract revision 3) and issued on both channels, redeemed in parts,
refunded onto, expired (breakage), cancelled, adjusted; a few in the test currency XTS.

Deterministic for a seed. Each certificate's events count its ``sequence`` from 1 and are in
time order; the whole list is in time order too.
"""
from __future__ import annotations

import datetime as dt
import random
import uuid
from decimal import Decimal

NOMINALS = (Decimal("500.00"), Decimal("1000.00"), Decimal("3000.00"), Decimal("5000.00"))
CHANNELS = ("ONLINE_STORE", "POS")


def _iso(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


class _Cert:
    def __init__(self, rnd: random.Random, currency: str, channel: str, nominal: Decimal):
        self.code = "SY" + uuid.UUID(int=rnd.getrandbits(128)).hex[:16].upper()
        self.currency, self.channel, self.nominal = currency, channel, nominal
        self.order = "so-" + uuid.UUID(int=rnd.getrandbits(128)).hex[:12]
        self.seq, self.balance, self.status = 0, Decimal("0.00"), "AVAILABLE"
        self.issued_at: str | None = None

    def event(self, rnd, etype: str, status: str, at: dt.datetime, channel: str | None = None,
              envelope: str | None = None, **payload) -> dict:
        self.seq += 1
        self.status = status
        body = {"code": self.code, "status": status, "nominal": f"{self.nominal:.2f}",
                "remainingBalance": f"{self.balance:.2f}", "currency": self.currency, "kind": "ELECTRONIC",
                "channel": self.channel, "orderId": payload.pop("orderId", self.order)}
        if self.issued_at:
            body["issuedAt"] = self.issued_at
        body.update(payload)
        return {"eventId": str(uuid.UUID(int=rnd.getrandbits(128))), "eventType": etype, "occurredAt": _iso(at),
                "channel": channel or self.channel, "status": envelope or status, "correlationId": body["orderId"],
                "causationId": str(uuid.UUID(int=rnd.getrandbits(128))), "sequence": self.seq, "payload": body}


def stream(days: int, per_day: float, end: dt.date, seed: int = 7, test_currency_share: float = 0.03,
           stock: int | None = None, rich: bool = False) -> list[dict]:
    """The events of ``days`` days ending on ``end``, about ``per_day`` certificates sold a day.
    ``rich``: also the CVC notification (requested, sent) of each sale, and redemptions through
    an authorization (created, then captured), as the channels' traffic has them."""
    rnd = random.Random(seed)
    start = dt.datetime.combine(end - dt.timedelta(days=days - 1), dt.time(8), dt.timezone.utc)
    pool = {}
    for cur in ("RUB", "XTS"):
        for nominal in NOMINALS:
            pool[(cur, nominal)] = stock if stock is not None else per_day * days + 50
    out: list[tuple[dt.datetime, int, dict]] = []
    counter = 0
    horizon = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.timezone.utc)

    def add(at, e):
        nonlocal counter
        counter += 1
        out.append((at, counter, e))

    for day in range(days):
        for n in range(max(1 if per_day >= 1 else 0, round(rnd.gauss(per_day, per_day * 0.2)))):
            at = start + dt.timedelta(days=day, seconds=rnd.randint(0, 12 * 3600), milliseconds=rnd.randint(0, 999))
            currency = "XTS" if rnd.random() < test_currency_share else "RUB"
            cert = _Cert(rnd, currency, rnd.choice(CHANNELS), rnd.choice(NOMINALS))
            pool[(currency, cert.nominal)] -= 1
            level = {"kind": "ELECTRONIC", "currency": currency, "nominal": f"{cert.nominal:.2f}",
                     "available": pool[(currency, cert.nominal)], "countedAt": _iso(at)}
            add(at, cert.event(rnd, "reserve", "RESERVED", at, pool=level))
            at += dt.timedelta(seconds=rnd.randint(5, 600))
            if rnd.random() < 0.05:  # the order is cancelled: back to the pool
                pool[(currency, cert.nominal)] += 1
                level = {**level, "available": pool[(currency, cert.nominal)], "countedAt": _iso(at)}
                add(at, cert.event(rnd, "release", "AVAILABLE", at, pool=level, reason="ORDER_CANCELLED"))
                continue
            cert.balance = cert.nominal
            cert.issued_at = _iso(at)
            add(at, cert.event(rnd, "issue", "ISSUED", at))
            if rich:
                add(at, cert.event(rnd, "notification.requested", "ISSUED", at, envelope="NOTIFICATION_REQUESTED"))
                later = at + dt.timedelta(seconds=rnd.randint(1, 30))
                add(later, cert.event(rnd, "notification.sent", "ISSUED", later, envelope="NOTIFICATION_SENT"))
            _life(rnd, cert, at, horizon, add, rich)
    out.sort(key=lambda t: (t[0], t[1]))
    return [e for _at, _n, e in out]


def _life(rnd, cert: _Cert, at: dt.datetime, horizon: dt.datetime, add, rich: bool = False) -> None:
    """What happens to a sold certificate until ``horizon``: redemptions, a refund onto it,
    an adjustment, then perhaps expiry or cancellation."""
    for _ in range(rnd.choice((0, 1, 1, 2, 3))):
        at += dt.timedelta(days=rnd.expovariate(1 / 40), seconds=rnd.randint(1, 3600))
        if at >= horizon or cert.balance <= 0:
            return
        amount = min(cert.balance, Decimal(rnd.randint(1, int(cert.nominal) // 100) * 100))
        full = amount == cert.balance
        channel = rnd.choice(CHANNELS)
        order = "ro-" + uuid.UUID(int=rnd.getrandbits(128)).hex[:10]
        status = "REDEEMED" if full else "PARTIALLY_REDEEMED"
        if rich:  # a hold, then its capture
            add(at, cert.event(rnd, "authorization.created", cert.status, at, channel=channel, amount=f"{amount:.2f}",
                               orderId=order))
            at += dt.timedelta(seconds=rnd.randint(1, 120))
            cert.balance -= amount
            add(at, cert.event(rnd, "authorization.captured", status, at, channel=channel, amount=f"{amount:.2f}",
                               orderId=order))
        else:
            cert.balance -= amount
            add(at, cert.event(rnd, "redeem.full" if full else "redeem.partial", status, at, channel=channel,
                               amount=f"{amount:.2f}", orderId=order))
        if not full and rnd.random() < 0.1:  # part of that purchase comes back onto the certificate
            at += dt.timedelta(hours=rnd.randint(1, 48))
            if at >= horizon:
                return
            back = min(amount, cert.nominal - cert.balance)
            cert.balance += back
            add(at, cert.event(rnd, "refund", "PARTIALLY_REDEEMED", at, channel=channel, amount=f"{back:.2f}"))
    if cert.balance > 0 and rnd.random() < 0.03:
        at += dt.timedelta(days=rnd.randint(1, 30))
        if at < horizon:
            credit = Decimal("100.00") if cert.balance + 100 <= cert.nominal else Decimal("-100.00")
            cert.balance += credit
            add(at, cert.event(rnd, "adjust", cert.status, at, channel="SYSTEM", amount=f"{abs(credit):.2f}",
                               direction="CREDIT" if credit > 0 else "DEBIT"))
    if cert.balance > 0:
        roll = rnd.random()
        if roll < 0.25:
            at += dt.timedelta(days=365)
            if at < horizon:
                add(at, cert.event(rnd, "expire", "EXPIRED", at, channel="SYSTEM"))
                cert.balance = Decimal("0.00")
        elif roll < 0.28:
            at += dt.timedelta(days=rnd.randint(1, 60))
            if at < horizon:
                cert.balance = Decimal("0.00")
                add(at, cert.event(rnd, "cancel", "CANCELLED", at, channel="SYSTEM"))
