"""Admin routes over HTTP: API keys (shown once, usable, revocable, never listed), the
invariant check, the cache reconciler, the ledger (newest first) and an order's inventory
logs (oldest first)."""

from __future__ import annotations

import uuid

import httpx

from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import assert_cache_parity
from tests.test_api_problems import assert_problem, order_body


async def _walk(client: httpx.AsyncClient, url: str, limit: int) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    sep = "&" if "?" in url else "?"
    r = await client.get(f"{url}{sep}limit={limit}")
    for _ in range(10_000):
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "next"}
        items.extend(page["items"])
        if page["next"] is None:
            return items
        assert len(page["items"]) == limit
        r = await client.get(f"{url}{sep}limit={limit}&after={page['next']}")
    raise AssertionError("pagination never ended")


# ---------------------------------------------------------------- API keys


async def test_created_key_is_shown_once_works_and_can_be_revoked(
    client: httpx.AsyncClient, uid: str
) -> None:
    made = await client.post("/v1/admin/api-keys", json={"role": "service", "name": f"shop{uid}"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert {"id", "key", "role", "name", "created_at"} <= body.keys()
    assert (body["role"], body["name"]) == ("service", f"shop{uid}")
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["created_at"].endswith("Z")
    key = body["key"]
    assert isinstance(key, str)
    assert len(key) >= 32
    auth = {"Authorization": f"Bearer {key}"}

    assert (await client.get("/v1/skus?limit=1", headers=auth)).status_code == 200
    assert_problem(await client.get("/v1/admin/verify", headers=auth), 403, "forbidden")

    listing = await client.get("/v1/admin/api-keys?limit=500")
    assert key not in listing.text
    everything = await _walk(client, "/v1/admin/api-keys", 500)
    assert key not in str(everything)
    assert all("key" not in k for k in everything)
    ids = [str(k["id"]) for k in everything]
    assert ids == sorted(set(ids))
    mine = next(k for k in everything if k["id"] == body["id"])
    assert (mine["role"], mine["name"], mine["revoked_at"]) == ("service", f"shop{uid}", None)
    assert mine["key_prefix"] == key[:8]
    assert await _walk(client, "/v1/admin/api-keys", 3) == everything

    revoked = await client.delete(f"/v1/admin/api-keys/{body['id']}")
    assert (revoked.status_code, revoked.content) == (204, b"")
    assert_problem(await client.get("/v1/skus?limit=1", headers=auth), 401, "unauthorized")
    assert_problem(await client.delete(f"/v1/admin/api-keys/{body['id']}"), 404, "not_found")
    after = next(k for k in await _walk(client, "/v1/admin/api-keys", 500) if k["id"] == body["id"])
    assert isinstance(after["revoked_at"], str)
    assert after["revoked_at"].endswith("Z")


async def test_created_admin_key_can_administer(client: httpx.AsyncClient, uid: str) -> None:
    made = await client.post("/v1/admin/api-keys", json={"role": "admin", "name": f"ops{uid}"})
    assert made.status_code == 201
    auth = {"Authorization": f"Bearer {made.json()['key']}"}
    r = await client.put(f"/v1/locations/w{uid}", json={"name": "by new key"}, headers=auth)
    assert r.status_code == 201, r.text
    assert (await client.get("/v1/admin/verify", headers=auth)).status_code == 200
    other = await client.post("/v1/admin/api-keys", json={"role": "admin", "name": f"ops{uid}"})
    assert other.json()["key"] != made.json()["key"]


async def test_revoking_unknown_keys_is_404(client: httpx.AsyncClient) -> None:
    for key_id in (str(uuid.uuid4()), "not-a-uuid", "1"):
        assert_problem(await client.delete(f"/v1/admin/api-keys/{key_id}"), 404, "not_found")


# ---------------------------------------------------------------- verify and reconcile


async def test_verify_reports_no_violations(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 3}})
    assert (await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 2)))).is_success
    r = await client.get("/v1/admin/verify")
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "violations": []}


