"""Long-running non-HTTP processes: the Kafka pump, the outbox relay, the scheduler."""
