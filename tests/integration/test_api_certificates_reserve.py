"""Reserving certificates through HTTP against real PostgreSQL and Redis: POST /certificates/next
(and its deprecated GET alias) for an order line, printed nominal before open value, a scanned
physical card, an empty pool, and a reservation's expiry back to the pool."""
from decimal import Decimal

from models.store.db import db
from models.store.tables import OutboxEvent
from tests.helpers import load, uid, unique_currency
from tests.integration.apikit import auth, reserve_body, row


def test_reserve_next_is_201_then_200_for_the_same_order_line(client):
    # given a pool of two certificates in an isolated currency
    currency = unique_currency()
    codes = load(2, "1500.00", currency)
    body = reserve_body(currency, "1500.00")
    headers = auth(channel="ONLINE_STORE")
    # when the order line is reserved twice
    first = client.post("/certificates/next", json=body, headers=headers)
    again = client.post("/certificates/next", json=body, headers=headers)
    # then the first is a new reservation and the second the same certificate
    assert first.status_code == 201, first.json
    assert first.json["code"] == codes[0] and first.json["status"] == "RESERVED"
    assert first.json["nominal"] == "1500.00" and first.json["reservedUntil"].endswith("Z")
    assert again.status_code == 200 and again.json["code"] == codes[0]
    assert row(codes[1]).status == "AVAILABLE"


def test_reserve_prefers_printed_nominal_then_open_value(client):
    # given an open-value certificate loaded before one printed for 500.00
    currency = unique_currency()
    open_code = load(1, None, currency)[0]
    printed = load(1, "500.00", currency)[0]
    # when two lines of 500.00 and one of 700.00 are reserved
    a = client.post("/certificates/next", json=reserve_body(currency, "500.00"), headers=auth())
    b = client.post("/certificates/next", json=reserve_body(currency, "700.00"), headers=auth())
    c = client.post("/certificates/next", json=reserve_body(currency, "500.00"), headers=auth())
    # then the printed one goes first, the open-value one takes 700.00, and the pool is empty
    assert a.json["code"] == printed
    assert b.status_code == 201 and b.json["code"] == open_code and b.json["nominal"] == "700.00"
    assert c.status_code == 409 and c.json["code"] == "POOL_EMPTY"


def test_reserve_given_code_of_a_physical_card_and_default_currency(client):
    # given a physical card in RUB (the default currency)
    code = load(1, "3000.00", "RUB", kind="PHYSICAL")[0]
    body = {"channel": "POS", "orderId": uid("order-"), "lineId": "7", "nominal": "3000.00",
            "code": code}
    # when POS reserves that scanned card without naming the currency
    resp = client.post("/certificates/next", json=body, headers=auth(channel="POS"))
    # then exactly that card is reserved for the POS order line
    assert resp.status_code == 201, resp.json
    assert resp.json["code"] == code and resp.json["currency"] == "RUB"
    stored = row(code)
    assert (stored.channel, stored.order_id, stored.line_id) == ("POS", body["orderId"], "7")


def test_deprecated_get_alias_reserves_like_the_post(client):
    # given a pool in an isolated currency
    currency = unique_currency()
    code = load(1, "1000.00", currency)[0]
    order = uid("order-")
    query = f"channel=ONLINE_STORE&orderId={order}&lineId=1&nominal=1000.00&currency={currency}"
    # when the first-draft GET form is used twice
    first = client.get("/certificates/next?" + query, headers=auth())
    again = client.get("/certificates/next?" + query, headers=auth())
    # then it reserves once and is marked deprecated in the OpenAPI document
    assert first.status_code == 201 and first.json["code"] == code
    assert again.status_code == 200 and again.json["code"] == code
    spec = client.get("/openapi.json").json
    assert spec["paths"]["/certificates/next"]["get"]["deprecated"] is True


def test_empty_pool_is_409_with_issue_blocked_event(client):
    # given a currency with no pool
    currency = unique_currency()
    body = reserve_body(currency, "100.00")
    # when a reservation is asked for
    resp = client.post("/certificates/next", json=body, headers=auth())
    # then POOL_EMPTY and an issue.blocked event keyed by the order
    assert resp.status_code == 409
    assert resp.json == {"code": "POOL_EMPTY", "message": resp.json["message"],
                         "details": {"nominal": "100.00", "currency": currency}}
    with db.connection_context():
        event = OutboxEvent.get(OutboxEvent.message_key == body["orderId"])
    assert event.event_type == "issue.blocked"
    assert event.envelope["payload"]["orderId"] == body["orderId"]


def test_reservation_expiry_returns_to_pool_unless_payment_seen(client):
    # given two reservations past reservedUntil, one of whose orders has a payment
    import datetime as dt

    from models.domain import commands
    from models.service import messagebus
    from models.store.tables import GiftCertificate, OrderPayment

    currency = unique_currency()
    load(2, "100.00", currency)
    lapsed, paid = (client.post("/certificates/next", json=reserve_body(currency, "100.00"), headers=auth()).json
                    for _ in range(2))
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    with db.connection_context():
        GiftCertificate.update(reserved_until=past).where(
            GiftCertificate.code.in_([lapsed["code"], paid["code"]])).execute()
        OrderPayment.create(event_id=uid("evt-"), order_id=paid["orderId"], payment_id=uid("pay-"),
                            event_type="PAYMENT_CAPTURED", channel="ONLINE_STORE", amount=Decimal("100.00"),
                            currency=currency, method="CARD", payload={}, created_at=past)
        # when the scheduler expires both reservations
        results = {code: messagebus.handle(commands.ExpireReservation(code)) for code in (lapsed["code"], paid["code"])}
    # then the unpaid one is back in the pool, the paid one stays reserved
    assert results[lapsed["code"]]["status"] == "AVAILABLE" and results[paid["code"]] is None
    assert row(lapsed["code"]).status == "AVAILABLE" and row(lapsed["code"]).order_id is None
    assert row(paid["code"]).status == "RESERVED"
    with db.connection_context():
        release = OutboxEvent.select().where((OutboxEvent.message_key == lapsed["code"])
                                             & (OutboxEvent.event_type == "release")).get()
    assert release.envelope["payload"]["reason"] == "RESERVATION_EXPIRED"
    assert release.envelope["correlationId"] == lapsed["orderId"]
