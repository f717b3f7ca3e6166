"""Metrics that tell the truth (issue 31).

- ``inbox_message.broker_at``: the Kafka broker timestamp of the input message, so that the relay
  can measure input message to stream event (``gcp_input_to_stream_seconds``): an event's
  ``causationId`` is its input's ``eventId``, and the relay reads the input's time by it.
- a partial index for the oldest pending CVC notification (``gcp_notification_oldest_pending_seconds``),
  read at every scrape: only the few certificates whose notification is still requested.
"""

SQL = """
ALTER TABLE inbox_message ADD COLUMN broker_at timestamptz;
CREATE INDEX gift_certificate_notification_pending_idx ON gift_certificate (updated_at)
    WHERE notification_status = 'NOTIFICATION_REQUESTED';
"""


def up(migrator, db):
    db.execute_sql(SQL)


def down(migrator, db):
    db.execute_sql("""
        DROP INDEX gift_certificate_notification_pending_idx;
        ALTER TABLE inbox_message DROP COLUMN broker_at;
    """)
