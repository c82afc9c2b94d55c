"""Under contention: sold-out SKUs refuse without waiting for their rows' locks, and a
lock timeout reaches the client as 503 ``busy`` with nothing changed."""

from __future__ import annotations

import httpx
import pytest

from stockguard.api.app import build_app
from stockguard.config import Settings
from stockguard.domain.errors import OutOfStock
from stockguard.service import orders
from stockguard.service.orders import PlaceOrder
from stockguard.service.uow import Backends
from tests.conftest import Keys, Stocker
from tests.helpers import holding_locks, level

LEVELS_OF_SKU = "SELECT 1 FROM inventory_levels WHERE sku = $1 FOR UPDATE"


async def test_sold_out_sku_refuses_without_waiting_for_its_locks(
    backends: Backends, impatient: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 1}})
    await orders.place_order(backends, PlaceOrder(f"a{uid}", ((sku, 1),)), "t")
    async with holding_locks(backends.pool, LEVELS_OF_SKU, sku):
        # With the rows locked elsewhere, a buyer that queued for them would time out.
        with pytest.raises(OutOfStock) as refused:
            await orders.place_order(impatient, PlaceOrder(f"b{uid}", ((sku, 1),)), "t")
    assert refused.value.extra["shortages"] == [{"sku": sku, "requested": 1, "available": 0}]
    assert await level(backends.pool, sku, loc) == (1, 1)


async def test_lock_timeout_is_503_busy_and_changes_nothing(
    impatient: Backends, backends: Backends, stock: Stocker, uid: str, settings: Settings,
    api_keys: Keys,
) -> None:  # fmt: skip
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    app = build_app(settings, impatient)
    headers = {"Authorization": f"Bearer {api_keys.service}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as client:
        async with holding_locks(backends.pool, LEVELS_OF_SKU, sku):
            r = await client.post(
                "/v1/orders", json={"id": f"o{uid}", "lines": [{"sku": sku, "quantity": 1}]}
            )
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["code"] == "busy"
        assert (await client.get(f"/v1/orders/o{uid}")).status_code == 404
        again = await client.post(
            "/v1/orders", json={"id": f"o{uid}", "lines": [{"sku": sku, "quantity": 1}]}
        )
        assert again.status_code == 201
    assert await level(backends.pool, sku, loc) == (5, 1)
