"""RFC 9457 problem+json (API.md "Errors"): the shape of every refusal, the extra fields of
``out_of_stock`` and ``invalid_transition``, unknown routes and methods, inputs PostgreSQL
cannot store. Also the shared assertions of the other ``test_api_*`` modules."""

from __future__ import annotations

import asyncpg
import httpx

from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import level

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    """The answer is a problem+json document with this status and code, and no trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM, response.headers
    body = response.json()
    assert isinstance(body, dict)
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["type"], str)
    assert body["type"]
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert_no_internals(response)
    return body


def assert_no_internals(response: httpx.Response) -> None:
    text = response.text
    for leak in ("Traceback", 'File "', "asyncpg", "site-packages", "stockguard/"):
        assert leak not in text, text


async def order_count(pool: asyncpg.Pool, sku: str) -> int:
    """Orders (deleted ones included) with a line of this SKU."""
    return int(
        await pool.fetchval("SELECT count(DISTINCT order_id) FROM order_lines WHERE sku = $1", sku)
    )


def order_body(order_id: str, *lines: tuple[str, int]) -> dict[str, object]:
    return {"id": order_id, "lines": [{"sku": s, "quantity": q} for s, q in lines]}


# ---------------------------------------------------------------- business refusals


async def test_out_of_stock_lists_every_short_line_and_reserves_nothing(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, c, loc = f"A{uid}", f"B{uid}", f"C{uid}", f"w{uid}"
    await stock({a: {loc: 5}, b: {loc: 1}, c: {loc: 0}})
    r = await client.post("/v1/orders", json=order_body(f"o{uid}", (a, 3), (b, 2), (c, 1)))
    body = assert_problem(r, 409, "out_of_stock")
    assert body["shortages"] == [
        {"sku": b, "requested": 2, "available": 1},
        {"sku": c, "requested": 1, "available": 0},
    ]
    assert await level(backends.pool, a, loc) == (5, 0)
    assert await level(backends.pool, b, loc) == (1, 0)
    assert await order_count(backends.pool, a) == 0
    assert_problem(await client.get(f"/v1/orders/o{uid}"), 404, "not_found")


async def test_a_sku_that_does_not_exist_is_named_not_out_of_stock(
    client: httpx.AsyncClient, backends: Backends, uid: str
) -> None:
    r = await client.post("/v1/orders", json=order_body(f"o{uid}", (f"GHOST{uid}", 1)))
    body = assert_problem(r, 422, "unknown_sku")
    assert body["skus"] == [f"GHOST{uid}"]
    assert await order_count(backends.pool, f"GHOST{uid}") == 0


async def test_invalid_transition_names_from_and_to(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 4}})
    assert (
        await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 1)))
    ).status_code == 201
    body = assert_problem(
        await client.patch(f"/v1/orders/o{uid}", json={"status": "shipped"}),
        409,
        "invalid_transition",
    )
    assert (body["from"], body["to"]) == ("pending", "shipped")
    assert (await client.get(f"/v1/orders/o{uid}")).json()["status"] == "pending"
    assert await level(backends.pool, sku, loc) == (4, 1)


async def test_not_found_for_unknown_order_sku_and_channel(
    client: httpx.AsyncClient, uid: str
) -> None:
    assert_problem(await client.get(f"/v1/orders/nope{uid}"), 404, "not_found")
    assert_problem(await client.get(f"/v1/skus/NOPE{uid}"), 404, "not_found")
    assert_problem(await client.get(f"/v1/channels/nope{uid}"), 404, "not_found")
    adj = {"location": f"w{uid}", "delta": 1, "reason": "received"}
    assert_problem(await client.post(f"/v1/skus/NOPE{uid}/adjustments", json=adj), 404, "not_found")


# ---------------------------------------------------------------- routing


async def test_unknown_routes_are_404_problems(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/nope"),
        ("GET", "/v1"),
        ("GET", "/v1/warehouses"),
        ("POST", "/v1/orders/x/refund"),
        ("GET", "/v2/orders"),
    ]:
        assert_problem(await client.request(method, path), 404, "not_found")


async def test_wrong_methods_are_405_problems_with_allow(client: httpx.AsyncClient) -> None:
    for method, path, allowed in [
        ("DELETE", "/v1/skus", {"GET"}),
        ("PUT", "/v1/orders", {"GET", "POST"}),
        ("POST", "/healthz", {"GET"}),
        ("GET", "/v1/admin/cache/reconcile", {"POST"}),
        ("POST", "/v1/locations/abc", {"PUT"}),
    ]:
        r = await client.request(method, path)
        assert_problem(r, 405, "method_not_allowed")
        assert {m.strip() for m in r.headers["allow"].split(",")} == allowed


async def test_401_problem_carries_www_authenticate(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/skus", headers={"Authorization": ""})
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"


# ---------------------------------------------------------------- inputs PostgreSQL cannot store


async def test_nul_characters_are_validation_errors_and_change_nothing(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    assert (
        await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 2)))
    ).status_code == 201
    for method, path, body in [
        ("PUT", f"/v1/skus/{sku}", {"name": "a\u0000b"}),
        ("PUT", f"/v1/locations/{loc}", {"name": "a\u0000b"}),
        ("POST", f"/v1/orders/o{uid}/cancel", {"reason": "x\u0000"}),
        ("POST", f"/v1/orders/o{uid}/payments", {"provider": "manual", "payment_id": "p\u0000"}),
        (
            "POST",
            f"/v1/skus/{sku}/adjustments",
            {"location": loc, "delta": 1, "reason": "received", "reference": "r\u0000"},
        ),
        ("POST", "/v1/admin/api-keys", {"role": "service", "name": "k\u0000"}),
        ("GET", "/v1/orders/a%00b", None),
        ("GET", "/v1/channels/a%00b", None),
        ("GET", "/v1/admin/movements?sku=a%00b", None),
        ("GET", "/v1/admin/orders/a%00b/inventory-logs", None),
    ]:
        r = await client.request(method, path, json=body)
        assert_problem(r, 422, "validation_error")
    order = (await client.get(f"/v1/orders/o{uid}")).json()
    assert order["status"] == "pending"
    assert order["payment"] is None
    assert await level(backends.pool, sku, loc) == (5, 2)
    sku_view = (await client.get(f"/v1/skus/{sku}")).json()
    assert sku_view["name"] == sku


async def test_body_that_is_not_utf8_is_a_validation_error(
    client: httpx.AsyncClient, backends: Backends, uid: str
) -> None:
    r = await client.put(
        f"/v1/skus/K{uid}",
        content=b'{"name": "caf\xe9"}',
        headers={"content-type": "application/json"},
    )
    assert_problem(r, 422, "validation_error")
    assert await backends.pool.fetchval("SELECT 1 FROM skus WHERE code = $1", f"K{uid}") is None
