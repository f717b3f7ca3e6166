"""``verify``: the contract's invariants (section 2) recomputed from the database, and with
``--stream`` from ``GiftCertificates.Stream``; every violation with its rule and its figures.

Each check is one set-based query over a whole table (no loop over rows in Python), run in one
``REPEATABLE READ`` snapshot, so the checks see the same moment and a busy service is no
false alarm. The rules (``rule subject: figures`` on one line each):

Invariant 1, a code is sold at most once:
- ``sold_once.order_line``: two certificates reserved or sold for one channel + order + line.
- ``sold_once.code``: a certificate with more than one ``ISSUE`` ledger row or ``issue`` event,
  or whose ``ISSUE`` row names another order than the certificate's.

Invariant 2, the balance (ledger kinds: ``ISSUE`` and ``TRANSFER_IN`` open a balance at the
nominal; ``REDEEM``, ``PURCHASE_REFUND``, ``ADJUST_DEBIT``, ``TRANSFER_OUT`` take from it;
``REFUND_CREDIT``, ``ADJUST_CREDIT`` give back):
- ``balance.ledger``: ``remainingBalance`` is not the sum of the certificate's ledger rows.
- ``balance.running``: a ledger row's ``balance_after`` is not the running sum up to it (the
  first such row of a certificate: a row before it was changed or deleted).
- ``balance.formula``: for a sold certificate, ``remainingBalance`` is not nominal − redeemed +
  refunded-to-certificate − refunded-to-buyer ± adjustments − transferred out.
- ``balance.negative``, ``balance.above_nominal``.
- ``adjustment.ledger``: an ``APPLIED`` adjustment without exactly one ledger row of its signed
  amount on its certificate, or another one with a ledger row.
- ``transfer.unbalanced``: a transfer whose ledger rows are not one ``TRANSFER_OUT`` on the
  source and one ``TRANSFER_IN`` of its amount on the target, summing to zero
  (docs/support-tools.md).

Invariant 3: ``available.negative``: balance − the sum of ``ACTIVE`` holds is below zero.

Invariant 4, every state change is in the audit trail and in the outbox:
- ``stream.sequence``: a certificate's outbox ``sequence`` values are not exactly 1..n with n its
  ``stream_sequence`` (the missing numbers are listed).
- ``stream.last_state``: the certificate's status or balance is not what its last event says (a
  change that reached no event), or it left the pool without any event.
- ``stream.ledger``: a ledger row with no event of its kind on its certificate in its transaction.
- ``audit.missing``: an outbox event with no audit row (same certificate, action, transaction).
- ``outbox.missing``: an audited state change with no outbox event.
- ``stream.key``: an ``error`` or ``alert`` not keyed by the certificate it names, else the order
  it names, else a subject of its own (contract section 4: ``models.domain.alert_key``).

With ``--stream``, the topic read from its first offset to its end:
- ``stream.missing``: a published outbox event not on the stream.
- ``stream.duplicate``: an ``eventId`` on the stream more than once.
- ``stream.unknown``: an event on the stream the outbox does not have, or with another
  ``outboxId`` header than its row's id.
- ``stream.order``: a certificate's events on the stream are not ``sequence`` 1, 2, 3 ... in order.
- ``stream.incomplete``: the end of a partition was not reached in time.

Invariant 5: ``order.not_issued``: an order paid in full (not cancelled; its captured payments,
each ``paymentId`` once, in the order's currency reach its total) with a gift-certificate line
that has neither a sold certificate nor a ``blocked_issue`` row. (A line whose issue was refused,
``order_effect`` outcome ``REFUSED``, was raised to support as an alert or error and is not
counted again here.)

Time-driven work keeps up:
- ``hold.overdue``: an ``ACTIVE`` hold past ``expires_at`` + ``SCHEDULER_INTERVAL_MS`` + grace.
- ``inbox.stuck``: an inbox row ``PENDING`` longer than ``INBOX_SWEEP_AFTER_MS`` + grace.

:func:`verify` takes an optional :class:`Scope` (certificate codes, order ids, inbox event ids):
a check then only looks at those rows (the tests use it on a shared database).

The checks of the database are in :mod:`workers.verify.database`, those of the stream in
:mod:`workers.verify.stream`; :mod:`workers.verify.common` has what they share.
"""
from __future__ import annotations

from collections import Counter

from workers.verify.common import DEFAULT_GRACE_MS, Scope, Violation, _rows
from workers.verify.database import (
    check_adjustments,
    check_alert_keys,
    check_available,
    check_balances,
    check_holds,
    check_inbox,
    check_orders,
    check_outbox,
    check_sold_once,
    check_transfers,
)
from workers.verify.stream import StreamRecord, check_stream, read_stream

__all__ = ["DEFAULT_GRACE_MS", "Scope", "StreamRecord", "Violation", "check_adjustments", "check_alert_keys",
           "check_available", "check_balances", "check_holds", "check_inbox", "check_orders", "check_outbox",
           "check_sold_once", "check_stream", "check_transfers", "connect", "read_stream", "summary", "verify"]


# ---- all of them --------------------------------------------------------------------------

def connect():
    """A read-only connection of its own whose transactions are REPEATABLE READ: each check run
    sees one snapshot, whatever the service commits meanwhile."""
    import psycopg2

    from config import get_settings
    from models.store.db import connect_params

    params = connect_params(get_settings().database_url)
    params.setdefault("connect_timeout", 5)
    conn = psycopg2.connect(application_name="gcp-verify", **params)
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    return conn


def verify(conn=None, scope: Scope | None = None, stream: bool = False,
           grace_ms: int = DEFAULT_GRACE_MS, stream_timeout: float = 60.0) -> list[Violation]:
    """Every violation. Without ``conn``, on a connection of its own (see :func:`connect`);
    with one (a psycopg2 connection), in whatever transaction it is in.

    With ``stream``, the topic is read first and the database after, so every event on the
    stream is in the snapshot; an outbox row counts as published when it was marked so before
    the watermarks were read."""
    from config import get_settings

    settings = get_settings()
    own = conn is None
    if own:
        conn = connect()
    try:
        records: list[StreamRecord] = []
        stream_problems: list[Violation] = []
        read_since = None
        if stream:
            with conn.cursor() as cur:
                read_since = _rows(cur, "SELECT clock_timestamp()")[0][0]
            if own:
                conn.rollback()  # the snapshot of the checks starts after the stream is read
            records, stream_problems = read_stream(settings.topic_stream, stream_timeout)
        with conn.cursor() as cur:
            out: list[Violation] = []
            out += check_sold_once(cur, scope)
            out += check_balances(cur, scope)
            out += check_available(cur, scope)
            out += check_adjustments(cur, scope)
            out += check_transfers(cur, scope)
            out += check_outbox(cur, scope)
            out += check_orders(cur, scope)
            out += check_holds(cur, scope, settings.scheduler_interval_ms, grace_ms)
            out += check_inbox(cur, scope, settings.inbox_sweep_after_ms, grace_ms)
            if stream:
                out += stream_problems
                out += check_stream(cur, records, read_since, scope)
        return out
    finally:
        if own:
            conn.rollback()
            conn.close()


def summary(violations: list[Violation]) -> str:
    if not violations:
        return "no violations"
    by_rule = Counter(v.rule for v in violations)
    return (f"{len(violations)} violation(s): "
            + ", ".join(f"{rule} {n}" for rule, n in sorted(by_rule.items())))
