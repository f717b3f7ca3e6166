"""Support's balance transfers through HTTP against real PostgreSQL and Redis: the refusals,
onto a given printed card or the next one from the pool, the expiry kept, and a transfer racing
a capture or another transfer."""
import datetime as dt
from decimal import Decimal

from config import get_settings
from models.store.db import db
from models.store.tables import CertificateTransfer, GiftCertificate
from tests.e2e import flow
from tests.helpers import issued, load, unique_currency
from tests.integration.apikit import auth, authorize, issued_with_cvc, row
from tests.integration.supportkit import (
    PRINTED,
    admin,
    assert_ledger_is_the_balance,
    events,
    ledger,
    load_card,
    run_at_once,
    spend,
    transfer,
    view,
)

D = Decimal


#: The check of docs/support-tools.md: every transfer's two ledger rows sum to zero (no row).
UNBALANCED_TRANSFERS = """
SELECT t.id, t.amount, sum(o.amount) AS net, count(o.id) AS rows
FROM certificate_transfer t
LEFT JOIN gift_certificate_operation o ON o.transfer_id = t.id
GROUP BY t.id, t.amount
HAVING sum(o.amount) IS DISTINCT FROM 0 OR count(o.id) <> 2
    OR max(o.amount) IS DISTINCT FROM t.amount"""


# ---- transfers ----------------------------------------------------------------------------------

def test_transfer_is_refused_with_active_holds(client):
    code, cvc = issued_with_cvc("1000.00")
    target = load(1, None)[0]
    hold = authorize(client, code, cvc, "10.00").json["authorizationId"]
    resp = transfer(client, code, target)
    assert resp.status_code == 409 and resp.json["code"] == "HOLDS_ACTIVE"
    assert resp.json["details"]["held"] == "10.00"
    assert row(target).status == "AVAILABLE" and view(client, code)["status"] == "ISSUED"
    # once the hold is voided it goes through
    client.post(f"/authorizations/{hold}/void", headers=auth())
    assert transfer(client, code, target).status_code == 200


def test_transfer_is_refused_across_currencies(client):
    code = issued("1000.00", "RUB")
    target = load(1, None, unique_currency())[0]
    resp = transfer(client, code, target)
    assert resp.status_code == 422 and resp.json["code"] == "CURRENCY_MISMATCH"
    assert row(target).status == "AVAILABLE" and row(code).status == "ISSUED"


def test_transfer_is_refused_from_a_terminal_status_and_onto_a_sold_card(client):
    cancelled, sold, fresh = issued(), issued(), issued()
    client.post(f"/certificates/{cancelled}/actions/cancel", json={"reason": "X"}, headers=admin())
    target = load(1, None)[0]
    from_terminal = transfer(client, cancelled, target)
    onto_sold = transfer(client, fresh, sold)
    onto_itself = transfer(client, fresh, fresh)
    unknown = transfer(client, fresh, "NOSUCHCODE42")
    printed = load(1, "999.00")[0]
    wrong_nominal = transfer(client, fresh, printed)
    assert from_terminal.status_code == 409 and from_terminal.json["code"] == "INVALID_STATE"
    assert onto_sold.status_code == 409 and onto_sold.json["code"] == "TARGET_NOT_AVAILABLE"
    assert onto_itself.status_code == 409 and onto_itself.json["code"] == "TARGET_NOT_AVAILABLE"
    assert unknown.status_code == 404 and unknown.json["details"]["role"] == "to"
    assert wrong_nominal.status_code == 409 and wrong_nominal.json["code"] == "NOMINAL_MISMATCH"
    # a transferred certificate is terminal too
    assert transfer(client, fresh, target).status_code == 200
    again = transfer(client, fresh, load(1, None)[0])
    assert again.status_code == 409 and again.json["code"] == "INVALID_STATE"


