"""Extending a pending order's hold (API.md "Holds: extend"): every ``reserved``
reservation expires ``reservation_ttl_seconds`` from now; an order with an expired
reservation, or not pending, is refused and nothing changes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from stockguard.domain.errors import ValidationFailed
from stockguard.service import returns
from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import assert_invariants, expire_now, mark_paid

pytestmark = pytest.mark.usefixtures("backends")


async def held(pool: asyncpg.Pool, order_id: str) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT id, status, expires_at, updated_at FROM reservations WHERE order_id = $1 "
        "ORDER BY id",
        order_id,
    )
    return [tuple(r) for r in rows]


async def levels(pool: asyncpg.Pool, sku: str) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT location, on_hand, reserved, (SELECT count(*) FROM stock_movements m "
        "WHERE m.sku = l.sku) FROM inventory_levels l WHERE sku = $1 ORDER BY location",
        sku,
    )
    return [tuple(r) for r in rows]


async def place(client: httpx.AsyncClient, order_id: str, sku: str, ttl: int = 60) -> None:
    body = {
        "id": order_id,
        "lines": [{"sku": sku, "quantity": 2}],
        "reservation_ttl_seconds": ttl,
    }
    r = await client.post("/v1/orders", json=body)
    assert r.status_code == 201, r.text


async def test_extend_moves_every_reserved_reservation_to_now_plus_ttl(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, a, b = f"E{uid}", f"a{uid}", f"b{uid}"
    await stock({sku: {a: 1, b: 1}}, locations={a: 1, b: 2})
    await place(client, f"o{uid}", sku)  # split: one unit at each location
    before = await levels(backends.pool, sku)
    t0: datetime = await backends.pool.fetchval("SELECT now()")
    r = await client.post(f"/v1/orders/o{uid}/extend", json={"reservation_ttl_seconds": 3600})
    assert r.status_code == 200, r.text
    t1: datetime = await backends.pool.fetchval("SELECT now()")
    order = r.json()
    assert order["status"] == "pending"
    assert len(order["reservations"]) == 2
    for res in order["reservations"]:
        assert res["status"] == "reserved"
        at = datetime.fromisoformat(res["expires_at"].replace("Z", "+00:00"))
        assert t0 + timedelta(seconds=3600) <= at <= t1 + timedelta(seconds=3600)
    assert [h[2] for h in await held(backends.pool, f"o{uid}")] == [
        datetime.fromisoformat(x["expires_at"].replace("Z", "+00:00"))
        for x in order["reservations"]
    ]
    assert (await client.get(f"/v1/orders/o{uid}")).json() == order
    assert await levels(backends.pool, sku) == before  # no unit moves
    # Shorter is allowed too: it is "now + ttl", not "later than before".
    short = await client.post(f"/v1/orders/o{uid}/extend", json={"reservation_ttl_seconds": 1})
    at = datetime.fromisoformat(
        short.json()["reservations"][0]["expires_at"].replace("Z", "+00:00")
    )
    assert at <= await backends.pool.fetchval("SELECT now()") + timedelta(seconds=1)
    await assert_invariants(backends.pool)


async def test_extend_refusals_change_nothing(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"E{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    for name in ("exp", "paid", "can", "ok"):
        await place(client, f"{name}{uid}", sku)
    await expire_now(backends, f"exp{uid}")
    await mark_paid(backends.pool, f"paid{uid}")
    await client.post(f"/v1/orders/can{uid}/cancel")
    cases = {
        f"exp{uid}": (409, "reservation_expired"),
        f"paid{uid}": (409, "invalid_transition"),
        f"can{uid}": (409, "invalid_transition"),
        f"none{uid}": (404, "not_found"),
    }
    for order_id, (status, code) in cases.items():
        before = (await held(backends.pool, order_id), await levels(backends.pool, sku))
        r = await client.post(
            f"/v1/orders/{order_id}/extend", json={"reservation_ttl_seconds": 600}
        )
        assert (r.status_code, r.json()["code"]) == (status, code), order_id
        assert (await held(backends.pool, order_id), await levels(backends.pool, sku)) == before
    expired = await client.post(
        f"/v1/orders/exp{uid}/extend", json={"reservation_ttl_seconds": 600}
    )
    assert expired.json()["reservation_ids"] == [
        h[0] for h in await held(backends.pool, f"exp{uid}")
    ]
    paid = await client.post(f"/v1/orders/paid{uid}/extend", json={"reservation_ttl_seconds": 6})
    assert (paid.json()["from"], paid.json()["to"]) == ("paid", "extended")
    untouched = await held(backends.pool, f"ok{uid}")
    for body in (
        {"reservation_ttl_seconds": 0},
        {"reservation_ttl_seconds": 86_401},
        {"reservation_ttl_seconds": "60"},
        {"reservation_ttl_seconds": 1.5},
        {},
        {"reservation_ttl_seconds": 60, "extra": True},
    ):
        r = await client.post(f"/v1/orders/ok{uid}/extend", json=body)
        assert (r.status_code, r.json()["code"]) == (422, "validation_error"), body
    assert await held(backends.pool, f"ok{uid}") == untouched
    with pytest.raises(ValidationFailed):
        await returns.extend_hold(backends, f"ok{uid}", 0, "t")
    await assert_invariants(backends.pool)


async def test_extend_with_an_idempotency_key_is_answered_again_not_run_again(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"E{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    await place(client, f"o{uid}", sku)
    key = {"Idempotency-Key": f"k{uid}"}
    url = f"/v1/orders/o{uid}/extend"
    first = await client.post(url, json={"reservation_ttl_seconds": 900}, headers=key)
    assert first.status_code == 200
    after = await held(backends.pool, f"o{uid}")
    again = await client.post(url, json={"reservation_ttl_seconds": 900}, headers=key)
    assert (again.status_code, again.content) == (200, first.content)
    assert await held(backends.pool, f"o{uid}") == after
    other = await client.post(url, json={"reservation_ttl_seconds": 901}, headers=key)
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    assert await held(backends.pool, f"o{uid}") == after
