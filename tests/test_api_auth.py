"""Authentication and roles (API.md "Conventions", DESIGN.md §7): every route refuses a
missing, malformed, unknown or revoked key with 401, admin routes refuse a service key with
403, and a refused request changes nothing. The service key runs the whole order flow."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from stockguard.service.uow import Backends
from tests.conftest import Keys, Stocker
from tests.helpers import level
from tests.test_api_problems import assert_problem, order_body

# (method, path, JSON body); {u} is the test's uid, {sku}/{loc}/{order}/{key_id} its rows.
ADMIN_ROUTES: list[tuple[str, str, dict[str, object] | None]] = [
    ("PUT", "/v1/locations/l{u}", {"name": "new location"}),
    ("PUT", "/v1/locations/{loc}", {"name": "renamed", "active": False}),
    ("PUT", "/v1/channels/c{u}", {"name": "new channel", "locations": []}),
    ("PUT", "/v1/skus/K{u}", {"name": "new sku"}),
    ("PUT", "/v1/skus/{sku}", {"name": "renamed"}),
    ("POST", "/v1/skus/{sku}/adjustments", {"location": "{loc}", "delta": 5, "reason": "received"}),
    ("GET", "/v1/admin/orders/needs-review", None),
    ("GET", "/v1/admin/orders/paid-uncommitted", None),
    ("POST", "/v1/admin/orders/{order}/recover-inventory", None),
    ("GET", "/v1/admin/orders/{order}/inventory-logs", None),
    ("GET", "/v1/admin/movements?sku={sku}", None),
    ("POST", "/v1/admin/cache/reconcile", {"repair": True}),
    ("GET", "/v1/admin/verify", None),
    ("POST", "/v1/admin/api-keys", {"role": "admin", "name": "k{u}"}),
    ("GET", "/v1/admin/api-keys", None),
    ("DELETE", "/v1/admin/api-keys/{key_id}", None),
]
SERVICE_ROUTES: list[tuple[str, str, dict[str, object] | None]] = [
    ("GET", "/v1/locations", None),
    ("GET", "/v1/channels/c{u}", None),
    ("GET", "/v1/skus", None),
    ("GET", "/v1/skus/{sku}", None),
    ("GET", "/v1/availability?sku={sku}", None),
    ("POST", "/v1/orders", {"id": "n{u}", "lines": [{"sku": "{sku}", "quantity": 1}]}),
    ("GET", "/v1/orders/{order}", None),
    ("GET", "/v1/orders?status=pending", None),
    ("POST", "/v1/orders/{order}/payments", {"provider": "manual", "payment_id": "p{u}"}),
    ("POST", "/v1/orders/{order}/cancel", {"reason": "no"}),
    ("PATCH", "/v1/orders/{order}", {"status": "cancelled"}),
    ("DELETE", "/v1/orders/{order}", None),
]


@dataclass
class World:
    """One test's rows; ``snapshot`` is everything a refused request must leave alone."""

    uid: str
    sku: str
    loc: str
    order: str
    key_id: str
    key: str

    def fill(self, text: str) -> str:
        return text.format(u=self.uid, sku=self.sku, loc=self.loc, order=self.order,
                           key_id=self.key_id)  # fmt: skip

    def body(self, body: dict[str, object] | None) -> object:
        if body is None:
            return None
        out: dict[str, object] = {}
        for k, v in body.items():
            if isinstance(v, str):
                out[k] = self.fill(v)
            elif isinstance(v, list):
                out[k] = [self.body(x) if isinstance(x, dict) else x for x in v]
            else:
                out[k] = v
        return out

    async def snapshot(self, pool: asyncpg.Pool) -> tuple[object, ...]:
        row = await pool.fetchrow(
            """
            SELECT
              (SELECT count(*) FROM locations WHERE code IN ($1, $2)) AS locations,
              (SELECT name || active::text FROM locations WHERE code = $2) AS loc,
              (SELECT count(*) FROM channels WHERE code = $3) AS channels,
              (SELECT string_agg(name, ',' ORDER BY code) FROM skus WHERE code IN ($4, $5))
                AS skus,
              (SELECT count(*) FROM orders WHERE id IN ($6, $7)) AS orders,
              (SELECT status || coalesce(payment_id, '') || coalesce(deleted_at::text, '')
               FROM orders WHERE id = $6) AS order_state,
              (SELECT count(*) FROM api_keys WHERE name = $8) AS new_keys,
              (SELECT revoked_at IS NULL FROM api_keys WHERE id = $9::uuid) AS key_live,
              (SELECT count(*) FROM stock_movements WHERE sku = $5) AS movements
            """,
            f"l{self.uid}",
            self.loc,
            f"c{self.uid}",
            f"K{self.uid}",
            self.sku,
            self.order,
            f"n{self.uid}",
            f"k{self.uid}",
            self.key_id,
        )
        assert row is not None
        return (*row.values(), await level(pool, self.sku, self.loc))


