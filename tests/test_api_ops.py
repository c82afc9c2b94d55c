"""Operations routes (no API key) and the served OpenAPI document."""

from __future__ import annotations

import httpx

from tests.conftest import Stocker
from tests.test_api_problems import order_body


def _anonymous(client: httpx.AsyncClient, path: str) -> httpx.Request:
    request = client.build_request("GET", path)
    del request.headers["Authorization"]
    return request


async def test_healthz_needs_no_key(client: httpx.AsyncClient) -> None:
    r = await client.send(_anonymous(client, "/healthz"))
    assert r.status_code == 200
    assert r.json() == {"ok": True}


async def test_readyz_checks_postgres_and_redis(client: httpx.AsyncClient) -> None:
    r = await client.send(_anonymous(client, "/readyz"))
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "mode": "strict", "checks": {"postgres": True, "redis": True}}


async def test_metrics_are_prometheus_text(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 1}})
    assert (await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 1)))).is_success
    assert (
        await client.post("/v1/orders", json=order_body(f"p{uid}", (sku, 1)))
    ).status_code == 409
    r = await client.send(_anonymous(client, "/metrics"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE stockguard_operation_seconds histogram" in text
    # POST /v1/orders goes through the group-commit batcher (on by default).
    assert 'stockguard_operation_seconds_count{operation="place_order_batch"}' in text
    refused = [
        line for line in text.splitlines() if line.startswith("stockguard_out_of_stock_total ")
    ]
    assert len(refused) == 1
    assert float(refused[0].split()[1]) >= 1


async def test_openapi_is_served_and_describes_the_contract(client: httpx.AsyncClient) -> None:
    r = await client.send(_anonymous(client, "/openapi.json"))
    assert r.status_code == 200
    doc = r.json()
    assert doc["info"]["title"] == "stockguard"
    paths = doc["paths"]
    expected = {
        "/v1/locations/{code}": {"put"},
        "/v1/locations": {"get"},
        "/v1/channels/{code}": {"put", "get"},
        "/v1/skus/{sku}": {"put", "get"},
        "/v1/skus": {"get"},
        "/v1/skus/{sku}/adjustments": {"post"},
        "/v1/availability": {"get"},
        "/v1/orders": {"post", "get"},
        "/v1/orders/{order_id}": {"get", "patch", "delete"},
        "/v1/orders/{order_id}/payments": {"post"},
        "/v1/orders/{order_id}/cancel": {"post"},
        "/v1/admin/orders/needs-review": {"get"},
        "/v1/admin/orders/paid-uncommitted": {"get"},
        "/v1/admin/orders/{order_id}/recover-inventory": {"post"},
        "/v1/admin/orders/{order_id}/inventory-logs": {"get"},
        "/v1/admin/movements": {"get"},
        "/v1/admin/cache/reconcile": {"post"},
        "/v1/admin/verify": {"get"},
        "/v1/admin/api-keys": {"post", "get"},
        "/v1/admin/api-keys/{key_id}": {"delete"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    order_in = paths["/v1/orders"]["post"]["requestBody"]["content"]["application/json"]
    assert "schema" in order_in
