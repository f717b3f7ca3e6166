"""The mart's business rules: pure functions, standard library only, no I/O.

The consumer (:mod:`workers.bi.consumer`) and the mart's writer (:mod:`workers.bi.mart`) only
turn Kafka messages into calls of these functions and their results into rows. Everything that decides a figure lives here:

- :func:`check_sequence`: a certificate's ``sequence`` must count 1, 2, 3, ... A *gap* (a number
  skipped) is an anomaly but the event is still applied: its payload carries the certificate's
  absolute status and balance, so the mart's state heals. A *repeat* (a number already seen,
  under another ``eventId``) is an anomaly and is not applied, so nothing is counted twice.
- :func:`apply_event`: the certificate's next state and the event's measures (sold, redeemed,
  refunded, breakage, ...). Outstanding liability moves by the difference of the
  certificate's liability before and after (:func:`liability_of`), so every kind of event,
  present or future (``adjust``, ``transfer``), moves it correctly.
- :func:`book_date`: a day whose snapshot is closed never changes; a late event is booked on
  the first open day (the day it arrives), and keeps its own event date.
- :func:`fold` and :func:`roll`: daily figures per day x channel x currency and the running
  end-of-day stocks (liability, locked certificates).
- :func:`pool_key`, :func:`pool_level_of`: the pool level per segment (currency, kind, nominal),
  as the events of contract revision 3 tell it (absolute, never counted from changes).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

ZERO = Decimal("0.00")
CENT = Decimal("0.01")
#: Statuses in which the retailer owes the certificate's remaining balance to someone.
LIABILITY_STATUSES = frozenset({"ISSUED", "PARTIALLY_REDEEMED", "REDEEMED", "LOCKED",
                                "REFUND_PENDING", "REFUND_PENDING_DETAILS"})
#: Events that carry no certificate and no sequence.
UNSEQUENCED = frozenset({"issue.blocked", "error", "alert"})
#: Money movements whose payload ``amount`` debits the certificate (a redemption).
REDEMPTIONS = frozenset({"redeem.partial", "redeem.full", "authorization.captured"})
#: The pool key of open-value codes.
OPEN = "OPEN"

# anomaly kinds
SEQUENCE_GAP = "SEQUENCE_GAP"
SEQUENCE_REPEAT = "SEQUENCE_REPEAT"
SCHEMA_INVALID = "SCHEMA_INVALID"
UNPROCESSABLE = "UNPROCESSABLE"


def money(value: object) -> Decimal | None:
    """A contract money string (``"1500.00"``) as a Decimal with two places; None stays None."""
    if value is None or value == "":
        return None
    return Decimal(str(value)).quantize(CENT)


def parse_time(value: str) -> dt.datetime:
    """RFC 3339 (``...Z`` or an offset) to an aware UTC datetime."""
    ts = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    return ts.astimezone(dt.timezone.utc)


# ---- the certificate ------------------------------------------------------------------------

@dataclass(frozen=True)
class CertState:
    """What the mart knows of one certificate."""

    code: str
    status: str
    balance: Decimal = ZERO
    nominal: Decimal | None = None
    currency: str = ""
    channel: str | None = None   # the channel that sold it
    kind: str | None = None
    order_id: str | None = None  # the order that bought it
    issued_at: str | None = None
    expires_at: str | None = None
    last_sequence: int = 0
    last_event_id: str | None = None
    last_event_at: dt.datetime | None = None


def liability_of(state: CertState | None) -> Decimal:
    """The balance owed for a certificate in this state (0 outside the liability statuses)."""
    if state is None or state.status not in LIABILITY_STATUSES:
        return ZERO
    return state.balance


def locked_of(state: CertState | None) -> int:
    return 1 if state is not None and state.status == "LOCKED" else 0


@dataclass(frozen=True)
class Measures:
    """What one event adds to the daily figures. Amounts are Decimal, counts int."""

    sold_count: int = 0
    sold_amount: Decimal = ZERO
    redeemed_count: int = 0
    redeemed_amount: Decimal = ZERO
    refunded_buyer_count: int = 0
    refunded_buyer_amount: Decimal = ZERO
    refunded_cert_count: int = 0
    refunded_cert_amount: Decimal = ZERO
    expired_count: int = 0
    breakage_amount: Decimal = ZERO
    cancelled_count: int = 0
    cancelled_amount: Decimal = ZERO
    adjusted_amount: Decimal = ZERO       # signed: credits minus debits
    locked_count: int = 0                 # lock events
    blocked_count: int = 0                # issue.blocked events
    balance_delta: Decimal = ZERO         # the change of remainingBalance (the ledger's movement)
    liability_delta: Decimal = ZERO       # the change of the outstanding liability
    locked_delta: int = 0                 # +1 locked, -1 unlocked (or cancelled while locked)


#: Fields of :class:`Measures` that are flows (booked on the event's channel).
FLOW_FIELDS = tuple(f.name for f in dataclasses.fields(Measures)
                    if f.name not in ("liability_delta", "locked_delta", "balance_delta"))
#: Fields that are money.
MONEY_FIELDS = frozenset(f.name for f in dataclasses.fields(Measures) if f.type in ("Decimal", Decimal))


@dataclass(frozen=True)
class Anomaly:
    kind: str
    detail: str
    code: str | None = None
    event_id: str | None = None
    expected: int | None = None
    got: int | None = None


def check_sequence(last_seen: int, sequence: int | None) -> tuple[str | None, bool]:
    """``(anomaly kind or None, apply?)`` for an event numbered ``sequence`` of a certificate
    whose last applied event was ``last_seen`` (0: none seen yet)."""
    if sequence is None:
        return None, True
    if sequence <= last_seen:
        return SEQUENCE_REPEAT, False
    if sequence != last_seen + 1:
        return SEQUENCE_GAP, True
    return None, True


def state_from_event(prev: CertState | None, event: dict) -> CertState:
    """The certificate after ``event`` (its payload carries the absolute status and balance)."""
    p = event["payload"]
    base = prev or CertState(code=p["code"], status=p["status"])
    sold_channel = base.channel
    if event["eventType"] in ("issue", "transfer") and p.get("status") == "ISSUED":
        sold_channel = p.get("channel") or event.get("channel")
    elif sold_channel is None:
        sold_channel = p.get("channel") or (event.get("channel") if event.get("channel") != "SYSTEM" else None)
    if p.get("status") in ("AVAILABLE",):  # back in the pool: sold by nobody
        sold_channel = None
    nominal = money(p.get("nominal")) if "nominal" in p else base.nominal
    return dataclasses.replace(
        base, status=p["status"], balance=money(p["remainingBalance"]), nominal=nominal,
        currency=p.get("currency") or base.currency, channel=sold_channel,
        kind=p.get("kind") or base.kind,
        order_id=(p.get("orderId") if event["eventType"] in ("reserve", "issue") else base.order_id),
        issued_at=p.get("issuedAt", base.issued_at), expires_at=p.get("expiresAt", base.expires_at),
        last_sequence=max(base.last_sequence, event.get("sequence") or 0),
        last_event_id=event["eventId"], last_event_at=parse_time(event["occurredAt"]))


def measures_of(prev: CertState | None, new: CertState | None, event: dict) -> Measures:
    """The figures one applied event adds. ``new`` is None for events without a certificate."""
    etype, p = event["eventType"], event.get("payload") or {}
    if etype == "issue.blocked":
        return Measures(blocked_count=1)
    if new is None:
        return Measures()
    amount = money(p.get("amount"))
    m: dict = {}
    if etype == "issue":
        m.update(sold_count=1, sold_amount=new.nominal if new.nominal is not None else new.balance)
    elif etype in REDEMPTIONS and amount is not None:
        m.update(redeemed_count=1, redeemed_amount=amount)
    elif etype == "refund" and amount is not None:
        if new.status == "REFUNDED":
            m.update(refunded_buyer_count=1, refunded_buyer_amount=amount)
        elif new.status not in ("REFUND_PENDING", "REFUND_PENDING_DETAILS"):
            m.update(refunded_cert_count=1, refunded_cert_amount=amount)
    elif etype == "expire":
        m.update(expired_count=1, breakage_amount=liability_of(prev))
    elif etype == "cancel":
        m.update(cancelled_count=1, cancelled_amount=liability_of(prev))
    elif etype == "lock":
        m.update(locked_count=1)
    elif etype == "adjust" and amount is not None:
        m.update(adjusted_amount=-amount if p.get("direction") == "DEBIT" else amount)
    previous_balance = prev.balance if prev is not None else ZERO
    m.update(balance_delta=new.balance - previous_balance,
             liability_delta=liability_of(new) - liability_of(prev),
             locked_delta=locked_of(new) - locked_of(prev))
    return Measures(**m)


@dataclass(frozen=True)
class Applied:
    """The outcome of one stream event."""

    state: CertState | None      # the certificate after it (None: no certificate)
    measures: Measures
    applied: bool
    anomaly: Anomaly | None = None


def apply_event(prev: CertState | None, event: dict) -> Applied:
    """Apply one schema-valid stream event to what the mart knows of its certificate."""
    etype = event["eventType"]
    if etype in UNSEQUENCED or "code" not in (event.get("payload") or {}):
        return Applied(None, measures_of(None, None, event), True)
    code = event["payload"]["code"]
    last = prev.last_sequence if prev is not None else 0
    kind, apply = check_sequence(last, event.get("sequence"))
    anomaly = None
    if kind is not None:
        expected = last + 1
        anomaly = Anomaly(kind, f"{etype} of {code}: sequence {event.get('sequence')}, expected {expected}",
                          code=code, event_id=event["eventId"], expected=expected, got=event.get("sequence"))
    if not apply:
        return Applied(prev, Measures(), False, anomaly)
    new = state_from_event(prev, event)
    return Applied(new, measures_of(prev, new, event), True, anomaly)


# ---- days -----------------------------------------------------------------------------------

def book_date(event_date: dt.date, arrival_date: dt.date, closed_through: dt.date | None) -> dt.date:
    """The day an event is booked on: its own, unless that day's snapshot is closed; then the
    day it arrived (never a closed day either)."""
    if closed_through is None or event_date > closed_through:
        return event_date
    return max(arrival_date, closed_through + dt.timedelta(days=1))


def days_to_close(closed_through: dt.date | None, first_day: dt.date | None, now: dt.datetime,
                  grace: dt.timedelta, caught_up: bool) -> list[dt.date]:
    """The days whose snapshots may be closed now: every day that ended more than ``grace``
    ago, once the mart has caught up with the stream (so a mart that was down books its
    backlog on the events' own days before closing them)."""
    if not caught_up:
        return []
    start = closed_through + dt.timedelta(days=1) if closed_through else first_day
    if start is None:
        return []
    last = (now - grace).date() - dt.timedelta(days=1)
    out = []
    day = start
    while day <= last:
        out.append(day)
        day += dt.timedelta(days=1)
    return out


@dataclass
class DayFigures:
    """One snapshot row: the day's flows plus the end-of-day stocks."""

    flows: dict = field(default_factory=lambda: {name: (ZERO if name in MONEY_FIELDS else 0)
                                                 for name in FLOW_FIELDS})
    liability_change: Decimal = ZERO
    locked_change: int = 0
    liability: Decimal = ZERO     # at the end of the day
    locked_end: int = 0           # certificates LOCKED at the end of the day


def fold(rows: dict, booked: dt.date, channel: str, cert_channel: str | None, currency: str,
         m: Measures) -> dict:
    """Add one event's measures to ``rows`` ({(day, channel, currency): DayFigures}): flows on
    the event's channel, stock changes on the channel that sold the certificate."""
    flows = rows.setdefault((booked, channel, currency), DayFigures())
    for name in FLOW_FIELDS:
        value = getattr(m, name)
        if value:
            flows.flows[name] += value
    if m.liability_delta or m.locked_delta:
        stock = rows.setdefault((booked, cert_channel or channel, currency), DayFigures())
        stock.liability_change += m.liability_delta
        stock.locked_change += m.locked_delta
    return rows


def roll(changes: list[tuple[dt.date, Decimal, int]], opening: tuple[Decimal, int]) -> list[tuple[dt.date, Decimal, int]]:
    """End-of-day (liability, locked) for each day of ``changes`` (sorted by day), from the
    stocks at the end of the last closed day."""
    liability, locked = opening
    out = []
    for day, d_liability, d_locked in sorted(changes):
        liability += d_liability
        locked += d_locked
        out.append((day, liability, locked))
    return out


# ---- the pool -------------------------------------------------------------------------------

#: Currencies reserved for testing (ISO 4217): left out of a finance report unless asked for.
TEST_CURRENCIES = frozenset({"XTS", "XXX"})


def pool_key(event: dict) -> tuple[str, str, str] | None:
    """``(currency, kind, nominal or OPEN)`` of the pool segment an event concerns (as
    ``GET /pool`` keys it), else None. Contract revision 3 names it in ``payload.pool``."""
    etype, p = event["eventType"], event.get("payload") or {}
    if etype not in ("reserve", "release", "issue.blocked"):
        return None
    pool = p.get("pool")
    if isinstance(pool, dict) and pool.get("currency") and pool.get("kind"):
        return (pool["currency"], pool["kind"], pool.get("nominal") or OPEN)
    nominal = p.get("nominal")  # an event of before revision 3: its flows, no level
    return (p.get("currency") or "", p.get("kind") or "ELECTRONIC", nominal if nominal else OPEN)


def pool_level_of(event: dict) -> tuple[int, dt.datetime] | None:
    """The level the event tells of its segment, and when it was counted (``countedAt``, else
    the event's time): the level is taken as it is, never computed from changes. None: the
    event tells no level."""
    pool = (event.get("payload") or {}).get("pool")
    if not isinstance(pool, dict) or not isinstance(pool.get("available"), int):
        return None
    return pool["available"], parse_time(pool.get("countedAt") or event["occurredAt"])


def newer_level(current: tuple[int, dt.datetime] | None, told: tuple[int, dt.datetime] | None):
    """Of two (level, counted at), the one counted last (a level told earlier, arriving later
    from another partition, changes nothing)."""
    if told is None:
        return current
    if current is None or current[1] is None or told[1] >= current[1]:
        return told
    return current


def pool_flows(event: dict) -> dict:
    """What a pool event adds to the pool's daily row."""
    etype = event["eventType"]
    return {"reserved": int(etype == "reserve"), "released": int(etype == "release"),
            "blocked": int(etype == "issue.blocked")}
