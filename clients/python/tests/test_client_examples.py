"""The examples of docs/INTEGRATION.md (clients/python/examples/*.py), run against the
live server: the checkout flow with its out-of-stock, lost-answer and expired-hold
branches, a Stripe payment confirmed by a signed webhook to the server, the events feed
and a webhook receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import stripe
from standardwebhooks import Webhook

from conftest import Server, StockHelper
from sgc_network import RecordingTransport, Wire
from stockguard_client import Client, LineIn, Order, Shortage

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import checkout  # noqa: E402 - the examples directory is on the path from here
import events  # noqa: E402
import stripe_payment  # noqa: E402
import webhooks  # noqa: E402


@pytest.fixture
def sg(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    monkeypatch.setenv("STOCKGUARD_URL", server.url)
    monkeypatch.setenv("STOCKGUARD_API_KEY", server.service_key)
    with checkout.connect() as client:
        yield client


def test_checkout_example(sg: Client, server: Server, stock: StockHelper) -> None:
    tee, cap = stock.sku("EX-TEE", 3), stock.sku("EX-CAP", 1)
    lines: list[LineIn] = [{"sku": tee, "quantity": 2}, {"sku": cap, "quantity": 1}]
    order = checkout.hold_stock(sg, f"web-{stock.uid}", lines, 5900, "EUR")
    assert isinstance(order, Order)
    assert order.status == "pending"
    assert checkout.hold_stock(sg, f"web-{stock.uid}", lines, 5900, "EUR") == order
    assert sg.get_sku(tee).reserved == 2  # held once

    short = checkout.hold_stock(sg, f"web2-{stock.uid}", [{"sku": tee, "quantity": 2}], 1, "EUR")
    assert short == [Shortage(sku=tee, requested=2, available=1)]

    held = checkout.keep_holding(sg, order.id)
    assert held is not None
    before, after = order.expires_at(), held.expires_at()
    assert before is not None
    assert after is not None
    assert after > before
    paid = checkout.record_payment(sg, order.id, f"bank-{stock.uid}", 5900, "EUR")
    assert paid.status == "paid"
    assert checkout.record_payment(sg, order.id, f"bank-{stock.uid}", 5900, "EUR") == paid
    assert checkout.ship(sg, order.id).status == "shipped"
    assert checkout.ship(sg, order.id).status == "shipped"  # again: nothing more
    returned = checkout.take_return(
        sg, order.id, f"rma-{stock.uid}", [{"sku": cap, "quantity": 1, "disposition": "damaged"}]
    )
    assert (
        checkout.take_return(
            sg,
            order.id,
            f"rma-{stock.uid}",
            [{"sku": cap, "quantity": 1, "disposition": "damaged"}],
        )
        == returned
    )
    assert (sg.get_sku(cap).on_hand, sg.get_sku(cap).unavailable) == (1, 1)

    other = checkout.hold_stock(sg, f"web3-{stock.uid}", [{"sku": tee, "quantity": 1}], 1, "EUR")
    assert isinstance(other, Order)
    assert checkout.cancel(sg, other.id, "customer left").status == "cancelled"
    assert checkout.cancel(sg, other.id, "customer left").status == "cancelled"
    assert sg.get_sku(tee).available == 1


def test_checkout_example_survives_lost_answers(server: Server, stock: StockHelper) -> None:
    sku = stock.sku("EX-LOST", 2)
    wire = Wire()
    # Every answer of the first call is lost (4 attempts), then the example places again.
    transport = RecordingTransport(wire, lose_answers=4)
    with Client(server.url, server.service_key, transport=transport, backoff=0.01) as sg:
        order = checkout.hold_stock(
            sg, f"lost-{stock.uid}", [{"sku": sku, "quantity": 2}], 1, "EUR"
        )
        assert isinstance(order, Order)
        assert [x.status for x in wire.exchanges] == [None, None, None, None, 200]
        assert sg.get_sku(sku).reserved == 2


def test_keep_holding_an_expired_hold_says_place_again(sg: Client, stock: StockHelper) -> None:
    sku = stock.sku("EX-EXP", 1)
    order = sg.place_order([{"sku": sku, "quantity": 1}], reservation_ttl_seconds=1)
    deadline = time.monotonic() + 15
    while sg.get_order(order.id).reservations[0].status != "expired":
        assert time.monotonic() < deadline, "the expiry worker did not expire the hold"
        time.sleep(0.1)
    assert checkout.keep_holding(sg, order.id) is None


class _FakeStripe(BaseHTTPRequestHandler):
    """Stripe's API for one call: creates a PaymentIntent from the form it is sent."""

    created: list[dict[str, list[str]]] = []  # noqa: RUF012 - filled by the server thread

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.created.append(form)
        intent = {
            "id": f"pi_{len(self.created)}_test",
            "object": "payment_intent",
            "amount": int(form["amount"][0]),
            "currency": form["currency"][0],
            "metadata": {"order_id": form["metadata[order_id]"][0]},
            "client_secret": f"pi_{len(self.created)}_secret_x",
            "status": "requires_payment_method",
        }
        body = json.dumps(intent).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_stripe_example_pays_through_the_webhook(
    sg: Client, server: Server, stock: StockHelper
) -> None:
    sku = stock.sku("EX-STRIPE", 2)
    order = sg.place_order(
        [{"sku": sku, "quantity": 1}], id=f"s-{stock.uid}", total_amount=1999, currency="usd"
    )
    fake = ThreadingHTTPServer(("127.0.0.1", 0), _FakeStripe)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    try:
        client = stripe.StripeClient(
            "sk_test_example", base_addresses={"api": f"http://127.0.0.1:{fake.server_port}"}
        )
        secret = stripe_payment.start_stripe_payment(client, order)
    finally:
        fake.shutdown()
        fake.server_close()
    [form] = _FakeStripe.created
    assert secret.startswith("pi_1_secret")
    assert (form["amount"], form["currency"]) == (["1999"], ["usd"])
    assert form["metadata[order_id]"] == [order.id]

    # Stripe then confirms the payment to stockguard, signed with the endpoint secret.
    event = {
        "id": f"evt_{stock.uid}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": "pi_1_test",
                "object": "payment_intent",
                "amount_received": 1999,
                "currency": "usd",
                "metadata": {"order_id": form["metadata[order_id]"][0]},
            }
        },
    }
    body = json.dumps(event).encode()
    stamp = int(time.time())
    mac = hmac.new(server.stripe_secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    answer = httpx.post(
        f"{server.url}/v1/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": f"t={stamp},v1={mac.hexdigest()}"},
    )
    assert answer.status_code == 200, answer.text
    paid = sg.get_order(order.id)
    assert paid.status == "paid"
    assert paid.payment is not None
    assert (paid.payment.provider, paid.payment.payment_id) == ("stripe", "pi_1_test")