@pytest.fixture
async def world(client: httpx.AsyncClient, stock: Stocker, uid: str) -> World:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}}, channels={f"c{uid}": [loc]})
    placed = await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 2)))
    assert placed.status_code == 201, placed.text
    made = await client.post("/v1/admin/api-keys", json={"role": "service", "name": f"v{uid}"})
    assert made.status_code == 201, made.text
    return World(uid, sku, loc, f"o{uid}", made.json()["id"], made.json()["key"])


def _route_id(route: tuple[str, str, dict[str, object] | None]) -> str:
    return f"{route[0]} {route[1]}"


async def _send(
    client: httpx.AsyncClient, method: str, url: str, body: object, authorization: str | None
) -> httpx.Response:
    request = client.build_request(method, url, json=body)
    if authorization is None:
        del request.headers["Authorization"]
    else:
        request.headers["Authorization"] = authorization
    return await client.send(request)


@pytest.mark.parametrize("route", ADMIN_ROUTES + SERVICE_ROUTES, ids=_route_id)
async def test_every_route_refuses_missing_malformed_unknown_and_revoked_keys(
    client: httpx.AsyncClient,
    backends: Backends,
    api_keys: Keys,
    world: World,
    route: tuple[str, str, dict[str, object] | None],
) -> None:
    method, path, body = route
    revoked = await client.post("/v1/admin/api-keys", json={"role": "admin", "name": "revoked"})
    revoked_key = revoked.json()["key"]
    gone = await client.delete(f"/v1/admin/api-keys/{revoked.json()['id']}")
    assert gone.status_code == 204
    before = await world.snapshot(backends.pool)
    for authorization in [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {api_keys.admin}",
        f"Token {api_keys.admin}",
        api_keys.admin,
        f"Bearer {api_keys.admin}x",
        "Bearer sg_adm_not-a-key",
        f"Bearer {revoked_key}",
    ]:
        r = await _send(client, method, world.fill(path), world.body(body), authorization)
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    assert await world.snapshot(backends.pool) == before


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=_route_id)
async def test_admin_routes_refuse_service_keys(
    client: httpx.AsyncClient,
    backends: Backends,
    api_keys: Keys,
    world: World,
    route: tuple[str, str, dict[str, object] | None],
) -> None:
    method, path, body = route
    before = await world.snapshot(backends.pool)
    for key in (api_keys.service, world.key):
        r = await _send(client, method, world.fill(path), world.body(body), f"Bearer {key}")
        assert_problem(r, 403, "forbidden")
    assert await world.snapshot(backends.pool) == before


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=_route_id)
async def test_admin_routes_accept_admin_keys(
    client: httpx.AsyncClient, world: World, route: tuple[str, str, dict[str, object] | None]
) -> None:
    method, path, body = route
    if path.endswith("/recover-inventory"):  # an unpaid order has nothing to recover (409)
        paid = await client.post(
            f"/v1/orders/{world.order}/payments",
            json={"provider": "manual", "payment_id": f"pay-{world.uid}"},
        )
        assert paid.status_code == 200, paid.text
    r = await client.request(method, world.fill(path), json=world.body(body))
    assert r.status_code in (200, 201, 204), r.text


