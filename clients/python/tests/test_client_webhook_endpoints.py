"""Webhook endpoints through the client, and real deliveries from the live server to a
receiver built on the webhooks example (clients/python/examples/webhooks.py): the
signature checks out with the secret the creation answered, events arrive, a ping is
answered, deliveries are listed, a replay is queued."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import StockHelper
from stockguard_client import Client, NotFound, ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import events
import webhooks


@dataclass
class Receiver:
    """A shop's webhook route: ``webhooks.receive`` behind a real HTTP server."""

    secret: str = ""
    store: events.Storefront = field(default_factory=events.Storefront)
    statuses: list[int] = field(default_factory=list)
    verified_ids: list[str] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            headers = {k: v for k, v in self.headers.items()}
            status = webhooks.receive(body, headers, state.secret, state.store)
            if status == 204:
                state.verified_ids.append(headers["webhook-id"])
            state.statuses.append(status)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{http.server_port}/stockguard-hooks"
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        http.shutdown()
        http.server_close()


def test_deliveries_verify_with_the_endpoints_secret(
    admin: Client, shop: Client, stock: StockHelper, receiver: Receiver
) -> None:
    endpoint_id, receiver.secret = webhooks.subscribe(admin, receiver.url)
    assert receiver.secret.startswith("whsec_")
    try:
        made = admin.get_webhook_endpoint(endpoint_id)
        assert made.secret is None  # shown once
        assert (made.url, made.events, made.active) == (receiver.url, ["order.*", "stock.*"], True)
        assert made.id in {e.id for e in admin.list_webhook_endpoints(limit=500).items}

        sku = stock.sku("HOOK", 1)
        order = shop.place_order([{"sku": sku, "quantity": 1}], id=f"hook-{stock.uid}")
        shop.pay_order(order.id, provider="manual", payment_id=f"hook-{stock.uid}")
        deadline = time.monotonic() + 20
        while order.id not in receiver.store.paid_orders:
            assert time.monotonic() < deadline, f"no order.paid delivered: {receiver.statuses}"
            time.sleep(0.05)
        assert receiver.store.sold_out == {sku}
        assert 400 not in receiver.statuses  # every delivery verified

        attempt = admin.ping_webhook_endpoint(made.id)
        assert attempt.type == "ping"
        assert attempt.status == "delivered"
        assert attempt.last_status_code == 204
        assert attempt.event_id in receiver.verified_ids

        delivered = admin.list_webhook_deliveries(made.id, status="delivered", limit=500).items
        assert {"order.placed", "order.paid"} <= {d.type for d in delivered}
        first = min(d.seq for d in delivered if d.seq is not None)
        assert admin.replay_webhook_endpoint(made.id, after_seq=first - 1) >= 2

        quiet = admin.update_webhook_endpoint(made.id, active=False, description=None)
        assert (quiet.active, quiet.description) == (False, None)
        with pytest.raises(ValidationError):
            admin.update_webhook_endpoint(made.id)
    finally:
        admin.delete_webhook_endpoint(made.id)
    with pytest.raises(NotFound):
        admin.get_webhook_endpoint(made.id)


def test_a_receiver_with_another_secret_refuses(admin: Client, receiver: Receiver) -> None:
    made = admin.create_webhook_endpoint(receiver.url, ["*"])
    assert made.secret is not None
    receiver.secret = "whsec_" + "A" * 43 + "="  # not this endpoint's secret
    try:
        attempt = admin.ping_webhook_endpoint(made.id)
        assert attempt.last_status_code == 400  # the receiver refused the signature
        assert attempt.status != "delivered"
    finally:
        admin.delete_webhook_endpoint(made.id)
