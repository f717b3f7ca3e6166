"""CVC delivery by SMS: an attempt's lease, and the gateway's id.

- ``sms_message.sending_until``: while an attempt holds the message (status ``SENDING``), no
  other attempt sends it; past it, the attempt is taken to have died (see ``actors.sms``).
- ``sms_message.touched_at``: the last change, for the sweeper of stuck sends.
- ``sms_message.gateway_id``: the gateway's own id of the accepted message.
- status ``SENDING``: an attempt holds the lease.
"""

SQL = """
ALTER TABLE sms_message ADD COLUMN sending_until timestamptz;
ALTER TABLE sms_message ADD COLUMN touched_at timestamptz;
ALTER TABLE sms_message ADD COLUMN gateway_id text;
UPDATE sms_message SET touched_at = created_at;
ALTER TABLE sms_message DROP CONSTRAINT sms_message_status_check;
ALTER TABLE sms_message ADD CONSTRAINT sms_message_status_check
    CHECK (status IN ('PENDING', 'SENDING', 'SENT', 'FAILED'));
CREATE INDEX outbox_event_notification_idx ON outbox_event (message_key, id)
    WHERE event_type = 'notification.requested';
"""


def up(migrator, db):
    db.execute_sql(SQL)


def down(migrator, db):
    db.execute_sql("DROP INDEX IF EXISTS outbox_event_notification_idx;"
                   " ALTER TABLE sms_message DROP COLUMN sending_until, DROP COLUMN touched_at,"
                   " DROP COLUMN gateway_id;")