def test_a_damaged_card_replaced_at_a_pos(client):
    # given a card of 1000.00 with 400.00 spent, locked by support for damage
    currency = unique_currency()
    code, cvc = issued_with_cvc("1000.00", currency, "POS")
    spend(client, code, cvc, "400.00")
    client.post(f"/certificates/{code}/actions/lock", json={"reason": "DAMAGED"}, headers=admin())
    card = load_card(client, currency)
    # when a POS's support token moves the balance onto a new printed card
    pos_admin = auth(("certificates:admin", "certificates:read"), channel="POS", client_id="pos-support")
    resp = transfer(client, code, card, headers=pos_admin)
    # then the source is cancelled with nothing left and the card carries the 600.00
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert (body["fromCode"], body["toCode"], body["amount"], body["currency"]) == (code, card, "600.00", currency)
    assert body["source"]["status"] == "CANCELLED" and body["source"]["lockReason"] == "TRANSFERRED"
    assert body["source"]["remainingBalance"] == "0.00"
    assert body["target"]["status"] == "ISSUED" and body["target"]["nominal"] == "600.00"
    assert body["target"]["remainingBalance"] == body["target"]["available"] == "600.00"
    target = view(client, card)
    assert target["orderId"] == view(client, code)["orderId"] and target["notificationStatus"] is None
    # and one transfer event each, naming the other, valid against the stream schema
    (out,) = [e for e in events(code) if e["eventType"] == "transfer"]
    (into,) = [e for e in events(card) if e["eventType"] == "transfer"]
    assert out["status"] == "CANCELLED" and out["payload"]["toCode"] == card and out["payload"]["amount"] == "600.00"
    assert into["status"] == "ISSUED" and into["payload"]["fromCode"] == code
    assert into["payload"]["nominal"] == into["payload"]["remainingBalance"] == "600.00"
    assert into["sequence"] == 1 and into["channel"] == out["channel"] == "POS"
    assert into["correlationId"] == out["correlationId"] == code
    assert [e["eventType"] for e in events(card)] == ["transfer"]  # a printed card is never notified
    flow.assert_valid_stream(events(code) + events(card))
    # and the ledger rows of the transfer add up to nothing; each ledger is its balance
    assert (ledger(client, code)[-1]["kind"], ledger(client, code)[-1]["amount"]) == ("TRANSFER_OUT", "-600.00")
    assert [(i["kind"], i["amount"]) for i in ledger(client, card)] == [("TRANSFER_IN", "600.00")]
    assert ledger(client, code)[-1]["transferId"] == ledger(client, card)[0]["transferId"] == body["transferId"]
    assert_ledger_is_the_balance(client, code)
    assert_ledger_is_the_balance(client, card)
    # and the buyer pays with the new card and its printed CVC
    spend(client, card, PRINTED, "100.00")
    assert view(client, card)["remainingBalance"] == "500.00"


def test_transfer_onto_the_next_certificate_from_the_pool(client):
    # given a pool of one printed-for-700.00 and one open-value electronic certificate
    currency = unique_currency()
    code, cvc = issued_with_cvc("1000.00", currency)
    spend(client, code, cvc, "300.00")
    open_value = load(1, None, currency)[0]
    printed = load(1, "700.00", currency)[0]
    # when support transfers without naming a target
    resp = transfer(client, code, reason="CUSTOMER_LOST_SMS")
    # then the one printed for the amount is taken, issued, and its CVC is sent as for a sale
    assert resp.status_code == 200, resp.json
    assert resp.json["toCode"] == printed and row(open_value).status == "AVAILABLE"
    target = view(client, printed)
    assert target["status"] == "ISSUED" and target["notificationStatus"] == "NOTIFICATION_REQUESTED"
    assert [e["eventType"] for e in events(printed)] == ["transfer", "notification.requested"]
    cvc_resp = client.get(f"/certificates/{printed}/cvc", headers=auth("certificates:cvc"))
    assert cvc_resp.status_code == 200 and len(cvc_resp.json["cvc"]) == get_settings().cvc_length
    flow.assert_valid_stream(events(code) + events(printed))
    # the next transfer of 500.00 takes the open-value one, then the pool is empty
    other, other_cvc = issued_with_cvc("1000.00", currency)
    spend(client, other, other_cvc, "500.00")
    assert transfer(client, other).json["toCode"] == open_value
    assert view(client, open_value)["nominal"] == "500.00"
    third = issued("100.00", currency)
    empty = transfer(client, third)
    assert empty.status_code == 409 and empty.json["code"] == "POOL_EMPTY"
    assert view(client, third)["status"] == "ISSUED"