def test_events_example_follows_the_feed(sg: Client, stock: StockHelper) -> None:
    sku = stock.sku("EX-FEED", 1)
    store = events.Storefront()
    events.poll(sg, store)  # catch up with everything before this test
    order = sg.place_order([{"sku": sku, "quantity": 1}], id=f"f-{stock.uid}")
    sg.pay_order(order.id, provider="manual", payment_id=f"f-{stock.uid}")
    deadline = time.monotonic() + 15
    while order.id not in store.paid_orders:
        assert time.monotonic() < deadline, "order.paid did not reach the feed"
        events.poll(sg, store)
        time.sleep(0.05)
    assert store.available[sku] == 0
    assert sku in store.sold_out
    assert store.last_seq is not None
    before = store.last_seq
    sg.cancel_order(order.id)
    while sku in store.sold_out:
        assert time.monotonic() < deadline + 15, "stock.back_in_stock did not reach the feed"
        events.poll(sg, store)
        time.sleep(0.05)
    assert store.available[sku] == 1
    assert store.last_seq is not None
    assert store.last_seq > before


def test_webhooks_example_verifies_and_applies_once(stock: StockHelper) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    event = {
        "id": f"evt_{stock.uid}",
        "seq": 7,
        "type": "stock.out_of_stock",
        "occurred_at": "2026-11-26T10:00:00Z",
        "data": {"sku": f"W-{stock.uid}", "available": 0},
    }
    body = json.dumps(event).encode()
    now = datetime.now(UTC)
    headers = {
        "webhook-id": str(event["id"]),
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(str(event["id"]), now, body.decode()),
    }
    store = events.Storefront()
    assert webhooks.receive(body, headers, secret, store) == 204
    assert store.sold_out == {f"W-{stock.uid}"}
    store.sold_out.clear()
    assert webhooks.receive(body, headers, secret, store) == 204  # a repeat
    assert store.sold_out == set()  # ...is not applied again
    forged = body.replace(b"out_of_stock", b"back_in_stock")
    assert webhooks.receive(forged, headers, secret, store) == 400
