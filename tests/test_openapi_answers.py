"""Real answers of every route validate against the schema the document declares for their
status and code (tests/test_openapi_v2.py does the same for the version-2 routes): a
deterministic walk through the checkout flow, admin and operations, with the refusals
each route is known for. Schemathesis (tests/test_schemathesis.py) explores the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stockguard.api.app import build_app
from stockguard.config import Settings
from stockguard.service.uow import Backends
from tests.conftest import Keys, Stocker
from tests.test_openapi_v2 import ROUTES as V2_ROUTES
from tests.test_openapi_v2 import conforms
from tests.test_payments import (
    hooks,  # noqa: F401 - the fixture: an app with the webhook secrets
    razorpay_event,
    razorpay_signed,
    stripe_event,
    stripe_signed,
)

pytestmark = pytest.mark.usefixtures("backends")


class Walk:
    """Calls routes and checks each answer against the document; remembers what it saw."""

    def __init__(self, client: httpx.AsyncClient, document: dict[str, Any]) -> None:
        self.client = client
        self.document = document
        self.seen: set[tuple[str, str, int]] = set()

    async def __call__(self, method: str, template: str, url: str, **kw: Any) -> Any:
        answer = await self.client.request(method.upper(), url, **kw)
        self.seen.add((method, template, answer.status_code))
        if answer.status_code == 204:
            assert answer.content == b""
            assert "204" in self.document["paths"][template][method]["responses"]
            return None
        if template == "/metrics":
            assert answer.headers["content-type"].startswith("text/plain")
            return answer.text
        return conforms(self.document, method, template, answer)


@pytest.fixture
async def private(
    settings: Settings, backends: Backends, api_keys: Keys
) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client of an app that allows loopback webhook URLs, with a short timeout."""
    configured = settings.model_copy(
        update={"webhook_allow_private_urls": True, "webhook_timeout_seconds": 1.0}
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(configured, backends)),
        base_url="http://t",
        headers={"Authorization": f"Bearer {api_keys.admin}"},
    ) as client:
        yield client