def test_a_transfer_keeps_the_expiry(client):
    currency = unique_currency()
    code = issued("100.00", currency)
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)
    with db.connection_context():
        GiftCertificate.update(expires_at=expires).where(GiftCertificate.code == code).execute()
    target = load(1, None, currency)[0]
    assert transfer(client, code, target).status_code == 200
    assert view(client, target)["expiresAt"] == view(client, code)["expiresAt"]


# ---- racing -------------------------------------------------------------------------------------

def test_a_transfer_racing_a_capture_never_loses_nor_doubles_money(app):
    # given 10 certificates of 1000.00, each with a hold of 300.00, and a card in the pool for each
    currency = unique_currency()
    client = app.test_client()
    sources, holds = [], []
    for _ in range(10):
        code, cvc = issued_with_cvc("1000.00", currency)
        sources.append(code)
        holds.append(authorize(client, code, cvc, "300.00").json["authorizationId"])
    load(10, None, currency)
    headers = admin()

    # when each certificate gets a capture and a transfer (from the pool) at the same time
    def capture(hold):
        return lambda: app.test_client().post(f"/authorizations/{hold}/capture", headers=auth())

    def move(code):
        return lambda: app.test_client().post(f"/certificates/{code}/actions/transfer",
                                              json={"reason": "RACE"}, headers=headers)
    calls = [capture(h) for h in holds] + [move(c) for c in sources]
    answers = run_at_once(calls)
    captures, transfers = answers[:10], answers[10:]
    seen = [(c.status_code, c.json.get("code"), t.status_code, t.json.get("code"))
            for c, t in zip(captures, transfers)]
    # then a capture goes through, and its transfer comes after it or is refused for the hold
    # (on a loaded machine a request may also give up waiting for the row: 409 LOCK_TIMEOUT)
    for capture_status, capture_code, transfer_status, transfer_code in seen:
        assert capture_status == 200 or capture_code == "LOCK_TIMEOUT", seen
        assert transfer_status == 200 or transfer_code in ("HOLDS_ACTIVE", "LOCK_TIMEOUT"), seen
    assert sum(c.status_code == 200 for c in captures) >= 1, seen
    # and for each certificate: balance + transferred + captured is the 1000.00 sold, to the kopeck
    for code, took, moved in zip(sources, captures, transfers):
        balance = D(view(client, code)["remainingBalance"])
        captured = D(took.json["captured"]) if took.status_code == 200 else D("0.00")
        target_balance = D(view(client, moved.json["toCode"])["remainingBalance"]) if moved.status_code == 200 else D(0)
        assert balance + target_balance + captured == D("1000.00"), (code, took.json, moved.json)
        assert_ledger_is_the_balance(client, code)
        if moved.status_code == 200:
            assert took.status_code == 200 and moved.json["amount"] == "700.00" and balance == 0
            assert_ledger_is_the_balance(client, moved.json["toCode"])
    # and the transfers' ledger rows add up to nothing, pair by pair
    done = [t.json["transferId"] for t in transfers if t.status_code == 200]
    with db.connection_context():
        assert CertificateTransfer.select().where(CertificateTransfer.id.in_(done or [""])).count() == len(done)
        mine = db.execute_sql(f"SELECT * FROM ({UNBALANCED_TRANSFERS}) u WHERE u.id = ANY(%s)", (done,))
        assert mine.fetchall() == []


def test_a_transfer_racing_another_transfer_moves_the_money_once(app):
    currency = unique_currency()
    code = issued("1000.00", currency)
    targets = load(4, None, currency)
    headers = admin()
    answers = run_at_once([
        (lambda t: lambda: app.test_client().post(f"/certificates/{code}/actions/transfer",
                                                  json={"reason": "R", "to": t}, headers=headers))(t)
        for t in targets])
    won = [a for a in answers if a.status_code == 200]
    assert len(won) == 1 and sorted(a.status_code for a in answers) == [200, 409, 409, 409]
    client = app.test_client()
    assert sum(D(view(client, t)["remainingBalance"]) for t in targets) == D("1000.00")
