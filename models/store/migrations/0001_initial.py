"""Initial schema: certificates, ledger, holds, audit, outbox, inbox, correlation, batches,
HTTP idempotency keys.

The invariants live here as well as in the domain module: a code is unique and never goes
back to the pool once issued; balances and amounts are never negative and never above the
nominal; one reservation per (channel, orderId, lineId); a ledger or outbox row is applied once.
"""

STATUSES = ("'AVAILABLE','RESERVED','ISSUED','PARTIALLY_REDEEMED','REDEEMED','REFUND_PENDING',"
            "'REFUND_PENDING_DETAILS','REFUNDED','LOCKED','CANCELLED','EXPIRED'")

SQL = f"""
CREATE TABLE certificate_batch (
    batch_id    text PRIMARY KEY CHECK (length(batch_id) BETWEEN 1 AND 64),
    kind        text NOT NULL CHECK (kind IN ('ELECTRONIC', 'PHYSICAL')),
    currency    char(3) NOT NULL CHECK (currency ~ '^[A-Z]{{3}}$'),
    loaded_by   text NOT NULL,
    accepted    integer NOT NULL DEFAULT 0 CHECK (accepted >= 0),
    rejected    integer NOT NULL DEFAULT 0 CHECK (rejected >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gift_certificate (
    id                  bigserial PRIMARY KEY,
    code                text NOT NULL CHECK (code ~ '^[A-Z0-9-]{{6,32}}$'),
    batch_id            text NOT NULL REFERENCES certificate_batch (batch_id),
    kind                text NOT NULL CHECK (kind IN ('ELECTRONIC', 'PHYSICAL')),
    currency            char(3) NOT NULL CHECK (currency ~ '^[A-Z]{{3}}$'),
    open_value          boolean NOT NULL,
    nominal             numeric(14, 2) CHECK (nominal > 0),
    remaining_balance   numeric(14, 2) NOT NULL DEFAULT 0 CHECK (remaining_balance >= 0),
    status              text NOT NULL CHECK (status IN ({STATUSES})),
    status_before_lock  text CHECK (status_before_lock IN ({STATUSES})),
    lock_reason         text,
    cancel_reason       text,
    channel             text CHECK (channel IN ('ONLINE_STORE', 'POS')),
    order_id            text,
    line_id             text,
    reserved_at         timestamptz,
    reserved_until      timestamptz,
    issued_at           timestamptz,
    batch_expires_at    timestamptz,
    expires_at          timestamptz,
    cvc_hash            text,
    cvc_encrypted       text,
    cvc_failed_attempts integer NOT NULL DEFAULT 0 CHECK (cvc_failed_attempts >= 0),
    cvc_disclosable     boolean NOT NULL DEFAULT false,
    notification_status text CHECK (notification_status IN
                            ('NOTIFICATION_REQUESTED', 'NOTIFICATION_SENT', 'NOTIFICATION_FAILED')),
    notification_channel text,
    stream_sequence     integer NOT NULL DEFAULT 0 CHECK (stream_sequence >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT gift_certificate_code_key UNIQUE (code),
    -- a code in the pool was never sold and belongs to no order
    CONSTRAINT available_never_sold CHECK (status <> 'AVAILABLE'
        OR (issued_at IS NULL AND order_id IS NULL AND remaining_balance = 0)),
    -- an open-value code has no nominal while it waits in the pool
    CONSTRAINT open_value_unpriced_in_pool CHECK (NOT (open_value AND status = 'AVAILABLE')
        OR nominal IS NULL),
    CONSTRAINT fixed_value_priced CHECK (open_value OR nominal IS NOT NULL),
    CONSTRAINT reserved_has_order CHECK (status <> 'RESERVED'
        OR (order_id IS NOT NULL AND line_id IS NOT NULL AND channel IS NOT NULL)),
    CONSTRAINT balance_within_nominal CHECK (nominal IS NULL OR remaining_balance <= nominal),
    CONSTRAINT locked_remembers_status CHECK ((status = 'LOCKED') = (status_before_lock IS NOT NULL))
);
-- one certificate per order line, whatever its state
CREATE UNIQUE INDEX gift_certificate_order_line_key
    ON gift_certificate (channel, order_id, line_id) WHERE order_id IS NOT NULL;
-- the pool, in loading order, per currency, kind and nominal
CREATE INDEX gift_certificate_pool_idx ON gift_certificate (currency, kind, nominal, id)
    WHERE status = 'AVAILABLE';
CREATE INDEX gift_certificate_status_idx ON gift_certificate (status, id);
CREATE INDEX gift_certificate_order_idx ON gift_certificate (order_id);
CREATE INDEX gift_certificate_channel_issued_idx ON gift_certificate (channel, issued_at);
CREATE INDEX gift_certificate_issued_idx ON gift_certificate (issued_at);
CREATE INDEX gift_certificate_batch_idx ON gift_certificate (batch_id);
CREATE INDEX gift_certificate_reserved_until_idx ON gift_certificate (reserved_until)
    WHERE status = 'RESERVED';
CREATE INDEX gift_certificate_expires_idx ON gift_certificate (expires_at)
    WHERE expires_at IS NOT NULL AND status IN ('ISSUED', 'PARTIALLY_REDEEMED');

CREATE TABLE authorization_hold (
    id              text PRIMARY KEY,
    certificate_id  bigint NOT NULL REFERENCES gift_certificate (id),
    channel         text NOT NULL CHECK (channel IN ('ONLINE_STORE', 'POS')),
    client_id       text NOT NULL,
    order_id        text NOT NULL,
    amount          numeric(14, 2) NOT NULL CHECK (amount > 0),
    captured_amount numeric(14, 2) NOT NULL DEFAULT 0
                        CHECK (captured_amount >= 0 AND captured_amount <= amount),
    currency        char(3) NOT NULL,
    status          text NOT NULL CHECK (status IN ('ACTIVE', 'CAPTURED', 'VOIDED', 'EXPIRED')),
    expires_at      timestamptz NOT NULL,
    confirmed_by    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX authorization_hold_active_idx ON authorization_hold (certificate_id)
    WHERE status = 'ACTIVE';
CREATE INDEX authorization_hold_expiry_idx ON authorization_hold (expires_at)
    WHERE status = 'ACTIVE';
CREATE INDEX authorization_hold_order_idx ON authorization_hold (order_id);

CREATE TABLE gift_certificate_operation (
    id               bigserial PRIMARY KEY,
    certificate_id   bigint NOT NULL REFERENCES gift_certificate (id),
    kind             text NOT NULL CHECK (kind IN ('ISSUE', 'REDEEM', 'REFUND_CREDIT', 'PURCHASE_REFUND')),
    amount           numeric(14, 2) NOT NULL CHECK (amount <> 0),
    balance_after    numeric(14, 2) NOT NULL CHECK (balance_after >= 0),
    currency         char(3) NOT NULL,
    authorization_id text REFERENCES authorization_hold (id),
    order_id         text,
    channel          text,
    op_key           text NOT NULL,
    causation_id     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- the same business operation is applied to the ledger once, ever
    CONSTRAINT gift_certificate_operation_op_key UNIQUE (op_key),
    -- credits are positive, debits negative
    CONSTRAINT operation_sign CHECK ((kind IN ('ISSUE', 'REFUND_CREDIT') AND amount > 0)
        OR (kind IN ('REDEEM', 'PURCHASE_REFUND') AND amount < 0))
);
CREATE INDEX gift_certificate_operation_cert_idx ON gift_certificate_operation (certificate_id, id);

CREATE TABLE audit_log (
    id             bigserial PRIMARY KEY,
    certificate_id bigint REFERENCES gift_certificate (id),
    code           text,
    action         text NOT NULL,
    actor          text NOT NULL,
    channel        text,
    request_id     text,
    correlation_id text,
    before         jsonb,
    after          jsonb,
    details        jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_certificate_idx ON audit_log (certificate_id, id);

CREATE TABLE outbox_event (
    id             bigserial PRIMARY KEY,
    event_id       uuid NOT NULL UNIQUE,
    message_key    text NOT NULL,
    event_type     text NOT NULL,
    channel        text NOT NULL,
    certificate_id bigint REFERENCES gift_certificate (id),
    sequence       integer CHECK (sequence >= 1),
    envelope       jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    CONSTRAINT outbox_event_sequence_key UNIQUE (certificate_id, sequence),
    CONSTRAINT outbox_sequenced CHECK ((certificate_id IS NULL) = (sequence IS NULL))
);
CREATE INDEX outbox_event_unpublished_idx ON outbox_event (id) WHERE published_at IS NULL;

CREATE TABLE inbox_message (
    id            bigserial PRIMARY KEY,
    event_id      text NOT NULL UNIQUE,
    topic         text NOT NULL,
    partition     integer NOT NULL,
    "offset"      bigint NOT NULL,
    message_key   text,
    payload       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'DONE', 'FAILED')),
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error    text,
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz
);
CREATE INDEX inbox_message_pending_idx ON inbox_message (received_at) WHERE status = 'PENDING';

CREATE TABLE sales_order (
    order_id       text PRIMARY KEY,
    channel        text NOT NULL CHECK (channel IN ('ONLINE_STORE', 'POS')),
    currency       char(3) NOT NULL,
    total          numeric(14, 2) NOT NULL CHECK (total >= 0),
    status         text NOT NULL CHECK (status IN ('OPEN', 'PAID', 'CANCELLED', 'REFUNDED')),
    lines          jsonb NOT NULL DEFAULT '[]',
    tenders        jsonb NOT NULL DEFAULT '[]',
    customer       jsonb,
    last_event_id  text,
    paid_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE order_payment (
    id           bigserial PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    order_id     text NOT NULL,
    payment_id   text NOT NULL,
    event_type   text NOT NULL,
    channel      text NOT NULL,
    amount       numeric(14, 2) NOT NULL CHECK (amount >= 0),
    currency     char(3) NOT NULL,
    method       text NOT NULL,
    gc_code      text,
    gc_operation text,
    gc_amount    numeric(14, 2) CHECK (gc_amount >= 0),
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_payment_order_idx ON order_payment (order_id);

CREATE TABLE idempotency_key (
    client_id       text NOT NULL,
    key             text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    method          text NOT NULL,
    path            text NOT NULL,
    request_hash    text NOT NULL,
    status          text NOT NULL CHECK (status IN ('IN_PROGRESS', 'DONE')),
    response_status integer,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, key)
);
CREATE INDEX idempotency_key_created_idx ON idempotency_key (created_at);
"""


def up(migrator, db):
    db.execute_sql(SQL)


def down(migrator, db):
    db.execute_sql("""
        DROP TABLE idempotency_key, order_payment, sales_order, inbox_message, outbox_event,
                   audit_log, gift_certificate_operation, authorization_hold, gift_certificate,
                   certificate_batch CASCADE""")
