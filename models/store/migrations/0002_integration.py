"""Event integration: correlation effects, blocked issues, client profiles, SMS, DLQ replays.

- ``order_effect``: every correlation decision applied to an order, once (primary key), with
  its outcome; the correlation rules read it to know what is already done.
- ``blocked_issue``: paid order lines waiting for the pool (issued oldest first on refill).
- ``client_profile``: the latest phone/email per CRM client (All_Clients), for SMS.
- ``sms_message``: one row per notification request sent through the SMS gateway.
- ``dlq_replay``: DLQ entries sent back through the pump (so `dlq replay` replays once).
- ``inbox_message`` learns when it was last handed to the actors and when it was dead-lettered;
  ``sales_order`` keeps the time of its snapshot, its cancellation and its refunds;
  ``order_payment`` keeps the payment's own time (for ordering refund outcomes).
"""

SQL = """
CREATE TABLE order_effect (
    order_id      text NOT NULL,
    effect_key    text NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('APPLIED', 'REFUSED', 'SKIPPED', 'BLOCKED')),
    detail        text,
    causation_id  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, effect_key)
);

CREATE TABLE blocked_issue (
    id            bigserial PRIMARY KEY,
    order_id      text NOT NULL,
    line_id       text NOT NULL,
    channel       text NOT NULL CHECK (channel IN ('ONLINE_STORE', 'POS')),
    nominal       numeric(14, 2) NOT NULL CHECK (nominal > 0),
    currency      char(3) NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('ELECTRONIC', 'PHYSICAL')),
    status        text NOT NULL CHECK (status IN ('BLOCKED', 'ISSUED', 'CANCELLED')),
    code          text,
    causation_id  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz,
    CONSTRAINT blocked_issue_line_key UNIQUE (order_id, line_id)
);
CREATE INDEX blocked_issue_waiting_idx ON blocked_issue (id) WHERE status = 'BLOCKED';

CREATE TABLE client_profile (
    client_id     text PRIMARY KEY,
    phone         text,
    email         text,
    occurred_at   timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sms_message (
    id                     bigserial PRIMARY KEY,
    notification_event_id  text NOT NULL UNIQUE,
    code                   text NOT NULL,
    status                 text NOT NULL CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts               integer NOT NULL DEFAULT 0,
    last_error             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    sent_at                timestamptz
);

CREATE TABLE dlq_replay (
    dlq_id        text PRIMARY KEY,
    source_topic  text NOT NULL,
    event_id      text,
    replayed_at   timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE inbox_message
    ADD COLUMN dispatched_at timestamptz,
    ADD COLUMN dead_lettered_at timestamptz;
CREATE INDEX inbox_message_dispatch_idx ON inbox_message (dispatched_at) WHERE status = 'PENDING';
-- the earlier pending messages of one key, handled first (per-key order)
CREATE INDEX inbox_message_key_order_idx ON inbox_message (topic, partition, message_key, "offset")
    WHERE status = 'PENDING';
CREATE INDEX inbox_message_dead_idx ON inbox_message (id)
    WHERE status = 'FAILED' AND dead_lettered_at IS NULL;

ALTER TABLE sales_order
    ADD COLUMN snapshot_at timestamptz,
    ADD COLUMN cancelled_event_id text,
    ADD COLUMN refunds jsonb NOT NULL DEFAULT '[]';

ALTER TABLE order_payment ADD COLUMN occurred_at timestamptz;
"""


def up(migrator, db):
    db.execute_sql(SQL)


def down(migrator, db):
    db.execute_sql("""
        ALTER TABLE order_payment DROP COLUMN occurred_at;
        ALTER TABLE sales_order DROP COLUMN snapshot_at, DROP COLUMN cancelled_event_id,
                                DROP COLUMN refunds;
        ALTER TABLE inbox_message DROP COLUMN dispatched_at, DROP COLUMN dead_lettered_at;
        DROP TABLE dlq_replay, sms_message, client_profile, blocked_issue, order_effect;
    """)
