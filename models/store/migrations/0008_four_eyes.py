"""Four eyes that cannot be walked around (issue 27; contract revision 3, section 3).

- ``requested_identity`` / ``decided_identity`` on ``balance_adjustment``: who asked and who
  decided, as the configured ``ADMIN_IDENTITY_CLAIM`` names them (``sub`` by default). The
  four-eyes CHECK compares them case-insensitively ("Alice" and "alice" are one person).
- ``transfer_request``: a transfer whose amount, with what the certificate already moved without
  a second approver within ``ADJUST_APPROVAL_WINDOW``, is above ``ADJUST_APPROVAL_LIMIT`` waits
  here as ``PENDING_APPROVAL``. Once another admin approves it, it is carried out and its
  ``certificate_transfer`` row takes the same id.
- ``certificate_transfer.approved_by``: the second admin of a transfer that needed one (NULL:
  applied at once, so it counts towards the window's sum).
"""

SQL = """
ALTER TABLE balance_adjustment
    ADD COLUMN requested_identity text,
    ADD COLUMN decided_identity text;
UPDATE balance_adjustment SET requested_identity = requested_by, decided_identity = decided_by;
ALTER TABLE balance_adjustment
    ALTER COLUMN requested_identity SET NOT NULL,
    DROP CONSTRAINT adjustment_four_eyes,
    ADD CONSTRAINT adjustment_four_eyes CHECK (NOT needs_approval OR status <> 'APPLIED'
        OR (decided_identity IS NOT NULL AND lower(decided_identity) <> lower(requested_identity)));
-- the window's sum: what a certificate moved without a second approver lately
CREATE INDEX balance_adjustment_window_idx ON balance_adjustment (certificate_id, requested_at)
    WHERE NOT needs_approval;

CREATE TABLE transfer_request (
    id                  text PRIMARY KEY,
    from_certificate_id bigint NOT NULL REFERENCES gift_certificate (id),
    to_code             text,
    amount              numeric(14, 2) NOT NULL CHECK (amount > 0),
    currency            char(3) NOT NULL,
    reason              text NOT NULL,
    status              text NOT NULL
                            CHECK (status IN ('PENDING_APPROVAL', 'APPLIED', 'REJECTED', 'EXPIRED')),
    requested_by        text NOT NULL,
    requested_identity  text NOT NULL,
    request_id          text,
    requested_at        timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    decided_by          text,
    decided_identity    text,
    decided_at          timestamptz,
    decision_comment    text,
    CONSTRAINT transfer_request_decided CHECK ((status = 'PENDING_APPROVAL') = (decided_at IS NULL)),
    CONSTRAINT transfer_request_four_eyes CHECK (status <> 'APPLIED'
        OR (decided_identity IS NOT NULL AND lower(decided_identity) <> lower(requested_identity)))
);
CREATE INDEX transfer_request_status_idx ON transfer_request (status, requested_at, id);
CREATE INDEX transfer_request_certificate_idx ON transfer_request (from_certificate_id, id);

ALTER TABLE certificate_transfer ADD COLUMN approved_by text;
CREATE INDEX certificate_transfer_window_from_idx ON certificate_transfer (from_certificate_id, created_at)
    WHERE approved_by IS NULL;
CREATE INDEX certificate_transfer_window_to_idx ON certificate_transfer (to_certificate_id, created_at)
    WHERE approved_by IS NULL;
"""


def up(migrator, db):
    db.execute_sql(SQL)


def down(migrator, db):
    db.execute_sql("""
        DROP INDEX certificate_transfer_window_to_idx, certificate_transfer_window_from_idx;
        ALTER TABLE certificate_transfer DROP COLUMN approved_by;
        DROP TABLE transfer_request;
        DROP INDEX balance_adjustment_window_idx;
        ALTER TABLE balance_adjustment
            DROP CONSTRAINT adjustment_four_eyes,
            ADD CONSTRAINT adjustment_four_eyes CHECK (NOT needs_approval OR status <> 'APPLIED'
                OR (decided_by IS NOT NULL AND decided_by <> requested_by)),
            DROP COLUMN decided_identity,
            DROP COLUMN requested_identity;
    """)