async def test_reconcile_reports_drift_and_repairs_only_when_asked(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, gone, loc = f"S{uid}", f"G{uid}", f"w{uid}"
    await stock({sku: {loc: 4}, gone: {loc: 2}})
    assert backends.cache is not None
    total_key, _, _ = backends.cache.keys(sku)
    await backends.cache.client.set(total_key, 99)
    await backends.cache.delete([gone])
    skus = int(await backends.pool.fetchval("SELECT count(*) FROM skus"))

    for body in ({"repair": False}, None):
        r = await client.post("/v1/admin/cache/reconcile", json=body)
        assert r.status_code == 200, r.text
        report = r.json()
        assert set(report) == {"checked", "drifted", "repaired"}
        assert report["checked"] >= skus
        assert report["repaired"] == 0
        mine = sorted(
            (d for d in report["drifted"] if d["sku"] in (sku, gone)), key=lambda d: d["sku"]
        )
        assert mine == [
            {"sku": gone, "redis": None, "postgres": 2},
            {"sku": sku, "redis": 99, "postgres": 4},
        ]
    cached = await backends.cache.entries([sku, gone])
    assert cached[gone].total is None
    assert cached[sku].total == 99  # still there: reporting repaired nothing
    assert cached[sku].answer is None  # and, not whole, never an answer to a read

    repaired = (await client.post("/v1/admin/cache/reconcile", json={"repair": True})).json()
    assert repaired["repaired"] >= 2
    assert {sku, gone} <= {d["sku"] for d in repaired["drifted"]}
    await assert_cache_parity(backends, [sku, gone])
    clean = (await client.post("/v1/admin/cache/reconcile", json={"repair": False})).json()
    assert [d for d in clean["drifted"] if d["sku"] in (sku, gone)] == []


# ---------------------------------------------------------------- ledger and logs


async def test_movements_are_newest_first_filtered_and_paged(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    sku, other, loc = f"S{uid}", f"T{uid}", f"w{uid}"
    await stock({sku: {loc: 10}, other: {loc: 1}})
    placed = await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 3), (other, 1)))
    assert placed.status_code == 201
    reservation = next(r["id"] for r in placed.json()["reservations"] if r["sku"] == sku)
    assert (await client.post(f"/v1/orders/o{uid}/cancel")).is_success
    adj = {"location": loc, "delta": -2, "reason": "damaged", "reference": f"R{uid}"}
    assert (await client.post(f"/v1/skus/{sku}/adjustments", json=adj)).status_code == 201

    rows = await _walk(client, f"/v1/admin/movements?sku={sku}", 500)
    assert [(r["on_hand_delta"], r["reserved_delta"], r["reason"]) for r in rows] == [
        (-2, 0, "damaged"),
        (0, -3, "release"),
        (0, 3, "reserve"),
        (10, 0, "received"),
    ]
    ids = [int(str(r["id"])) for r in rows]
    assert ids == sorted(ids, reverse=True)
    assert {
        "id",
        "sku",
        "location",
        "on_hand_delta",
        "reserved_delta",
        "reason",
        "order_id",
        "reservation_id",
        "actor",
        "created_at",
    } <= rows[0].keys()
    assert (rows[0]["sku"], rows[0]["location"], rows[0]["order_id"]) == (sku, loc, None)
    assert (rows[0]["actor"], rows[0]["reference"]) == ("key:test-admin", f"R{uid}")
    assert (rows[2]["order_id"], rows[2]["reservation_id"]) == (f"o{uid}", reservation)
    assert str(rows[0]["created_at"]).endswith("Z")
    assert await _walk(client, f"/v1/admin/movements?sku={sku}", 1) == rows

    by_order = await _walk(client, f"/v1/admin/movements?order_id=o{uid}", 500)
    assert sorted((r["sku"], r["reason"]) for r in by_order) == [
        (sku, "release"),
        (sku, "reserve"),
        (other, "release"),
        (other, "reserve"),
    ]
    both = await _walk(client, f"/v1/admin/movements?order_id=o{uid}&sku={other}", 500)
    assert [(r["sku"], r["reserved_delta"]) for r in both] == [(other, -1), (other, 1)]
    assert (await client.get(f"/v1/admin/movements?sku=NONE{uid}")).json() == {
        "items": [],
        "next": None,
    }


async def test_inventory_logs_are_oldest_first_and_paged(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    placed = await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 2)))
    reservation = placed.json()["reservations"][0]["id"]
    paid = await client.post(
        f"/v1/orders/o{uid}/payments", json={"provider": "stripe", "payment_id": f"pi_{uid}"}
    )
    assert paid.json()["status"] == "paid"
    assert (await client.post(f"/v1/orders/o{uid}/cancel")).is_success

    logs = await _walk(client, f"/v1/admin/orders/o{uid}/inventory-logs", 500)
    assert [log["action"] for log in logs] == [
        "RESERVED",
        "COMMITTED",
        "RELEASED",
        "STOCK_RESTORED",
    ]
    assert {
        "id",
        "order_id",
        "action",
        "actor",
        "reservation_ids",
        "error_reason",
        "context",
        "created_at",
    } <= logs[0].keys()
    for log in logs:
        assert (log["order_id"], log["actor"], log["error_reason"]) == (
            f"o{uid}",
            "key:test-admin",
            None,
        )
        assert log["reservation_ids"] == [reservation]
        assert str(log["created_at"]).endswith("Z")
    ids = [int(str(log["id"])) for log in logs]
    assert ids == sorted(ids)
    assert await _walk(client, f"/v1/admin/orders/o{uid}/inventory-logs", 1) == logs
    assert await _walk(client, f"/v1/admin/orders/o{uid}/inventory-logs", 3) == logs
    assert (await client.get(f"/v1/admin/orders/none{uid}/inventory-logs")).json() == {
        "items": [],
        "next": None,
    }


async def test_needs_review_lists_orders_awaiting_review(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    for oid in (f"o{uid}", f"p{uid}"):
        body = {**order_body(oid, (sku, 1)), "total_amount": 100, "currency": "EUR"}
        assert (await client.post("/v1/orders", json=body)).status_code == 201
    mismatch = {"provider": "manual", "payment_id": f"m{uid}", "amount": 1}
    r = await client.post(f"/v1/orders/o{uid}/payments", json=mismatch)
    assert r.json()["status"] == "needs_review"
    listed = await _walk(client, "/v1/admin/orders/needs-review", 500)
    assert {o["status"] for o in listed} == {"needs_review"}
    ids = [o["id"] for o in listed]
    assert f"o{uid}" in ids
    assert f"p{uid}" not in ids
    assert await _walk(client, "/v1/admin/orders/needs-review", 1) == listed
