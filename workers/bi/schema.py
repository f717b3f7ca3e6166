"""The mart's tables, in a PostgreSQL schema ``bi`` of their own, and its database connection.

The ``bi`` process creates them itself at start (:func:`ensure_schema`, idempotent, under an
advisory lock so two processes starting at once do not race). The mart may live in a database
of its own: ``BI_DATABASE_URL``, by default the service's ``DATABASE_URL``.
"""
from __future__ import annotations

import os

import psycopg2
import psycopg2.extensions

from models.domain import locks

DDL = """
CREATE SCHEMA IF NOT EXISTS bi;

-- one row per stream event (idempotent on eventId)
CREATE TABLE IF NOT EXISTS bi.fact_event (
    event_id        text PRIMARY KEY,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    event_type      text NOT NULL,
    channel         text NOT NULL,
    status          text NOT NULL,
    cert_status     text,
    code            text,
    cert_channel    text,
    order_id        text,
    correlation_id  text,
    causation_id    text,
    sequence        integer,
    nominal         numeric(14,2),
    amount          numeric(14,2),
    balance         numeric(14,2),
    currency        text,
    occurred_at     timestamptz NOT NULL,
    event_date      date NOT NULL,
    booked_date     date NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    applied         boolean NOT NULL,
    sold_amount     numeric(14,2) NOT NULL DEFAULT 0,
    redeemed_amount numeric(14,2) NOT NULL DEFAULT 0,
    refunded_buyer_amount numeric(14,2) NOT NULL DEFAULT 0,
    refunded_cert_amount  numeric(14,2) NOT NULL DEFAULT 0,
    breakage_amount numeric(14,2) NOT NULL DEFAULT 0,
    cancelled_amount numeric(14,2) NOT NULL DEFAULT 0,
    adjusted_amount numeric(14,2) NOT NULL DEFAULT 0,
    balance_delta   numeric(14,2) NOT NULL DEFAULT 0,
    liability_delta numeric(14,2) NOT NULL DEFAULT 0,
    payload         jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS fact_event_code ON bi.fact_event (code, sequence);
CREATE INDEX IF NOT EXISTS fact_event_dates ON bi.fact_event (event_date, channel, currency);

-- the current state of each certificate
CREATE TABLE IF NOT EXISTS bi.certificate (
    code          text PRIMARY KEY,
    status        text NOT NULL,
    balance       numeric(14,2) NOT NULL,
    nominal       numeric(14,2),
    currency      text NOT NULL,
    channel       text,
    kind          text,
    order_id      text,
    issued_at     text,
    expires_at    text,
    last_sequence integer NOT NULL,
    last_event_id text,
    last_event_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- daily snapshots per day x channel x currency; a closed day never changes
CREATE TABLE IF NOT EXISTS bi.daily_snapshot (
    day                   date NOT NULL,
    channel               text NOT NULL,
    currency              text NOT NULL,
    sold_count            integer NOT NULL DEFAULT 0,
    sold_amount           numeric(14,2) NOT NULL DEFAULT 0,
    redeemed_count        integer NOT NULL DEFAULT 0,
    redeemed_amount       numeric(14,2) NOT NULL DEFAULT 0,
    refunded_buyer_count  integer NOT NULL DEFAULT 0,
    refunded_buyer_amount numeric(14,2) NOT NULL DEFAULT 0,
    refunded_cert_count   integer NOT NULL DEFAULT 0,
    refunded_cert_amount  numeric(14,2) NOT NULL DEFAULT 0,
    expired_count         integer NOT NULL DEFAULT 0,
    breakage_amount       numeric(14,2) NOT NULL DEFAULT 0,
    cancelled_count       integer NOT NULL DEFAULT 0,
    cancelled_amount      numeric(14,2) NOT NULL DEFAULT 0,
    adjusted_amount       numeric(14,2) NOT NULL DEFAULT 0,
    locked_count          integer NOT NULL DEFAULT 0,
    blocked_count         integer NOT NULL DEFAULT 0,
    liability_change      numeric(14,2) NOT NULL DEFAULT 0,
    locked_change         integer NOT NULL DEFAULT 0,
    liability             numeric(14,2) NOT NULL DEFAULT 0,
    locked_end            integer NOT NULL DEFAULT 0,
    closed                boolean NOT NULL DEFAULT false,
    closed_at             timestamptz,
    PRIMARY KEY (day, channel, currency)
);

-- the liability roll-forward line of each fact (workers.bi.finance.flow_of)
ALTER TABLE bi.fact_event ADD COLUMN IF NOT EXISTS flow text;
CREATE INDEX IF NOT EXISTS fact_event_flows ON bi.fact_event (booked_date, currency) WHERE flow IS NOT NULL;

-- pool levels per segment (currency, kind, nominal or OPEN) as the stream tells them
-- (contract revision 3), and their daily history; they replace pool_level and pool_daily,
-- which keyed a segment without its kind and counted changes
DROP TABLE IF EXISTS bi.pool_level, bi.pool_daily;
CREATE TABLE IF NOT EXISTS bi.pool_segment (
    currency   text NOT NULL,
    kind       text NOT NULL,
    nominal    text NOT NULL,
    level      integer,
    counted_at timestamptz,
    as_of      timestamptz,
    PRIMARY KEY (currency, kind, nominal)
);
CREATE TABLE IF NOT EXISTS bi.pool_segment_daily (
    day       date NOT NULL,
    currency  text NOT NULL,
    kind      text NOT NULL,
    nominal   text NOT NULL,
    reserved  integer NOT NULL DEFAULT 0,
    released  integer NOT NULL DEFAULT 0,
    blocked   integer NOT NULL DEFAULT 0,
    level_end integer,
    level_at  timestamptz,
    closed    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (day, currency, kind, nominal)
);

-- what the mart saw on the input topics (no phone number, no CVC)
CREATE TABLE IF NOT EXISTS bi.order_event (
    event_id    text PRIMARY KEY,
    order_id    text NOT NULL,
    event_type  text NOT NULL,
    channel     text NOT NULL,
    currency    text NOT NULL,
    total       numeric(14,2) NOT NULL,
    occurred_at timestamptz NOT NULL,
    lines       jsonb NOT NULL,
    tenders     jsonb NOT NULL,
    refund_lines jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS order_event_order ON bi.order_event (order_id);
CREATE TABLE IF NOT EXISTS bi.payment_event (
    event_id     text PRIMARY KEY,
    order_id     text NOT NULL,
    payment_id   text NOT NULL,
    event_type   text NOT NULL,
    channel      text NOT NULL,
    amount       numeric(14,2) NOT NULL,
    currency     text NOT NULL,
    method       text NOT NULL,
    gc_code      text,
    gc_operation text,
    gc_amount    numeric(14,2),
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS payment_event_order ON bi.payment_event (order_id);
CREATE TABLE IF NOT EXISTS bi.client_event (
    event_id     text PRIMARY KEY,
    client_id    text NOT NULL,
    event_type   text NOT NULL,
    certificate_code text,
    notification_status text,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- what the mart refused or found wrong in its input
CREATE TABLE IF NOT EXISTS bi.anomaly (
    id              bigserial PRIMARY KEY,
    anomaly_key     text NOT NULL UNIQUE,
    kind            text NOT NULL,
    topic           text NOT NULL,
    kafka_partition integer,
    kafka_offset    bigint,
    event_id        text,
    code            text,
    expected        integer,
    got             integer,
    detail          text NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now()
);
"""


def database_url() -> str:
    """``BI_DATABASE_URL``, else the service's ``DATABASE_URL``."""
    url = os.environ.get("BI_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("neither BI_DATABASE_URL nor DATABASE_URL is set")
    return url


def connect(url: str | None = None, application_name: str = "gcp-bi"):
    """A psycopg2 connection to the mart's database (transactions are explicit)."""
    from models.store.db import connect_params

    params = connect_params(url or database_url())
    params.setdefault("connect_timeout", 5)
    return psycopg2.connect(application_name=application_name, **params)


def ensure_schema(conn) -> None:
    """Create the ``bi`` schema and its tables if missing (safe to run twice, concurrently)."""
    with conn:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (locks.BI_SCHEMA,))
            cur.execute(DDL)
