"""Idempotency-Key (API.md "Idempotency"): the first answer replayed for the same key and
body, refusals included; another body is 422 ``idempotency_key_reused``; keys are per API
key. And the request size limit: bodies over 1 MiB are 413 ``payload_too_large``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx

from stockguard.service.uow import Backends
from tests.conftest import Keys, Stocker
from tests.helpers import level
from tests.test_api_problems import assert_problem, order_body, order_count

MIB = 1_048_576


async def test_same_key_same_body_replays_and_places_once(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    body = {"lines": [{"sku": sku, "quantity": 3}]}  # no id: a retry must not make a new one
    key = {"Idempotency-Key": f"k{uid}"}
    first = await client.post("/v1/orders", json=body, headers=key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    for _ in range(3):
        again = await client.post("/v1/orders", json=body, headers=key)
        assert again.status_code == 201
        assert again.content == first.content
        assert again.headers["content-type"] == first.headers["content-type"]
        assert again.headers["idempotent-replayed"] == "true"
    assert await order_count(backends.pool, sku) == 1
    assert await level(backends.pool, sku, loc) == (10, 3)


async def test_same_key_other_body_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    key = {"Idempotency-Key": f"k{uid}"}
    first = await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 2)), headers=key)
    assert first.status_code == 201
    for other in (
        order_body(f"o{uid}", (sku, 3)),
        order_body(f"p{uid}", (sku, 2)),
        {**order_body(f"o{uid}", (sku, 2)), "allow_split": False},
    ):
        r = await client.post("/v1/orders", json=other, headers=key)
        assert_problem(r, 422, "idempotency_key_reused")
    # The same key on another route is another request too.
    r = await client.post(f"/v1/orders/o{uid}/cancel", headers=key)
    assert_problem(r, 422, "idempotency_key_reused")
    assert (await client.get(f"/v1/orders/o{uid}")).json()["status"] == "pending"
    assert_problem(await client.get(f"/v1/orders/p{uid}"), 404, "not_found")
    assert await order_count(backends.pool, sku) == 1
    assert await level(backends.pool, sku, loc) == (10, 2)
    # The original request still replays.
    again = await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 2)), headers=key)
    assert (again.status_code, again.content) == (201, first.content)


async def test_out_of_stock_refusal_is_replayed_even_after_restock(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 2}})
    key = {"Idempotency-Key": f"k{uid}"}
    body = order_body(f"o{uid}", (sku, 5))
    refused = await client.post("/v1/orders", json=body, headers=key)
    assert_problem(refused, 409, "out_of_stock")
    restock = await client.post(
        f"/v1/skus/{sku}/adjustments", json={"location": loc, "delta": 10, "reason": "received"}
    )
    assert restock.status_code == 201
    again = await client.post("/v1/orders", json=body, headers=key)
    assert (again.status_code, again.content) == (409, refused.content)
    assert again.headers["content-type"] == "application/problem+json"
    assert await order_count(backends.pool, sku) == 0
    assert await level(backends.pool, sku, loc) == (12, 0)
    fresh = await client.post("/v1/orders", json=body, headers={"Idempotency-Key": f"n{uid}"})
    assert fresh.status_code == 201
    assert await level(backends.pool, sku, loc) == (12, 5)


async def test_keys_are_scoped_per_api_key(
    client: httpx.AsyncClient, backends: Backends, api_keys: Keys, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    body = {"lines": [{"sku": sku, "quantity": 1}]}
    svc = {"Authorization": f"Bearer {api_keys.service}", "Idempotency-Key": f"k{uid}"}
    adm = {"Authorization": f"Bearer {api_keys.admin}", "Idempotency-Key": f"k{uid}"}
    by_service = await client.post("/v1/orders", json=body, headers=svc)
    by_admin = await client.post("/v1/orders", json=body, headers=adm)
    assert (by_service.status_code, by_admin.status_code) == (201, 201)
    assert by_service.json()["id"] != by_admin.json()["id"]
    assert "idempotent-replayed" not in by_admin.headers
    # Another body under the same key is fine for the other caller, refused for the first.
    other = {"lines": [{"sku": sku, "quantity": 2}]}
    assert_problem(
        await client.post("/v1/orders", json=other, headers=svc), 422, "idempotency_key_reused"
    )
    replay = await client.post("/v1/orders", json=body, headers=svc)
    assert replay.content == by_service.content
    assert await order_count(backends.pool, sku) == 2
    assert await level(backends.pool, sku, loc) == (10, 2)


async def test_order_actions_replay_their_first_answer(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    assert (await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 2)))).is_success
    pay_key = {"Idempotency-Key": f"pay{uid}"}
    payment = {"provider": "manual", "payment_id": f"p{uid}"}
    paid = await client.post(f"/v1/orders/o{uid}/payments", json=payment, headers=pay_key)
    assert paid.json()["status"] == "paid"
    cancel_key = {"Idempotency-Key": f"cancel{uid}"}
    cancelled = await client.post(
        f"/v1/orders/o{uid}/cancel", json={"reason": "changed mind"}, headers=cancel_key
    )
    assert cancelled.json()["status"] == "cancelled"
    assert await level(backends.pool, sku, loc) == (5, 0)
    # The payment's retry answers what it answered then, and does nothing now.
    retry = await client.post(f"/v1/orders/o{uid}/payments", json=payment, headers=pay_key)
    assert (retry.status_code, retry.content) == (200, paid.content)
    retry = await client.post(
        f"/v1/orders/o{uid}/cancel", json={"reason": "changed mind"}, headers=cancel_key
    )
    assert (retry.status_code, retry.content) == (200, cancelled.content)
    assert (await client.get(f"/v1/orders/o{uid}")).json()["status"] == "cancelled"
    assert await level(backends.pool, sku, loc) == (5, 0)


# ---------------------------------------------------------------- body size


def _padded(body: dict[str, object], size: int) -> bytes:
    raw = json.dumps(body).encode()
    assert len(raw) < size
    return raw + b" " * (size - len(raw))  # JSON allows trailing whitespace


async def test_body_over_one_mib_is_413_and_nothing_changes(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    json_headers = {"content-type": "application/json"}
    too_big = _padded(order_body(f"o{uid}", (sku, 1)), MIB + 1)
    r = await client.post("/v1/orders", content=too_big, headers=json_headers)
    assert_problem(r, 413, "payload_too_large")
    for method, path in (("PUT", f"/v1/skus/{sku}"), ("PATCH", f"/v1/orders/o{uid}")):
        r = await client.request(method, path, content=b" " * (MIB + 1), headers=json_headers)
        assert_problem(r, 413, "payload_too_large")
    assert_problem(await client.get(f"/v1/orders/o{uid}"), 404, "not_found")
    assert await level(backends.pool, sku, loc) == (5, 0)
    exact = _padded(order_body(f"o{uid}", (sku, 1)), MIB)
    ok = await client.post("/v1/orders", content=exact, headers=json_headers)
    assert ok.status_code == 201, ok.text
    assert await level(backends.pool, sku, loc) == (5, 1)


async def test_streamed_body_over_one_mib_is_413(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    head = json.dumps(order_body(f"o{uid}", (sku, 1))).encode()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the server must count
        yield head
        for _ in range(17):
            yield b" " * 65_536

    r = await client.post(
        "/v1/orders", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "payload_too_large")
    assert await order_count(backends.pool, sku) == 0
    assert await level(backends.pool, sku, loc) == (5, 0)


async def test_too_large_request_does_not_burn_its_idempotency_key(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    key = {"Idempotency-Key": f"k{uid}", "content-type": "application/json"}
    body = order_body(f"o{uid}", (sku, 1))
    r = await client.post("/v1/orders", content=_padded(body, MIB + 10), headers=key)
    assert_problem(r, 413, "payload_too_large")
    ok = await client.post("/v1/orders", content=json.dumps(body).encode(), headers=key)
    assert ok.status_code == 201, ok.text
    assert await level(backends.pool, sku, loc) == (5, 1)


async def test_concurrent_retries_with_one_key_place_one_order(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    body = {"lines": [{"sku": sku, "quantity": 1}]}
    key = {"Idempotency-Key": f"k{uid}"}
    answers = await asyncio.gather(
        *(client.post("/v1/orders", json=body, headers=key) for _ in range(8))
    )
    placed = [r for r in answers if r.status_code == 201]
    assert placed
    assert len({r.content for r in placed}) == 1
    for r in answers:
        if r.status_code != 201:
            assert_problem(r, 409, "conflict")  # the first attempt is still in progress
    assert await order_count(backends.pool, sku) == 1
    assert await level(backends.pool, sku, loc) == (10, 1)
    again = await client.post("/v1/orders", json=body, headers=key)
    assert (again.status_code, again.content) == (201, placed[0].content)