async def test_scheme_is_case_insensitive_and_key_is_trimmed(
    client: httpx.AsyncClient, api_keys: Keys
) -> None:
    for authorization in (f"bearer {api_keys.service}", f"BEARER   {api_keys.service}  "):
        r = await client.get("/v1/locations", headers={"Authorization": authorization})
        assert r.status_code == 200, r.text


async def test_service_key_runs_the_whole_order_flow(
    client: httpx.AsyncClient, backends: Backends, api_keys: Keys, stock: Stocker, uid: str
) -> None:
    sku, loc, ch = f"S{uid}", f"w{uid}", f"c{uid}"
    await stock({sku: {loc: 10}}, channels={ch: [loc]})
    svc = {"Authorization": f"Bearer {api_keys.service}"}

    assert (await client.get(f"/v1/channels/{ch}", headers=svc)).json()["locations"] == [loc]
    assert (await client.get("/v1/locations?limit=1", headers=svc)).status_code == 200
    assert (await client.get("/v1/skus?limit=1", headers=svc)).status_code == 200
    view = (await client.get(f"/v1/skus/{sku}", headers=svc)).json()
    assert (view["on_hand"], view["reserved"], view["available"]) == (10, 0, 10)

    placed = await client.post(
        "/v1/orders",
        json={**order_body(f"o{uid}", (sku, 3)), "channel": ch},
        headers=svc,
    )
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] == "pending"
    got = await client.get(f"/v1/orders/o{uid}", headers=svc)
    assert got.json() == placed.json()
    avail = await client.get(f"/v1/availability?sku={sku}&channel={ch}", headers=svc)
    assert avail.json() == {"items": [{"sku": sku, "available": 7, "locations": {loc: 7}}]}

    paid = await client.post(
        f"/v1/orders/o{uid}/payments",
        json={"provider": "manual", "payment_id": f"p{uid}"},
        headers=svc,
    )
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "paid"
    for status in ("processing", "shipped", "delivered"):
        r = await client.patch(f"/v1/orders/o{uid}", json={"status": status}, headers=svc)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == status
    assert await level(backends.pool, sku, loc) == (7, 0)

    for oid in (f"x{uid}", f"y{uid}"):
        r = await client.post("/v1/orders", json=order_body(oid, (sku, 1)), headers=svc)
        assert r.status_code == 201, r.text
    cancelled = await client.post(f"/v1/orders/x{uid}/cancel", headers=svc)
    assert cancelled.json()["status"] == "cancelled"
    assert (await client.delete(f"/v1/orders/y{uid}", headers=svc)).status_code == 204
    assert await level(backends.pool, sku, loc) == (7, 0)

    actors = await backends.pool.fetch(
        "SELECT DISTINCT actor FROM stock_movements WHERE sku = $1 AND order_id IS NOT NULL", sku
    )
    assert [r["actor"] for r in actors] == ["key:test-service"]


async def test_keys_are_checked_before_the_input(
    client: httpx.AsyncClient, api_keys: Keys, uid: str
) -> None:
    svc = f"Bearer {api_keys.service}"
    cases: list[tuple[str, str, dict[str, object] | None]] = [
        ("GET", "/v1/skus/a%20b", None),
        ("PUT", "/v1/skus/a%20b", {"name": "x"}),
        ("POST", "/v1/skus/a%20b/adjustments", {"location": "w", "delta": 1, "reason": "x"}),
        ("PUT", f"/v1/locations/BAD{uid}", {"name": "x"}),
        ("PUT", f"/v1/channels/BAD{uid}", {"name": "x"}),
        ("GET", "/v1/availability?sku=a%20b", None),
        ("POST", "/v1/orders", {"lines": []}),
    ]
    for method, path, body in cases:
        assert_problem(await _send(client, method, path, body, None), 401, "unauthorized")
        if method != "GET" and not path.startswith("/v1/orders"):
            assert_problem(await _send(client, method, path, body, svc), 403, "forbidden")
