"""An order naming a SKU that was never created is refused with 422 ``unknown_sku``
listing every such SKU, not ``out_of_stock``; nothing is reserved or stored. A SKU that
exists without any stock is still ``out_of_stock``."""

from __future__ import annotations

import httpx

from stockguard.domain.errors import OutOfStock, UnknownSku
from stockguard.service import catalogue, orders
from stockguard.service.orders import Placed, PlaceOrder
from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import level
from tests.test_api_problems import assert_problem, order_body


async def _trail(backends: Backends, order_id: str) -> tuple[int, int, int]:
    """Rows about the order: orders, reservations, ledger."""
    row = await backends.pool.fetchrow(
        "SELECT (SELECT count(*) FROM orders WHERE id = $1) AS o, "
        "(SELECT count(*) FROM reservations WHERE order_id = $1) AS r, "
        "(SELECT count(*) FROM stock_movements WHERE order_id = $1) AS m",
        order_id,
    )
    assert row is not None
    return int(row["o"]), int(row["r"]), int(row["m"])


async def test_an_unknown_sku_is_named_and_nothing_is_reserved(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    known, loc, oid = f"K{uid}", f"w{uid}", f"o{uid}"
    await stock({known: {loc: 5}})
    ghost_b, ghost_a = f"ZZ-NOPE{uid}", f"NOPE{uid}"
    r = await client.post(
        "/v1/orders", json=order_body(oid, (known, 2), (ghost_b, 1), (ghost_a, 3))
    )
    body = assert_problem(r, 422, "unknown_sku")
    assert body["skus"] == [ghost_a, ghost_b]  # every unknown one, sorted; not the known one
    assert ghost_a in str(body["detail"])
    assert ghost_b in str(body["detail"])
    assert "PUT /v1/skus/{sku}" in str(body["detail"])
    assert await level(backends.pool, known, loc) == (5, 0)
    assert await _trail(backends, oid) == (0, 0, 0)
    assert (await client.get(f"/v1/orders/{oid}")).status_code == 404


async def test_a_known_sku_without_stock_is_still_out_of_stock(
    client: httpx.AsyncClient, backends: Backends, uid: str
) -> None:
    """Created (PUT /v1/skus) but never stocked: the SKU exists, it has no units."""
    sku, oid = f"E{uid}", f"o{uid}"
    await catalogue.put_sku(backends, sku, sku)
    r = await client.post("/v1/orders", json=order_body(oid, (sku, 1)))
    body = assert_problem(r, 409, "out_of_stock")
    assert body["shortages"] == [{"sku": sku, "requested": 1, "available": 0}]
    assert await _trail(backends, oid) == (0, 0, 0)


async def test_in_one_batch_only_the_order_with_an_unknown_sku_is_refused(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """Group commit decides several orders in one transaction: the unknown SKU refuses
    its own order, the others are placed."""
    sku, loc, ghost = f"S{uid}", f"w{uid}", f"GHOST{uid}"
    await stock({sku: {loc: 3}})
    good, bad, short = f"g{uid}", f"b{uid}", f"s{uid}"
    results = await orders.place_orders(
        backends,
        [
            PlaceOrder(good, ((sku, 2),)),
            PlaceOrder(bad, ((sku, 1), (ghost, 1))),
            PlaceOrder(short, ((sku, 2),)),
        ],
        "t",
    )
    placed, unknown, refused = results
    assert isinstance(placed, Placed)
    assert placed.created
    assert isinstance(unknown, UnknownSku)
    assert (unknown.code, unknown.status, unknown.skus) == ("unknown_sku", 422, [ghost])
    assert isinstance(refused, OutOfStock)  # 3 - 2 = 1 left for the third order's 2
    assert await level(backends.pool, sku, loc) == (3, 2)
    assert await _trail(backends, bad) == (0, 0, 0)
