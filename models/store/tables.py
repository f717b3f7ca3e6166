"""Peewee tables. The schema itself is created by the migrations in ``models/store/migrations``;
these classes only map it (``Meta.table_name`` matches the SQL)."""
from __future__ import annotations

from peewee import (
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    CompositeKey,
    DecimalField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
    UUIDField,
)
from playhouse.postgres_ext import BinaryJSONField, DateTimeTZField

from models.store.db import db


def Money(**kw):  # noqa: N802 - a field factory, named like a field
    return DecimalField(max_digits=14, decimal_places=2, auto_round=False, **kw)


class Base(Model):
    class Meta:
        database = db
        legacy_table_names = False


class CertificateBatch(Base):
    batch_id = TextField(primary_key=True)
    kind = TextField()
    currency = CharField(max_length=3)
    loaded_by = TextField()
    accepted = IntegerField(default=0)
    rejected = IntegerField(default=0)
    created_at = DateTimeTZField()
    updated_at = DateTimeTZField()

    class Meta:
        table_name = "certificate_batch"


class GiftCertificate(Base):
    id = BigAutoField()
    code = TextField(unique=True)
    batch = ForeignKeyField(CertificateBatch, column_name="batch_id", field="batch_id")
    kind = TextField()
    currency = CharField(max_length=3)
    open_value = BooleanField()
    nominal = Money(null=True)
    remaining_balance = Money(default=0)
    status = TextField()
    status_before_lock = TextField(null=True)
    lock_reason = TextField(null=True)
    cancel_reason = TextField(null=True)
    channel = TextField(null=True)
    order_id = TextField(null=True)
    line_id = TextField(null=True)
    reserved_at = DateTimeTZField(null=True)
    reserved_until = DateTimeTZField(null=True)
    issued_at = DateTimeTZField(null=True)
    batch_expires_at = DateTimeTZField(null=True)
    expires_at = DateTimeTZField(null=True)
    cvc_hash = TextField(null=True)
    cvc_encrypted = TextField(null=True)
    cvc_key_id = TextField(null=True)  # the models.store.cvc key that made cvc_hash and cvc_encrypted
    cvc_failed_attempts = IntegerField(default=0)
    cvc_disclosable = BooleanField(default=False)
    notification_status = TextField(null=True)
    notification_channel = TextField(null=True)
    stream_sequence = IntegerField(default=0)
    created_at = DateTimeTZField()
    updated_at = DateTimeTZField()

    class Meta:
        table_name = "gift_certificate"


class AuthorizationHold(Base):
    id = TextField(primary_key=True)
    certificate = ForeignKeyField(GiftCertificate, column_name="certificate_id", backref="holds")
    channel = TextField()
    client_id = TextField()
    order_id = TextField()
    amount = Money()
    captured_amount = Money(default=0)
    currency = CharField(max_length=3)
    status = TextField()
    expires_at = DateTimeTZField()
    confirmed_by = TextField(null=True)
    created_at = DateTimeTZField()
    updated_at = DateTimeTZField()

    class Meta:
        table_name = "authorization_hold"


class BalanceAdjustment(Base):
    """A support correction of a balance, its author and its approver (migration 0005)."""
    id = TextField(primary_key=True)
    certificate = ForeignKeyField(GiftCertificate, column_name="certificate_id", backref="adjustments")
    direction = TextField()
    amount = Money()
    currency = CharField(max_length=3)
    reason = TextField()
    comment = TextField(null=True)
    needs_approval = BooleanField()
    status = TextField()
    requested_by = TextField()
    requested_identity = TextField()  # ADMIN_IDENTITY_CLAIM of the author (migration 0008)
    request_id = TextField(null=True)
    requested_at = DateTimeTZField()
    expires_at = DateTimeTZField(null=True)
    decided_by = TextField(null=True)
    decided_identity = TextField(null=True)
    decided_at = DateTimeTZField(null=True)
    decision_comment = TextField(null=True)

    class Meta:
        table_name = "balance_adjustment"


