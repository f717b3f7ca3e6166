"""Support tools (issue 16): balance adjustments with a second approver, and balance transfers.

- ``balance_adjustment``: one row per adjustment support asks for, with its reason, author
  (``requested_by``) and approver (``decided_by``). ``needs_approval`` rows (above
  ``ADJUST_APPROVAL_LIMIT``) wait as ``PENDING_APPROVAL`` until ``expires_at``; the four-eyes
  rule is also a CHECK: an approved one was decided by another client than its author.
- ``certificate_transfer``: one row per transfer. A certificate gives its balance away once
  (it ends CANCELLED) and receives one once (it was AVAILABLE): both are UNIQUE.
- ``gift_certificate_operation``: new kinds ``ADJUST_CREDIT``/``ADJUST_DEBIT`` (naming their
  adjustment) and ``TRANSFER_OUT``/``TRANSFER_IN`` (naming their transfer), with their signs,
  so that every transfer's rows sum to zero in one query.
"""

REASONS = "'SUPPORT_CORRECTION', 'COMPLIMENTARY', 'DAMAGED_CARD', 'FRAUD_RECOVERY', 'OTHER'"

SQL = f"""
CREATE TABLE balance_adjustment (
    id              text PRIMARY KEY,
    certificate_id  bigint NOT NULL REFERENCES gift_certificate (id),
    direction       text NOT NULL CHECK (direction IN ('CREDIT', 'DEBIT')),
    amount          numeric(14, 2) NOT NULL CHECK (amount > 0),
    currency        char(3) NOT NULL,
    reason          text NOT NULL CHECK (reason IN ({REASONS})),
    comment         text,
    needs_approval  boolean NOT NULL,
    status          text NOT NULL
                        CHECK (status IN ('PENDING_APPROVAL', 'APPLIED', 'REJECTED', 'EXPIRED')),
    requested_by    text NOT NULL,
    request_id      text,
    requested_at    timestamptz NOT NULL,
    expires_at      timestamptz,
    decided_by      text,
    decided_at      timestamptz,
    decision_comment text,
    CONSTRAINT adjustment_pending_expires CHECK (NOT needs_approval OR expires_at IS NOT NULL),
    CONSTRAINT adjustment_at_once_applied CHECK (needs_approval OR status = 'APPLIED'),
    CONSTRAINT adjustment_decided CHECK ((status = 'PENDING_APPROVAL') = (decided_at IS NULL)),
    -- four eyes: an adjustment that needed approval was approved by someone else
    CONSTRAINT adjustment_four_eyes CHECK (NOT needs_approval OR status <> 'APPLIED'
        OR (decided_by IS NOT NULL AND decided_by <> requested_by))
);
CREATE INDEX balance_adjustment_status_idx ON balance_adjustment (status, requested_at, id);
CREATE INDEX balance_adjustment_certificate_idx ON balance_adjustment (certificate_id, id);

CREATE TABLE certificate_transfer (
    id                   text PRIMARY KEY,
    from_certificate_id  bigint NOT NULL UNIQUE REFERENCES gift_certificate (id),
    to_certificate_id    bigint NOT NULL UNIQUE REFERENCES gift_certificate (id),
    amount               numeric(14, 2) NOT NULL CHECK (amount > 0),
    currency             char(3) NOT NULL,
    reason               text NOT NULL,
    actor                text NOT NULL,
    request_id           text,
    created_at           timestamptz NOT NULL,
    CONSTRAINT transfer_to_another CHECK (from_certificate_id <> to_certificate_id)
);

ALTER TABLE gift_certificate_operation
    ADD COLUMN adjustment_id text REFERENCES balance_adjustment (id),
    ADD COLUMN transfer_id text REFERENCES certificate_transfer (id),
    DROP CONSTRAINT gift_certificate_operation_kind_check,
    DROP CONSTRAINT operation_sign,
    ADD CONSTRAINT gift_certificate_operation_kind_check CHECK (kind IN ('ISSUE', 'REDEEM',
        'REFUND_CREDIT', 'PURCHASE_REFUND', 'ADJUST_CREDIT', 'ADJUST_DEBIT', 'TRANSFER_IN',
        'TRANSFER_OUT')),
    -- credits are positive, debits negative
    ADD CONSTRAINT operation_sign CHECK (
        (kind IN ('ISSUE', 'REFUND_CREDIT', 'ADJUST_CREDIT', 'TRANSFER_IN') AND amount > 0)
        OR (kind IN ('REDEEM', 'PURCHASE_REFUND', 'ADJUST_DEBIT', 'TRANSFER_OUT') AND amount < 0)),
    -- an adjustment or transfer row names its operation, and only those rows do
    ADD CONSTRAINT operation_names_adjustment
        CHECK ((kind IN ('ADJUST_CREDIT', 'ADJUST_DEBIT')) = (adjustment_id IS NOT NULL)),
    ADD CONSTRAINT operation_names_transfer
        CHECK ((kind IN ('TRANSFER_IN', 'TRANSFER_OUT')) = (transfer_id IS NOT NULL));
CREATE UNIQUE INDEX gift_certificate_operation_adjustment_key
    ON gift_certificate_operation (adjustment_id) WHERE adjustment_id IS NOT NULL;
CREATE UNIQUE INDEX gift_certificate_operation_transfer_key
    ON gift_certificate_operation (transfer_id, kind) WHERE transfer_id IS NOT NULL;
"""


def up(migrator, db):
    db.execute_sql(SQL)


def down(migrator, db):
    db.execute_sql("""
        DROP INDEX gift_certificate_operation_transfer_key, gift_certificate_operation_adjustment_key;
        ALTER TABLE gift_certificate_operation
            DROP CONSTRAINT operation_names_transfer,
            DROP CONSTRAINT operation_names_adjustment,
            DROP CONSTRAINT operation_sign,
            DROP CONSTRAINT gift_certificate_operation_kind_check,
            DROP COLUMN transfer_id,
            DROP COLUMN adjustment_id,
            ADD CONSTRAINT gift_certificate_operation_kind_check
                CHECK (kind IN ('ISSUE', 'REDEEM', 'REFUND_CREDIT', 'PURCHASE_REFUND')),
            ADD CONSTRAINT operation_sign CHECK ((kind IN ('ISSUE', 'REFUND_CREDIT') AND amount > 0)
                OR (kind IN ('REDEEM', 'PURCHASE_REFUND') AND amount < 0));
        DROP TABLE certificate_transfer, balance_adjustment;
    """)
