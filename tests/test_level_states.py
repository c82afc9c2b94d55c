"""Unavailable and safety stock (API.md "Level states", DESIGN.md §10 invariant 1'):
``available = max(0, on_hand - reserved - unavailable - safety_stock)`` everywhere, and a
reservation never takes unavailable or safety units."""

from __future__ import annotations

from functools import partial

import httpx
import pytest

from stockguard.domain.errors import InsufficientStock, OutOfStock, ValidationFailed
from stockguard.service import catalogue, orders
from stockguard.service.orders import PlaceOrder
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.levels import Delta, LevelGuardViolated
from tests.conftest import Stocker
from tests.helpers import assert_cache_parity, assert_invariants, race

pytestmark = pytest.mark.usefixtures("backends")


async def _level(backends: Backends, sku: str, loc: str) -> tuple[int, int, int, int]:
    row = await backends.pool.fetchrow(
        "SELECT on_hand, reserved, unavailable, safety_stock FROM inventory_levels "
        "WHERE sku = $1 AND location = $2",
        sku,
        loc,
    )
    assert row is not None
    return row["on_hand"], row["reserved"], row["unavailable"], row["safety_stock"]


async def _ledger_unavailable(backends: Backends, sku: str, loc: str) -> tuple[int, int]:
    row = await backends.pool.fetchrow(
        "SELECT coalesce(sum(on_hand_delta), 0) AS o, coalesce(sum(unavailable_delta), 0) AS u "
        "FROM stock_movements WHERE sku = $1 AND location = $2",
        sku,
        loc,
    )
    assert row is not None
    return int(row["o"]), int(row["u"])


async def test_units_move_between_sellable_and_unavailable_and_are_written_off(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"U{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    url = f"/v1/skus/{sku}/adjustments"
    damaged = await client.post(
        url, json={"location": loc, "unavailable_delta": 3, "reason": "damaged"}
    )
    assert damaged.status_code == 201, damaged.text
    fields = ("on_hand", "unavailable", "available", "unavailable_delta", "on_hand_delta")
    assert [damaged.json()[k] for k in fields] == [10, 3, 7, 3, 0]
    qc = await client.post(
        url, json={"location": loc, "unavailable_delta": 1, "reason": "quality_control"}
    )
    assert qc.json()["unavailable"] == 4
    back = await client.post(
        url, json={"location": loc, "unavailable_delta": -1, "reason": "restock"}
    )
    assert (back.json()["unavailable"], back.json()["available"]) == (3, 7)
    written_off = await client.post(
        url, json={"location": loc, "delta": -2, "from": "unavailable", "reason": "damaged"}
    )
    assert written_off.status_code == 201, written_off.text
    assert {k: written_off.json()[k] for k in ("on_hand", "unavailable", "available")} == {
        "on_hand": 8, "unavailable": 1, "available": 7,
    }  # fmt: skip
    assert await _level(backends, sku, loc) == (8, 0, 1, 0)
    assert await _ledger_unavailable(backends, sku, loc) == (8, 1)
    view = (await client.get(f"/v1/skus/{sku}")).json()
    assert (view["on_hand"], view["unavailable"], view["available"]) == (8, 1, 7)
    assert view["levels"][0]["unavailable"] == 1
    avail = (await client.get(f"/v1/availability?sku={sku}")).json()
    assert avail["items"][0] == {"sku": sku, "available": 7, "locations": {loc: 7}}
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


@pytest.mark.parametrize(
    ("body", "code", "detail"),
    [
        ({"unavailable_delta": 9, "reason": "damaged"}, 409, "can be made unavailable"),
        ({"unavailable_delta": -1, "reason": "restock"}, 409, "units are unavailable"),
        ({"delta": -1, "from": "unavailable", "reason": "damaged"}, 409, "units are unavailable"),
        ({"delta": -7, "reason": "shrinkage"}, 409, "below"),
        ({"set_on_hand": 3, "reason": "cycle_count"}, 409, "below"),
        ({"unavailable_delta": 1, "reason": "restock"}, 422, "damaged or quality_control"),
        ({"unavailable_delta": -1, "reason": "damaged"}, 422, "correction or restock"),
        ({"delta": 2, "reason": "quality_control"}, 422, "unavailable_delta"),
        ({"delta": 2, "from": "unavailable", "reason": "damaged"}, 422, "delta < 0"),
        ({"delta": 1, "unavailable_delta": 1, "reason": "damaged"}, 422, "exactly one"),
        ({"unavailable_delta": 0, "reason": "damaged"}, 422, "must not be 0"),
        ({"delta": -1, "from": "elsewhere", "reason": "damaged"}, 422, "from"),
    ],
)
async def test_refusals_change_nothing(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str,
    body: dict[str, object], code: int, detail: str,
) -> None:  # fmt: skip
    sku, loc = f"R{uid}", f"w{uid}"
    await stock({sku: {loc: 8}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 4),)), "t")
    before = await _level(backends, sku, loc)
    moves = await backends.pool.fetchval("SELECT count(*) FROM stock_movements WHERE sku = $1", sku)
    r = await client.post(f"/v1/skus/{sku}/adjustments", json={"location": loc, **body})
    assert r.status_code == code, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == ("insufficient_stock" if code == 409 else "validation_error")
    assert detail in r.text
    assert await _level(backends, sku, loc) == before
    assert await backends.pool.fetchval(
        "SELECT count(*) FROM stock_movements WHERE sku = $1", sku
    ) == moves  # fmt: skip