class CertificateTransfer(Base):
    """A whole balance moved from one certificate onto another (migration 0005)."""
    id = TextField(primary_key=True)
    from_certificate = ForeignKeyField(GiftCertificate, column_name="from_certificate_id")
    to_certificate = ForeignKeyField(GiftCertificate, column_name="to_certificate_id")
    amount = Money()
    currency = CharField(max_length=3)
    reason = TextField()
    actor = TextField()
    request_id = TextField(null=True)
    created_at = DateTimeTZField()
    approved_by = TextField(null=True)  # the second admin, when one was needed (migration 0008)

    class Meta:
        table_name = "certificate_transfer"


class TransferRequest(Base):
    """A transfer waiting for (or decided by) a second admin (migration 0008)."""
    id = TextField(primary_key=True)
    from_certificate = ForeignKeyField(GiftCertificate, column_name="from_certificate_id")
    to_code = TextField(null=True)
    amount = Money()
    currency = CharField(max_length=3)
    reason = TextField()
    status = TextField()
    requested_by = TextField()
    requested_identity = TextField()
    request_id = TextField(null=True)
    requested_at = DateTimeTZField()
    expires_at = DateTimeTZField()
    decided_by = TextField(null=True)
    decided_identity = TextField(null=True)
    decided_at = DateTimeTZField(null=True)
    decision_comment = TextField(null=True)

    class Meta:
        table_name = "transfer_request"


class Operation(Base):
    id = BigAutoField()
    certificate = ForeignKeyField(GiftCertificate, column_name="certificate_id", backref="operations")
    kind = TextField()
    amount = Money()
    balance_after = Money()
    currency = CharField(max_length=3)
    authorization = ForeignKeyField(AuthorizationHold, column_name="authorization_id", null=True)
    order_id = TextField(null=True)
    channel = TextField(null=True)
    op_key = TextField(unique=True)
    causation_id = TextField(null=True)
    created_at = DateTimeTZField()
    adjustment = ForeignKeyField(BalanceAdjustment, column_name="adjustment_id", null=True)
    transfer = ForeignKeyField(CertificateTransfer, column_name="transfer_id", null=True)

    class Meta:
        table_name = "gift_certificate_operation"


class AuditLog(Base):
    id = BigAutoField()
    certificate = ForeignKeyField(GiftCertificate, column_name="certificate_id", null=True)
    code = TextField(null=True)
    action = TextField()
    actor = TextField()
    channel = TextField(null=True)
    request_id = TextField(null=True)
    correlation_id = TextField(null=True)
    before = BinaryJSONField(null=True)
    after = BinaryJSONField(null=True)
    details = BinaryJSONField(null=True)
    created_at = DateTimeTZField()

    class Meta:
        table_name = "audit_log"


class OutboxEvent(Base):
    id = BigAutoField()
    event_id = UUIDField(unique=True)
    message_key = TextField()
    event_type = TextField()
    channel = TextField()
    certificate = ForeignKeyField(GiftCertificate, column_name="certificate_id", null=True)
    sequence = IntegerField(null=True)
    envelope = BinaryJSONField()
    created_at = DateTimeTZField()
    published_at = DateTimeTZField(null=True)

    class Meta:
        table_name = "outbox_event"


class InboxMessage(Base):
    id = BigAutoField()
    event_id = TextField(unique=True)
    topic = TextField()
    partition = IntegerField()
    offset = BigIntegerField()
    message_key = TextField(null=True)
    payload = BinaryJSONField()
    status = TextField(default="PENDING")
    attempts = IntegerField(default=0)
    last_error = TextField(null=True)
    received_at = DateTimeTZField()
    processed_at = DateTimeTZField(null=True)
    dispatched_at = DateTimeTZField(null=True)
    dead_lettered_at = DateTimeTZField(null=True)

    class Meta:
        table_name = "inbox_message"


class SalesOrder(Base):
    order_id = TextField(primary_key=True)
    channel = TextField()
    currency = CharField(max_length=3)
    total = Money()
    status = TextField()
    lines = BinaryJSONField(default=list)
    tenders = BinaryJSONField(default=list)
    customer = BinaryJSONField(null=True)
    last_event_id = TextField(null=True)
    paid_at = DateTimeTZField(null=True)
    snapshot_at = DateTimeTZField(null=True)
    cancelled_event_id = TextField(null=True)
    refunds = BinaryJSONField(default=list)
    created_at = DateTimeTZField()
    updated_at = DateTimeTZField()

    class Meta:
        table_name = "sales_order"