async def test_every_route_answers_what_the_document_declares(
    hooks: httpx.AsyncClient,  # noqa: F811
    private: httpx.AsyncClient,
    backends: Backends,
    stock: Stocker,
    api_keys: Keys,
    uid: str,
) -> None:
    document = (await hooks.get("/openapi.json")).json()
    call = Walk(hooks, document)
    loc, other, sku, ch = f"a{uid}", f"b{uid}", f"OA{uid}", f"c{uid}"

    # Catalogue: created (201), updated (200), read, listed, unknown (404).
    one = "/v1/locations/{code}"
    assert (await call("put", one, f"/v1/locations/{loc}", json={"name": "A"}))["code"] == loc
    await call("put", one, f"/v1/locations/{loc}", json={"name": "A", "priority": 1})
    await call("put", one, f"/v1/locations/{other}", json={"name": "B", "priority": 2})
    listed = await call("get", "/v1/locations", "/v1/locations", params={"limit": 1})
    assert len(listed["items"]) == 1
    channel = "/v1/channels/{code}"
    await call("put", channel, f"/v1/channels/{ch}", json={"name": "C", "locations": [loc]})
    await call("put", channel, f"/v1/channels/{ch}", json={"name": "C", "locations": [loc]})
    assert (await call("get", channel, f"/v1/channels/{ch}"))["locations"] == [loc]
    assert (await call("get", channel, f"/v1/channels/no{uid}"))["code"] == "not_found"
    skus = "/v1/skus/{sku}"
    made = await call("put", skus, f"/v1/skus/{sku}", json={"name": "S", "low_stock_threshold": 2})
    assert made["low_stock_threshold"] == 2
    await call("put", skus, f"/v1/skus/{sku}", json={"name": "S"})
    await call(
        "post",
        "/v1/skus/{sku}/adjustments",
        f"/v1/skus/{sku}/adjustments",
        json={"location": loc, "delta": 10, "reason": "received"},
    )
    assert (await call("get", skus, f"/v1/skus/{sku}"))["on_hand"] == 10
    assert (await call("get", skus, f"/v1/skus/NO{uid}"))["code"] == "not_found"
    await call("get", "/v1/skus", "/v1/skus", params={"limit": 2})
    avail = "/v1/availability"
    got = await call("get", avail, avail, params={"sku": [sku, f"NO{uid}"], "channel": ch})
    assert got["items"][0]["locations"] == {loc: 10}
    assert (await call("get", avail, avail, params={"sku": sku, "channel": f"no{uid}"}))[
        "code"
    ] == "validation_error"

    # Orders: placed (201), the same again (200), other content (409), too much (409).
    orders, order = "/v1/orders", "/v1/orders/{order_id}"
    body = {"id": f"o{uid}", "lines": [{"sku": sku, "quantity": 2}]}
    placed = await call("post", orders, orders, json=body)
    assert placed["status"] == "pending"
    assert (await call("post", orders, orders, json=body))["id"] == f"o{uid}"
    other_lines = {**body, "lines": [{"sku": sku, "quantity": 1}]}
    assert (await call("post", orders, orders, json=other_lines))["code"] == "conflict"
    short = await call("post", orders, orders, json={"lines": [{"sku": sku, "quantity": 99}]})
    assert short["shortages"] == [{"sku": sku, "requested": 99, "available": 8}]
    bad = await call("post", orders, orders, json={"lines": [{"sku": sku, "quantity": "2"}]})
    assert bad["errors"][0]["loc"][:2] == ["body", "lines"]
    assert (await call("get", order, f"/v1/orders/o{uid}"))["lines"] == body["lines"]
    await call("get", orders, orders, params={"status": "pending", "limit": 1})
    pay = "/v1/orders/{order_id}/payments"
    paid = await call(
        "post", pay, f"/v1/orders/o{uid}/payments", json={"provider": "manual", "payment_id": uid}
    )
    assert paid["payment"]["provider"] == "manual"
    processing = await call("patch", order, f"/v1/orders/o{uid}", json={"status": "processing"})
    assert processing["status"] == "processing"
    back = await call("patch", order, f"/v1/orders/o{uid}", json={"status": "delivered"})
    assert back["code"] == "invalid_transition"
    await call("patch", order, f"/v1/orders/o{uid}", json={"status": "shipped"})
    assert (await call("delete", order, f"/v1/orders/o{uid}"))["code"] == "order_not_deletable"
    cancel = "/v1/orders/{order_id}/cancel"
    await call("post", orders, orders, json={"id": f"p{uid}", "lines": body["lines"]})
    cancelled = await call("post", cancel, f"/v1/orders/p{uid}/cancel", json={"reason": "r"})
    assert cancelled["cancel_reason"] == "r"
    await call("delete", order, f"/v1/orders/p{uid}")
    assert (await call("delete", order, f"/v1/orders/p{uid}"))["code"] == "not_found"
    assert (await call("post", cancel, f"/v1/orders/p{uid}/cancel"))["code"] == "not_found"

    # The same Idempotency-Key with another request; no key; a service key on admin.
    keyed = {"Idempotency-Key": f"k{uid}"}
    await call("post", orders, orders, json={"lines": body["lines"]}, headers=keyed)
    reused = await call("post", orders, orders, json=other_lines, headers=keyed)
    assert reused["code"] == "idempotency_key_reused"
    unkeyed = await call("get", order, f"/v1/orders/o{uid}", headers={"Authorization": ""})
    assert unkeyed["code"] == "unauthorized"
    service = {"Authorization": f"Bearer {api_keys.service}"}
    assert (await call("get", "/v1/admin/verify", "/v1/admin/verify", headers=service))[
        "code"
    ] == "forbidden"

    # Payment webhooks: paid, replayed, ignored, refused.
    await call("post", orders, orders, json={"id": f"w{uid}", "lines": body["lines"]})
    stripe = "/v1/webhooks/stripe"
    event = stripe_event(f"evt_{uid}", f"w{uid}", f"pi_{uid}")
    signed = {"Stripe-Signature": stripe_signed(event), "Authorization": ""}
    assert (await call("post", stripe, stripe, content=event, headers=signed))["order"]["id"]
    replay = await call("post", stripe, stripe, content=event, headers=signed)
    assert replay == {"replayed": True}
    forged = {"Stripe-Signature": "t=1,v1=00", "Authorization": ""}
    refused = await call("post", stripe, stripe, content=event, headers=forged)
    assert refused["code"] == "invalid_signature"
    razorpay = "/v1/webhooks/razorpay"
    rz = razorpay_event("payment.captured", f"none{uid}", f"pay_{uid}")
    rz_signed = {"X-Razorpay-Signature": razorpay_signed(rz), "Authorization": ""}
    ignored = await call("post", razorpay, razorpay, content=rz, headers=rz_signed)
    assert ignored == {"ignored": "unknown order"}

    # Admin.
    keys_path, key_path = "/v1/admin/api-keys", "/v1/admin/api-keys/{key_id}"
    once = {"Idempotency-Key": f"key{uid}"}
    new_key = {"role": "service", "name": uid}
    created = await call("post", keys_path, keys_path, json=new_key, headers=once)
    assert created["key"].startswith("sg_")
    replayed = await call("post", keys_path, keys_path, json=new_key, headers=once)
    assert replayed == {**created, "key": None}  # the key is shown once
    await call("get", keys_path, keys_path, params={"limit": 1})
    await call("delete", key_path, f"/v1/admin/api-keys/{created['id']}")
    assert (await call("delete", key_path, f"/v1/admin/api-keys/{created['id']}"))[
        "code"
    ] == "not_found"
    moved = await call("get", "/v1/admin/movements", "/v1/admin/movements", params={"sku": sku})
    assert {"unavailable_delta", "reserved_delta"} <= moved["items"][0].keys()
    logs = "/v1/admin/orders/{order_id}/inventory-logs"
    assert (await call("get", logs, f"/v1/admin/orders/o{uid}/inventory-logs"))["items"]
    assert (await call("get", "/v1/admin/verify", "/v1/admin/verify"))["ok"] is True
    reconcile = "/v1/admin/cache/reconcile"
    assert (await call("post", reconcile, reconcile, json={"repair": False}))["checked"] >= 1
    for listing in ("/v1/admin/orders/needs-review", "/v1/admin/orders/paid-uncommitted"):
        await call("get", listing, listing, params={"limit": 1})
    recover = "/v1/admin/orders/{order_id}/recover-inventory"
    await call("post", orders, orders, json={"id": f"u{uid}", "lines": body["lines"]})
    unpaid = await call("post", recover, f"/v1/admin/orders/u{uid}/recover-inventory")
    assert unpaid["code"] == "invalid_transition"
    recovered = await call("post", recover, f"/v1/admin/orders/w{uid}/recover-inventory")
    assert recovered["outcome"] == "skipped_already_committed"
    assert (await call("post", recover, f"/v1/admin/orders/no{uid}/recover-inventory"))[
        "code"
    ] == "not_found"

    # Webhook endpoints (a loopback URL: allowed by this app's settings; nothing listens).
    endpoints, endpoint = "/v1/admin/webhook-endpoints", "/v1/admin/webhook-endpoints/{endpoint_id}"
    walk = Walk(private, document)
    new = {"url": "http://127.0.0.1:9/hook", "events": ["order.*"], "description": uid}
    made = await walk("post", endpoints, endpoints, json=new)
    assert made["secret"].startswith("whsec_")
    here = f"{endpoints}/{made['id']}"
    assert (await walk("get", endpoint, here))["events"] == ["order.*"]
    await walk("get", endpoints, endpoints, params={"limit": 1})
    assert (await walk("patch", endpoint, here, json={"active": False}))["active"] is False
    assert (await walk("patch", endpoint, here, json={}))["code"] == "validation_error"
    tried = await walk("post", endpoint + "/test", here + "/test")
    assert tried["type"] == "ping"
    deliveries = await walk("get", endpoint + "/deliveries", here + "/deliveries")
    assert deliveries["items"][0]["event_id"] == tried["event_id"]
    queued = await walk("post", endpoint + "/replay", here + "/replay", json={"after_seq": 0})
    assert queued["queued"] >= 0
    await walk("delete", endpoint, here)
    assert (await walk("get", endpoint, here))["code"] == "not_found"
    call.seen |= walk.seen

    # Events and operations.
    feed = await call("get", "/v1/events", "/v1/events", params={"limit": 500})
    assert feed["items"]
    assert (await call("get", "/v1/events", "/v1/events", params={"type": "nope"}))[
        "code"
    ] == "validation_error"
    anonymous = {"Authorization": ""}
    for ops in ("/healthz", "/readyz", "/metrics"):
        await call("get", ops, ops, headers=anonymous)

    # Every operation outside tests/test_openapi_v2.py answered a success here.
    for path, methods in document["paths"].items():
        for method in methods:
            if (method, path) in V2_ROUTES:
                continue
            statuses = {s for m, t, s in call.seen if (m, t) == (method, path)}
            assert any(s < 300 for s in statuses), (method, path, statuses)
