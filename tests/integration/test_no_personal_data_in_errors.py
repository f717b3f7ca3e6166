"""A schema violation is reported by its JSON pointer and failed keyword, never by the value:
a message carrying a customer's phone and e-mail goes through the real pump and the real mart,
and neither appears in the DLQ headers, ``dlq list``, ``bi.anomaly``, the logs, the report page
or ``anomalies.csv`` (issue 27, item 4). The DLQ value keeps the message itself, for replay."""
from __future__ import annotations

import json
import logging
import time
import uuid

from click.testing import CliRunner

from tests.e2e import flow
from tests.integration.test_bi_consumer import mart  # noqa: F401  (the fixture)

PHONE = "+7 999 000-11-22"  # fails the contract's pattern
EMAIL = "ivan.petrov." + "x" * 250 + "@example.ru"  # over the contract's 254 characters


def test_a_schema_violation_names_the_field_never_the_phone_or_the_e_mail(mart, monkeypatch, caplog,  # noqa: F811
                                                                          tmp_path):
    from app import cli as app_cli
    from workers.bi.cli import bi_cli
    from config import get_settings, reset_settings
    from observability import JsonFormatter
    from workers.pump import Pump

    monkeypatch.setenv("KAFKA_CONSUMER_GROUP", "gcp-pump-pii-" + uuid.uuid4().hex[:6])
    reset_settings()
    caplog.set_level(logging.INFO)
    secrets = (PHONE, EMAIL, "999 000-11-22", "ivan.petrov")
    order_id = "order-pii-" + uuid.uuid4().hex[:8]
    message = flow.order(order_id, [flow.product_line("10.00", "1")], "10.00", phone=PHONE)
    message["customer"]["email"] = EMAIL
    dlq = flow.TopicReader("dlq")
    pump = Pump(dispatch=lambda ids: None)
    try:
        # when the message arrives on All_SalesOrder and the pump takes it
        mart.send_raw(get_settings().topic_sales_order, order_id, json.dumps(message).encode())
        deadline, found = time.monotonic() + 30, []
        while not found and time.monotonic() < deadline:
            pump.step(0.2)
            dlq.poll(0.1)
            found = [r for r in dlq.records if r.key == order_id]
        assert found, "the message never reached the DLQ"
    finally:
        pump.close()
        dlq.close()
    # then the DLQ headers say where and why, and hold neither the phone nor the e-mail
    error = found[0].headers["error"]
    assert error.startswith("SCHEMA_VIOLATION: ") and "/customer/phone: does not match pattern" in error, error
    assert "/customer/email: is too long" in error, error
    headers = json.dumps(found[0].headers)
    # and the mart records the anomaly the same way, and logs it
    mart.drain(mart.consumer(), 1)
    anomalies = mart.rows("SELECT row_to_json(a)::text FROM bi.anomaly a WHERE topic = 'All_SalesOrder'")
    assert len(anomalies) == 1 and "/customer/phone: does not match pattern" in anomalies[0][0]
    logged = "\n".join(JsonFormatter().format(r) for r in caplog.records)  # (the CLI resets logging)
    assert '"anomaly"' in logged and "does not match pattern" in logged
    # and `dlq list` shows it
    listing = CliRunner().invoke(app_cli, ["dlq", "list", "--limit", "100000"], catch_exceptions=False).output
    assert "/customer/phone: does not match pattern" in listing
    # and so do the report page and its anomalies.csv
    result = CliRunner().invoke(bi_cli, ["report", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    csv = (tmp_path / "anomalies.csv").read_text()
    assert "does not match pattern" in csv
    for where, text in (("DLQ headers", headers), ("dlq list", listing), ("bi.anomaly", anomalies[0][0]),
                        ("logs", logged), ("report.html", page), ("anomalies.csv", csv)):
        for secret in secrets:
            assert secret not in text, f"{where} holds {secret[:16]}...: {text[:2000]}"
    assert found[0].value == message  # the DLQ copy itself stays whole, for a replay
