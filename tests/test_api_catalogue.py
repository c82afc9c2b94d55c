"""Catalogue and stock over HTTP: PUT 201/200, adjustments (201, compare-and-set,
on_hand never below reserved), SKU views, availability (per channel, active locations
only, Redis or PostgreSQL) and the paginated lists of SKUs and locations."""

from __future__ import annotations

import httpx

from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import assert_cache_parity, assert_invariants, ledger, level
from tests.test_api_problems import assert_problem, order_body

# ---------------------------------------------------------------- PUT: 201 creates, 200 updates


async def test_put_location_creates_then_updates(client: httpx.AsyncClient, uid: str) -> None:
    code = f"w{uid}"
    created = await client.put(f"/v1/locations/{code}", json={"name": "Main"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert {k: body[k] for k in ("code", "name", "priority", "active")} == {
        "code": code,
        "name": "Main",
        "priority": 100,
        "active": True,
    }
    assert body["created_at"].endswith("Z")
    updated = await client.put(
        f"/v1/locations/{code}", json={"name": "Main hall", "priority": 5, "active": False}
    )
    assert updated.status_code == 200, updated.text
    assert {k: updated.json()[k] for k in ("name", "priority", "active")} == {
        "name": "Main hall",
        "priority": 5,
        "active": False,
    }
    assert updated.json()["created_at"] == body["created_at"]
    again = await client.put(
        f"/v1/locations/{code}", json={"name": "Main hall", "priority": 5, "active": False}
    )
    assert again.status_code == 200


async def test_put_channel_creates_then_updates_in_priority_order(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    a, b, c = f"a{uid}", f"b{uid}", f"c{uid}"
    await stock({}, locations={a: 1, b: 2, c: 3})
    created = await client.put(f"/v1/channels/web{uid}", json={"name": "Web", "locations": [b, a]})
    assert created.status_code == 201, created.text
    assert (created.json()["code"], created.json()["name"]) == (f"web{uid}", "Web")
    assert created.json()["locations"] == [b, a]
    updated = await client.put(
        f"/v1/channels/web{uid}", json={"name": "Web shop", "locations": [c, a]}
    )
    assert updated.status_code == 200, updated.text
    got = (await client.get(f"/v1/channels/web{uid}")).json()
    assert (got["name"], got["locations"]) == ("Web shop", [c, a])
    empty = await client.put(f"/v1/channels/pos{uid}", json={"name": "POS"})
    assert empty.status_code == 201
    assert empty.json()["locations"] == []


async def test_put_sku_creates_then_updates_and_keeps_stock(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    sku = f"Tee.Blue:XL-{uid}"
    created = await client.put(f"/v1/skus/{sku}", json={"name": "T-shirt"})
    assert created.status_code == 201, created.text
    assert created.json() == {
        "sku": sku,
        "name": "T-shirt",
        "on_hand": 0,
        "reserved": 0,
        "unavailable": 0,
        "safety_stock": 0,
        "available": 0,
        "low_stock_threshold": None,
        "levels": [],
    }
    await stock({sku: {f"w{uid}": 4}})
    updated = await client.put(f"/v1/skus/{sku}", json={"name": "Blue T-shirt"})
    assert updated.status_code == 200, updated.text
    assert updated.json()["name"] == "Blue T-shirt"
    assert (updated.json()["on_hand"], updated.json()["available"]) == (4, 4)
    assert (await client.get(f"/v1/skus/{sku}")).json() == updated.json()


# ---------------------------------------------------------------- adjustments


async def test_adjustments_answer_201_with_the_level_after(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    url = f"/v1/skus/{sku}/adjustments"
    r = await client.post(
        url, json={"location": loc, "delta": 5, "reason": "received", "reference": f"PO-{uid}"}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert {k: body[k] for k in ("sku", "location", "on_hand", "reserved", "available")} == {
        "sku": sku,
        "location": loc,
        "on_hand": 15,
        "reserved": 0,
        "available": 15,
    }
    assert body["on_hand_delta"] == 5
    r = await client.post(url, json={"location": loc, "delta": -3, "reason": "damaged"})
    assert (r.status_code, r.json()["on_hand"], r.json()["on_hand_delta"]) == (201, 12, -3)
    r = await client.post(
        url,
        json={"location": loc, "set_on_hand": 20, "reason": "cycle_count", "expected_on_hand": 12},
    )
    assert (r.status_code, r.json()["on_hand"], r.json()["on_hand_delta"]) == (201, 20, 8)
    assert await level(backends.pool, sku, loc) == (20, 0)
    assert await ledger(backends.pool, sku, loc) == (20, 0)
    rows = await backends.pool.fetch(
        "SELECT on_hand_delta, reason, reference, actor FROM stock_movements "
        "WHERE sku = $1 ORDER BY id",
        sku,
    )
    assert [tuple(r.values()) for r in rows][1:] == [
        (5, "received", f"PO-{uid}", "key:test-admin"),
        (-3, "damaged", None, "key:test-admin"),
        (8, "cycle_count", None, "key:test-admin"),
    ]
    await assert_cache_parity(backends, [sku])


async def test_adjustment_at_a_new_location_creates_the_level(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, a, b = f"S{uid}", f"a{uid}", f"b{uid}"
    await stock({sku: {a: 1}}, locations={b: 1})
    r = await client.post(
        f"/v1/skus/{sku}/adjustments", json={"location": b, "set_on_hand": 6, "reason": "restock"}
    )
    assert r.status_code == 201, r.text
    assert await level(backends.pool, sku, b) == (6, 0)
    view = (await client.get(f"/v1/skus/{sku}")).json()
    assert (view["on_hand"], view["available"]) == (7, 7)
    await assert_cache_parity(backends, [sku])


async def test_stale_expected_on_hand_is_409_and_changes_nothing(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    for body in (
        {"location": loc, "set_on_hand": 4, "reason": "cycle_count", "expected_on_hand": 9},
        {"location": loc, "delta": -1, "reason": "shrinkage", "expected_on_hand": 0},
    ):
        r = await client.post(f"/v1/skus/{sku}/adjustments", json=body)
        assert_problem(r, 409, "stale_quantity")
    assert await level(backends.pool, sku, loc) == (10, 0)
    assert await ledger(backends.pool, sku, loc) == (10, 0)


async def test_adjustment_below_reserved_is_409_insufficient_stock(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    placed = await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 4)))
    assert placed.status_code == 201
    url = f"/v1/skus/{sku}/adjustments"
    for body in (
        {"location": loc, "set_on_hand": 3, "reason": "cycle_count"},
        {"location": loc, "delta": -7, "reason": "damaged"},
        {"location": loc, "delta": -11, "reason": "shrinkage"},
    ):
        assert_problem(await client.post(url, json=body), 409, "insufficient_stock")
    assert await level(backends.pool, sku, loc) == (10, 4)
    exact = await client.post(url, json={"location": loc, "delta": -6, "reason": "damaged"})
    assert exact.status_code == 201
    assert (exact.json()["on_hand"], exact.json()["reserved"], exact.json()["available"]) == (
        4,
        4,
        0,
    )
    await assert_invariants(backends.pool)


# ---------------------------------------------------------------- views and availability


async def test_inactive_locations_are_listed_but_not_counted(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, a, b = f"S{uid}", f"a{uid}", f"b{uid}"
    await stock({sku: {a: 5, b: 7}})
    off = await client.put(f"/v1/locations/{b}", json={"name": b, "active": False})
    assert off.status_code == 200
    view = (await client.get(f"/v1/skus/{sku}")).json()
    assert (view["on_hand"], view["reserved"], view["available"]) == (5, 0, 5)
    assert view["levels"] == [
        {
            "location": a,
            "on_hand": 5,
            "reserved": 0,
            "unavailable": 0,
            "safety_stock": 0,
            "available": 5,
            "active": True,
        },
        {
            "location": b,
            "on_hand": 7,
            "reserved": 0,
            "unavailable": 0,
            "safety_stock": 0,
            "available": 7,
            "active": False,
        },
    ]
    avail = (await client.get(f"/v1/availability?sku={sku}")).json()
    assert avail == {"items": [{"sku": sku, "available": 5, "locations": {a: 5}}]}
    # An order cannot take stock from the inactive location.
    r = await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 6)))
    body = assert_problem(r, 409, "out_of_stock")
    assert body["shortages"] == [{"sku": sku, "requested": 6, "available": 5}]
    on = await client.put(f"/v1/locations/{b}", json={"name": b, "active": True})
    assert on.status_code == 200
    avail = (await client.get(f"/v1/availability?sku={sku}")).json()
    assert avail["items"][0]["available"] == 12
    await assert_cache_parity(backends, [sku])


async def test_availability_per_channel_and_fallback_to_postgres(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    x, y, a, b, c = f"X{uid}", f"Y{uid}", f"a{uid}", f"b{uid}", f"c{uid}"
    await stock(
        {x: {a: 5, b: 7, c: 3}, y: {b: 2}},
        channels={f"web{uid}": [a, b], f"pos{uid}": [c], f"none{uid}": []},
    )
    assert (await client.put(f"/v1/locations/{c}", json={"name": c, "active": False})).is_success
    placed = await client.post("/v1/orders", json=order_body(f"o{uid}", (x, 1)))
    assert placed.status_code == 201
    held_at = placed.json()["reservations"][0]["location"]
    assert held_at in (a, b)
    x_locations = {a: 5, b: 7}
    x_locations[held_at] -= 1
    expected_all = {
        "items": [
            {"sku": x, "available": 11, "locations": x_locations},
            {"sku": y, "available": 2, "locations": {b: 2}},
            {"sku": f"NONE{uid}", "available": 0, "locations": {}},
        ]
    }
    url = f"/v1/availability?sku={x}&sku={y}&sku=NONE{uid}"
    assert (await client.get(url)).json() == expected_all
    web = (await client.get(f"{url}&channel=web{uid}")).json()
    assert web == expected_all
    pos = (await client.get(f"{url}&channel=pos{uid}")).json()  # its only location is off
    assert [(i["sku"], i["available"], i["locations"]) for i in pos["items"]] == [
        (x, 0, {}),
        (y, 0, {}),
        (f"NONE{uid}", 0, {}),
    ]
    assert (
        await client.put(f"/v1/channels/web{uid}", json={"name": "w", "locations": [b]})
    ).is_success
    web_b = (await client.get(f"{url}&channel=web{uid}")).json()
    assert [(i["sku"], i["available"]) for i in web_b["items"]] == [
        (x, x_locations[b]),
        (y, 2),
        (f"NONE{uid}", 0),
    ]
    none = (await client.get(f"{url}&channel=none{uid}")).json()
    assert [i["available"] for i in none["items"]] == [0, 0, 0]
    # Redis loses the keys: the same answer comes from PostgreSQL.
    assert backends.cache is not None
    await backends.cache.delete([x, y])
    assert (await client.get(url)).json() == expected_all
    assert_problem(await client.get(f"{url}&channel=nope{uid}"), 422, "validation_error")
    dup = (await client.get(f"/v1/availability?sku={y}&sku={y}")).json()
    assert dup == {"items": [{"sku": y, "available": 2, "locations": {b: 2}}]}


async def test_availability_is_read_from_redis(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 4}})
    assert backends.cache is not None
    inventory_key, locations_key, _ = backends.cache.keys(sku)
    # A drift only Redis shows (whole: a partial entry would be a miss).
    await backends.cache.client.hset(locations_key, loc, 99)
    await backends.cache.client.set(inventory_key, 99)
    got = (await client.get(f"/v1/availability?sku={sku}")).json()
    assert got["items"][0]["locations"] == {loc: 99}
    repaired = await client.post("/v1/admin/cache/reconcile", json={"repair": True})
    assert repaired.status_code == 200
    got = (await client.get(f"/v1/availability?sku={sku}")).json()
    assert got["items"][0] == {"sku": sku, "available": 4, "locations": {loc: 4}}
    await assert_cache_parity(backends, [sku])


# ---------------------------------------------------------------- lists


async def _walk(client: httpx.AsyncClient, url: str, limit: int) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    sep = "&" if "?" in url else "?"
    r = await client.get(f"{url}{sep}limit={limit}")
    for _ in range(10_000):
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "next"}
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        if page["next"] is None:
            return items
        assert len(page["items"]) == limit
        r = await client.get(f"{url}{sep}limit={limit}&after={page['next']}")
    raise AssertionError("pagination never ended")


async def test_skus_list_pages_in_code_order(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    mine = [f"P{uid}-{i}" for i in range(5)]
    await stock({sku: {f"w{uid}": n + 1} for n, sku in enumerate(mine)})
    everything = await _walk(client, "/v1/skus", 500)
    codes = [str(i["sku"]) for i in everything]
    assert codes == sorted(set(codes))
    assert [c for c in codes if c.startswith(f"P{uid}")] == mine
    small = await _walk(client, "/v1/skus", 2)
    assert small == everything
    by_code = {i["sku"]: i for i in everything}
    assert [by_code[s]["on_hand"] for s in mine] == [1, 2, 3, 4, 5]
    first = (await client.get("/v1/skus?limit=3")).json()
    assert first["items"] == everything[:3]
    second = (await client.get(f"/v1/skus?limit=3&after={first['next']}")).json()
    assert second["items"] == everything[3:6]


async def test_locations_list_pages_in_code_order(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    mine = [f"l{uid}-{i}" for i in range(4)]
    await stock({}, locations={code: i for i, code in enumerate(mine)})
    everything = await _walk(client, "/v1/locations", 500)
    codes = [str(i["code"]) for i in everything]
    assert codes == sorted(set(codes))
    assert [c for c in codes if c.startswith(f"l{uid}")] == mine
    assert await _walk(client, "/v1/locations", 3) == everything
    assert [i["priority"] for i in everything if str(i["code"]).startswith(f"l{uid}")] == [
        0,
        1,
        2,
        3,
    ]