async def test_safety_stock_is_kept_back_from_every_reading_and_every_reservation(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, a, b = f"S{uid}", f"a{uid}", f"b{uid}"
    await stock({sku: {a: 5, b: 2}}, locations={a: 1, b: 2})
    put = await client.put(f"/v1/skus/{sku}/levels/{a}", json={"safety_stock": 4})
    assert put.status_code == 200, put.text
    assert put.json() == {
        "sku": sku, "location": a, "on_hand": 5, "reserved": 0, "unavailable": 0,
        "safety_stock": 4, "available": 1, "active": True,
    }  # fmt: skip
    view = (await client.get(f"/v1/skus/{sku}")).json()
    assert (view["available"], view["safety_stock"]) == (3, 4)
    avail = (await client.get(f"/v1/availability?sku={sku}")).json()["items"][0]
    assert avail == {"sku": sku, "available": 3, "locations": {a: 1, b: 2}}
    await assert_cache_parity(backends, [sku])
    # 4 units would fit in a's on_hand, but only 1 of them is for sale there.
    with pytest.raises(OutOfStock):
        await orders.place_order(
            backends, PlaceOrder(f"o{uid}", ((sku, 4),), allow_split=True), "t"
        )
    placed = await orders.place_order(backends, PlaceOrder(f"p{uid}", ((sku, 3),)), "t")
    assert sorted((r.location, r.quantity) for r in placed.order.reservations) == [(a, 1), (b, 2)]
    # A safety stock above what is left makes available 0, never negative.
    await client.put(f"/v1/skus/{sku}/levels/{b}", json={"safety_stock": 50})
    view = (await client.get(f"/v1/skus/{sku}")).json()
    assert [lv["available"] for lv in view["levels"]] == [0, 0]
    # A level the SKU did not have yet is created: 201.
    c = f"c{uid}"
    await catalogue.put_location(backends, c, c, 3, True, "t")
    created = await client.put(f"/v1/skus/{sku}/levels/{c}", json={"safety_stock": 1})
    assert created.status_code == 201
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("levels/{loc}", {"safety_stock": -1}, 422),
        ("levels/{loc}", {"safety_stock": 1_000_000_001}, 422),
        ("levels/{loc}", {"safety_stock": "2"}, 422),
        ("levels/{loc}", {}, 422),
        ("levels/nowhere{uid}", {"safety_stock": 1}, 422),
        ("levels/..", {"safety_stock": 1}, 422),
    ],
)
async def test_safety_stock_refusals(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str,
    path: str, body: dict[str, object], code: int,
) -> None:  # fmt: skip
    sku, loc = f"Q{uid}", f"w{uid}"
    await stock({sku: {loc: 3}})
    r = await client.put(f"/v1/skus/{sku}/" + path.format(loc=loc, uid=uid), json=body)
    assert r.status_code == code, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert await _level(backends, sku, loc) == (3, 0, 0, 0)
    missing = await client.put(f"/v1/skus/NOPE{uid}/levels/{loc}", json={"safety_stock": 1})
    assert missing.status_code == 404


