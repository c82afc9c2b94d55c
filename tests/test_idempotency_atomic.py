"""An ``Idempotency-Key`` answer lives in the transaction of its effect (DESIGN.md §10,
invariant 15): a request that dies after its effect committed is answered again, never
run again; only authenticated requests take a key; a key belongs to an API key."""

from __future__ import annotations

import json
from functools import partial

import httpx
import pytest
from starlette.types import Message

from stockguard.api.app import build_app
from stockguard.config import Settings
from stockguard.service.uow import Backends
from tests.conftest import Keys, Stocker
from tests.helpers import assert_invariants, ledger, level, race

JSON = {"Content-Type": "application/json"}


class ConnectionDied(Exception):
    """The process died (or the client's connection broke) right after the effect."""


async def _send_and_die(
    settings: Settings,
    backends: Backends,
    path: str,
    raw: bytes,
    headers: dict[str, str],
) -> None:
    """Run a request through the app whose answer never leaves the process."""
    app = build_app(settings, backends)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("stockguard.test", 80),
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: Message) -> None:
        raise ConnectionDied(message["type"])

    with pytest.raises(ConnectionDied):
        await app(scope, receive, send)


async def test_an_adjustment_whose_answer_was_lost_is_answered_again_not_applied_again(
    client: httpx.AsyncClient, settings: Settings, backends: Backends, stock: Stocker,
    uid: str, api_keys: Keys,
) -> None:  # fmt: skip
    sku, loc = f"J{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    raw = json.dumps({"location": loc, "delta": 5, "reason": "received"}).encode()
    headers = {"Authorization": f"Bearer {api_keys.admin}", "Idempotency-Key": f"k{uid}"}
    await _send_and_die(settings, backends, f"/v1/skus/{sku}/adjustments", raw, headers)
    assert await level(backends.pool, sku, loc) == (15, 0)  # the effect committed
    retry = await client.post(
        f"/v1/skus/{sku}/adjustments", content=raw, headers={**headers, **JSON}
    )
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["on_hand"] == 15
    assert await level(backends.pool, sku, loc) == (15, 0)  # applied once
    assert await ledger(backends.pool, sku, loc) == (15, 0)


async def test_an_order_without_id_whose_answer_was_lost_is_placed_once(
    client: httpx.AsyncClient, settings: Settings, backends: Backends, stock: Stocker,
    uid: str, api_keys: Keys,
) -> None:  # fmt: skip
    sku, loc = f"N{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    raw = json.dumps({"lines": [{"sku": sku, "quantity": 3}]}).encode()
    headers = {"Authorization": f"Bearer {api_keys.service}", "Idempotency-Key": f"k{uid}"}
    await _send_and_die(settings, backends, "/v1/orders", raw, headers)
    retry = await client.post("/v1/orders", content=raw, headers={**headers, **JSON})
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    placed = await backends.pool.fetchval(
        "SELECT count(*) FROM order_lines WHERE sku = $1", sku
    )  # fmt: skip
    assert placed == 1
    assert await level(backends.pool, sku, loc) == (10, 3)
    assert retry.json()["id"] == await backends.pool.fetchval(
        "SELECT order_id FROM order_lines WHERE sku = $1", sku
    )


@pytest.mark.parametrize("path", ["adjust", "order"])
async def test_concurrent_requests_with_one_key_apply_once_and_answer_alike(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str, path: str
) -> None:
    for n in range(20):
        sku, loc = f"C{uid}{n}", f"w{uid}"
        await stock({sku: {loc: 10}})
        body: dict[str, object]
        if path == "adjust":
            url = f"/v1/skus/{sku}/adjustments"
            body = {"location": loc, "delta": 2, "reason": "received"}
        else:
            url, body = "/v1/orders", {"lines": [{"sku": sku, "quantity": 2}]}
        post = partial(client.post, url, json=body, headers={"Idempotency-Key": f"k{uid}{n}"})
        answers = await race(post, post, post)
        assert all(isinstance(a, httpx.Response) for a in answers), answers
        responses = [a for a in answers if isinstance(a, httpx.Response)]
        assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
        assert len({r.content for r in responses}) == 1  # the same answer, replayed
        expected = (12, 0) if path == "adjust" else (10, 2)
        assert await level(backends.pool, sku, loc) == expected
    await assert_invariants(backends.pool)


async def test_unauthenticated_requests_never_take_a_key(
    client: httpx.AsyncClient, backends: Backends, uid: str
) -> None:
    for auth in ("", "Bearer nonsense", "Basic abc"):
        r = await client.post(
            "/v1/orders",
            content=b"{not json",
            headers={
                "Authorization": auth,
                "Idempotency-Key": f"u{uid}",
                "Content-Type": "application/json",
            },
        )
        assert r.status_code == 401  # before the body is read: 401 comes before 422
        assert r.headers["content-type"] == "application/problem+json"
    assert await backends.pool.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE key = $1", f"u{uid}"
    ) == 0  # fmt: skip


async def test_a_service_key_gets_403_before_its_malformed_body_is_read(
    client: httpx.AsyncClient, api_keys: Keys, uid: str
) -> None:
    r = await client.post(
        f"/v1/skus/S{uid}/adjustments",
        content=b"{not json",
        headers={"Authorization": f"Bearer {api_keys.service}", **JSON},
    )
    assert r.status_code == 403
    assert r.json()["code"] == "forbidden"


async def test_a_key_belongs_to_the_api_key_however_its_header_is_spelled(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str, api_keys: Keys
) -> None:
    sku, loc = f"B{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    body = {"lines": [{"sku": sku, "quantity": 1}]}
    answers = []
    for scheme in ("Bearer", "bearer", "BEARER"):
        headers = {"Authorization": f"{scheme}  {api_keys.service} ", "Idempotency-Key": f"k{uid}"}
        answers.append(await client.post("/v1/orders", json=body, headers=headers))
    assert [a.status_code for a in answers] == [201, 201, 201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert await level(backends.pool, sku, loc) == (10, 1)
    # Another API key's same key is its own.
    other = await client.post("/v1/orders", json=body, headers={"Idempotency-Key": f"k{uid}"})
    assert other.status_code == 201
    assert other.json()["id"] != answers[0].json()["id"]


async def test_a_refusal_is_stored_and_replayed_and_a_secret_is_not(
    client: httpx.AsyncClient, backends: Backends, uid: str
) -> None:
    made = await client.post(
        "/v1/admin/api-keys", json={"role": "service", "name": f"n{uid}"},
        headers={"Idempotency-Key": f"s{uid}"},
    )  # fmt: skip
    assert made.status_code == 201
    assert made.json()["key"]
    again = await client.post(
        "/v1/admin/api-keys", json={"role": "service", "name": f"n{uid}"},
        headers={"Idempotency-Key": f"s{uid}"},
    )  # fmt: skip
    assert again.status_code == 201
    assert again.json()["id"] == made.json()["id"]
    assert again.json()["key"] is None  # shown once
    stored = await backends.pool.fetchval(
        "SELECT body FROM idempotency_keys WHERE key = $1", f"s{uid}"
    )
    assert made.json()["key"].encode() not in bytes(stored)