class OrderPayment(Base):
    id = BigAutoField()
    event_id = TextField(unique=True)
    order_id = TextField()
    payment_id = TextField()
    event_type = TextField()
    channel = TextField()
    amount = Money()
    currency = CharField(max_length=3)
    method = TextField()
    gc_code = TextField(null=True)
    gc_operation = TextField(null=True)
    gc_amount = Money(null=True)
    payload = BinaryJSONField()
    occurred_at = DateTimeTZField(null=True)
    created_at = DateTimeTZField()

    class Meta:
        table_name = "order_payment"


class IdempotencyKey(Base):
    client_id = TextField()
    key = TextField()
    method = TextField()
    path = TextField()
    request_hash = TextField()
    status = TextField()
    response_status = IntegerField(null=True)
    response_body = BinaryJSONField(null=True)
    created_at = DateTimeTZField()

    class Meta:
        table_name = "idempotency_key"
        primary_key = CompositeKey("client_id", "key")


class OrderEffect(Base):
    """A correlation decision applied to an order, once (migration 0002)."""
    order_id = TextField()
    effect_key = TextField()
    outcome = TextField()
    detail = TextField(null=True)
    causation_id = TextField(null=True)
    created_at = DateTimeTZField()

    class Meta:
        table_name = "order_effect"
        primary_key = CompositeKey("order_id", "effect_key")


class BlockedIssue(Base):
    """A paid order line waiting for the pool to be refilled."""
    id = BigAutoField()
    order_id = TextField()
    line_id = TextField()
    channel = TextField()
    nominal = Money()
    currency = CharField(max_length=3)
    kind = TextField()
    status = TextField()
    code = TextField(null=True)
    causation_id = TextField(null=True)
    created_at = DateTimeTZField()
    resolved_at = DateTimeTZField(null=True)

    class Meta:
        table_name = "blocked_issue"


class ClientProfile(Base):
    client_id = TextField(primary_key=True)
    phone = TextField(null=True)
    email = TextField(null=True)
    occurred_at = DateTimeTZField()
    updated_at = DateTimeTZField()

    class Meta:
        table_name = "client_profile"


class SmsMessage(Base):
    id = BigAutoField()
    notification_event_id = TextField(unique=True)
    code = TextField()
    status = TextField()
    attempts = IntegerField(default=0)
    last_error = TextField(null=True)
    created_at = DateTimeTZField()
    sent_at = DateTimeTZField(null=True)
    sending_until = DateTimeTZField(null=True)
    touched_at = DateTimeTZField(null=True)
    gateway_id = TextField(null=True)

    class Meta:
        table_name = "sms_message"


class DlqReplay(Base):
    dlq_id = TextField(primary_key=True)
    source_topic = TextField()
    event_id = TextField(null=True)
    replayed_at = DateTimeTZField()

    class Meta:
        table_name = "dlq_replay"


class BatchRejection(Base):
    """A code a batch refused, once per batch and code (migration 0003)."""
    batch = ForeignKeyField(CertificateBatch, column_name="batch_id", field="batch_id")
    code = TextField()
    reason = TextField()
    created_at = DateTimeTZField()

    class Meta:
        table_name = "certificate_batch_rejection"
        primary_key = CompositeKey("batch", "code")


class PoolLowWater(Base):
    """Whether a pool segment (currency/kind/nominal) is below the low-water mark (migration 0003)."""
    segment = TextField(primary_key=True)
    low = BooleanField()
    changed_at = DateTimeTZField()

    class Meta:
        table_name = "pool_low_water"


ALL_TABLES = (CertificateBatch, GiftCertificate, AuthorizationHold, Operation, AuditLog,
              OutboxEvent, InboxMessage, SalesOrder, OrderPayment, IdempotencyKey,
              OrderEffect, BlockedIssue, ClientProfile, SmsMessage, DlqReplay,
              BatchRejection, PoolLowWater, BalanceAdjustment, CertificateTransfer)