async def test_service_level_refusals(backends: Backends, stock: Stocker, uid: str) -> None:
    sku, loc = f"V{uid}", f"w{uid}"
    await stock({sku: {loc: 3}})
    for bad in (
        catalogue.Adjustment(sku, loc, "received", delta=0),
        catalogue.Adjustment(sku, loc, "received"),
        catalogue.Adjustment(sku, loc, "gift", delta=1),
    ):
        with pytest.raises(ValidationFailed):
            await catalogue.adjust_stock(backends, bad, "t")
    with pytest.raises(ValidationFailed):
        await catalogue.set_safety_stock(backends, sku, loc, -1, "t")


async def test_safety_stock_change_racing_reservations_never_sells_safety_units(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """Whatever the order, the units sold never dig into the safety stock that was in
    force when they were reserved, and totals stay conserved."""
    for n in range(20):
        sku, loc = f"Z{uid}{n}", f"w{uid}"
        await stock({sku: {loc: 6}})
        results = await race(
            partial(catalogue.set_safety_stock, backends, sku, loc, 4, "t"),
            *(
                partial(
                    orders.place_order, backends, PlaceOrder(f"z{uid}{n}-{i}", ((sku, 2),)), "t"
                )
                for i in range(3)
            ),
        )
        assert not isinstance(results[0], BaseException), results[0]
        placed = [r for r in results[1:] if isinstance(r, orders.Placed)]
        refused = [r for r in results[1:] if isinstance(r, OutOfStock)]
        assert len(placed) + len(refused) == 3, results
        on_hand, reserved, _, safety = await _level(backends, sku, loc)
        assert (on_hand, safety) == (6, 4)
        assert reserved == 2 * len(placed)
        # Placed before the change: up to 3 orders; after it: at most 1 (2 units free).
        assert 1 <= len(placed) <= 3
        await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_marking_units_unavailable_racing_reservations_never_oversells(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    for n in range(20):
        sku, loc = f"D{uid}{n}", f"w{uid}"
        await stock({sku: {loc: 5}})
        damage = catalogue.Adjustment(sku, loc, "damaged", unavailable_delta=3)
        results = await race(
            partial(catalogue.adjust_stock, backends, damage, "t"),
            *(
                partial(
                    orders.place_order, backends, PlaceOrder(f"d{uid}{n}-{i}", ((sku, 2),)), "t"
                )
                for i in range(2)
            ),
        )
        damaged = not isinstance(results[0], BaseException)
        if not damaged:
            assert isinstance(results[0], InsufficientStock)
        on_hand, reserved, unavailable, _ = await _level(backends, sku, loc)
        assert on_hand == 5
        assert unavailable == (3 if damaged else 0)
        assert reserved + unavailable <= on_hand
    await assert_invariants(backends.pool)


async def test_a_level_guard_that_fails_writes_neither_the_level_nor_its_ledger(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """LevelWriter.apply's guard (the level update and its ledger rows are one statement):
    a delta that would take reserved below zero matches no level, raises, and the
    transaction keeps nothing, not even the other level's change or any ledger row."""
    sku, a, b = f"GV{uid}", f"a{uid}", f"b{uid}"
    await stock({sku: {a: 5, b: 5}})
    before = await backends.pool.fetchval(
        "SELECT count(*) FROM stock_movements WHERE sku = $1", sku
    )

    async def body(uow: UnitOfWork) -> None:
        await uow.levels.lock([sku])
        await uow.levels.apply(
            [
                Delta(sku=sku, location=a, on_hand=2, reserved=0, reason="received"),
                Delta(sku=sku, location=b, on_hand=0, reserved=-1, reason="release"),
            ]
        )

    with pytest.raises(LevelGuardViolated, match="matched 1 of 2 levels"):
        await run(backends, "t", body, operation="test")
    assert await _level(backends, sku, a) == (5, 0, 0, 0)
    assert await _level(backends, sku, b) == (5, 0, 0, 0)
    after = await backends.pool.fetchval("SELECT count(*) FROM stock_movements WHERE sku = $1", sku)
    assert after == before
