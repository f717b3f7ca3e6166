"""`make demo`'s steps with printed cards and support's tools (``workers.demo.Demo`` has them):
a printed card sold and paid with its printed CVC, a damaged card replaced at a POS, a large
adjustment approved by a second admin. Each step checks its outcome before it prints it."""
from __future__ import annotations

import uuid


class CardSteps:
    """Steps of :class:`workers.demo.Demo` (its plumbing: ``call``, ``sale``, ``wait``, ``has``...)."""

    def printed_card(self) -> None:
        print("POS: a printed card (PHYSICAL batch, CVC under the scratch panel) is scanned, sold, "
              "then paid with: authorized with its printed CVC and captured")
        card, printed = f"DMP{self.run}0001", f"{uuid.uuid4().int % 10 ** self.s.cvc_length:0{self.s.cvc_length}d}"
        self.call("POST", "/batches", "LOADER", json={
            "batchId": f"demo-{self.run}-cards", "kind": "PHYSICAL", "currency": "RUB",
            "certificates": [{"code": card, "nominal": "2000.00", "cvc": printed}]})
        card = self.sale("POS", "2000.00", label="printed card sold at a POS", code=card)[0]
        self.producer.flush(10)
        if not self.steps.check(bool(card) and self.wait(lambda: self.has(card, "issue")),
                                f"{card}: printed card sold at a POS and issued", "the printed card was not issued"):
            return
        hold = self.call("POST", f"/certificates/{card}/authorizations", "POS", json={
            "channel": "POS", "orderId": f"demo-{self.run}-till", "amount": "700.00", "cvc": printed})
        captured = (self.call("POST", f"/authorizations/{hold.json()['authorizationId']}/capture", "POS", json={})
                    if hold.status_code == 201 else hold)
        if self.steps.check(captured.status_code == 200 and captured.json().get("remainingBalance") == "1300.00",
                            f"{card}: authorized with the printed CVC, 700.00 captured, 1300.00 left",
                            f"{card}: authorization/capture answered {captured.status_code} "
                            f"{captured.json().get('code')}"):
            self.story[card] = "printed card: sold at a POS, 700.00 captured with its printed CVC"

    def support_tools(self):
        """A damaged card replaced at a POS, and a large adjustment approved by a second admin."""
        print("POS: a damaged printed card is replaced: its balance moves onto a new card from the drawer")
        damaged, spare = f"DMP{self.run}0002", f"DMP{self.run}0003"
        printed = [f"{uuid.uuid4().int % 10 ** self.s.cvc_length:0{self.s.cvc_length}d}" for _ in range(2)]
        self.call("POST", "/batches", "LOADER", json={
            "batchId": f"demo-{self.run}-drawer", "kind": "PHYSICAL", "currency": "RUB",
            "certificates": [{"code": damaged, "nominal": "1000.00", "cvc": printed[0]},
                             {"code": spare, "cvc": printed[1]}]})  # the spare is open value
        damaged = self.sale("POS", "1000.00", label="damaged card", code=damaged)[0]
        self.producer.flush(10)
        if damaged and self.wait(lambda: self.has(damaged, "issue")):
            moved = self.call("POST", f"/certificates/{damaged}/actions/transfer", "POS-SUPPORT",
                              headers_extra={"Idempotency-Key": f"demo-{self.run}-transfer"},
                              json={"to": spare, "reason": "DAMAGED_CARD"})
            body = moved.json()
            if self.steps.check(moved.status_code == 200 and body.get("source", {}).get("status") == "CANCELLED",
                                f"{damaged} -> {spare}: {body.get('amount')} moved; the old card is CANCELLED "
                                f"({body.get('source', {}).get('lockReason')})",
                                f"transfer answered {moved.status_code} {body.get('code')}"):
                self.story[damaged] = f"damaged: its balance moved onto {spare}"
                self.story[spare] = f"new card handed over at the POS, holding {damaged}'s balance"
        else:
            self.steps.check(False, "", "the damaged card was not sold")

        print("Support: a large correction (6000.00, above ADJUST_APPROVAL_LIMIT) waits for a second admin")
        corporate = f"DMC{self.run}0001"
        self.call("POST", "/batches", "LOADER", json={
            "batchId": f"demo-{self.run}-corporate", "currency": "RUB",
            "certificates": [{"code": corporate, "nominal": "8000.00"}]})
        corporate = self.sale("ONLINE_STORE", "8000.00", label="corporate gift", code=corporate)[0]
        self.producer.flush(10)
        if not (corporate and self.wait(lambda: self.has(corporate, "issue"))):
            self.steps.check(False, "", "the corporate certificate was not sold")
            return
        asked = self.call("POST", f"/certificates/{corporate}/actions/adjust", "SUPPORT", json={
            "direction": "DEBIT", "amount": "6000.00", "reason": "FRAUD_RECOVERY",
            "comment": "chargeback on the card that paid for it"})
        adjustment = asked.json().get("adjustmentId")
        own = self.call("POST", f"/adjustments/{adjustment}/approve", "SUPPORT")
        approved = self.call("POST", f"/adjustments/{adjustment}/approve", "SUPPORT-2",
                             json={"comment": "checked with Payments"})
        self.steps.check(asked.json().get("status") == "PENDING_APPROVAL" and own.status_code >= 400
                         and approved.json().get("status") == "APPLIED"
                         and approved.json().get("remainingBalance") == "2000.00",
                         f"{corporate}: 6000.00 debit waited, was refused to its author ({own.json().get('code')}) "
                         f"and applied by support-2: 2000.00 left",
                         f"{corporate}: adjustment {asked.json().get('status')}, own approval {own.status_code}, "
                         f"second approval {approved.status_code} {approved.json().get('status')}")
        self.story[corporate] = "6000.00 debited (FRAUD_RECOVERY), approved by a second admin"
