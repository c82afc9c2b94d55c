"""Bulk stock writes (API.md "Bulk stock writes (admin)"): every item is the single
route's adjustment; all_or_nothing changes nothing on any failure, skip_failed applies
exactly the good items; levels are locked once in (sku, location) order."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from stockguard.domain.errors import BatchRejected, StaleQuantity, ValidationFailed
from stockguard.service import bulk, catalogue, orders, uow
from stockguard.service.catalogue import Adjustment
from stockguard.service.orders import PlaceOrder
from stockguard.service.uow import Backends
from tests.conftest import Keys, Stocker
from tests.helpers import assert_cache_parity, assert_invariants, race

pytestmark = pytest.mark.usefixtures("backends")

URL = "/v1/adjustments/batch"
T = TypeVar("T")


async def _levels(b: Backends, skus: list[str]) -> dict[tuple[str, str], tuple[int, ...]]:
    rows = await b.pool.fetch(
        "SELECT sku, location, on_hand, reserved, unavailable FROM inventory_levels "
        "WHERE sku = ANY($1::text[])",
        skus,
    )
    return {
        (r["sku"], r["location"]): (r["on_hand"], r["reserved"], r["unavailable"]) for r in rows
    }


async def _moves(b: Backends, skus: list[str]) -> int:
    return int(
        await b.pool.fetchval(
            "SELECT count(*) FROM stock_movements WHERE sku = ANY($1::text[])", skus
        )
    )


async def _cached(b: Backends, skus: list[str]) -> dict[str, Any]:
    assert b.cache is not None
    return dict(await b.cache.read(skus))


async def test_items_apply_in_index_order_and_each_result_is_its_level_after(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, c, loc, loc2 = f"A{uid}", f"C{uid}", f"w{uid}", f"x{uid}"
    await stock({a: {loc: 10}, c: {loc: 5}}, locations={loc2: 1})
    before = await _moves(backends, [a, c])
    items = [
        {"sku": a, "location": loc, "delta": 5, "reason": "received"},
        {"sku": a, "location": loc, "expected_on_hand": 15, "set_on_hand": 12,
         "reason": "cycle_count", "reference": "count-7"},
        {"sku": a, "location": loc, "unavailable_delta": 2, "reason": "damaged"},
        {"sku": a, "location": loc, "delta": -1, "from": "unavailable", "reason": "shrinkage"},
        {"sku": c, "location": loc2, "delta": 4, "reason": "received"},  # a new level
        {"sku": c, "location": loc, "unavailable_delta": 1, "reason": "quality_control"},
        {"sku": a, "location": loc, "unavailable_delta": -1, "reason": "restock"},
    ]  # fmt: skip
    r = await client.post(URL, json={"items": items, "error_policy": "all_or_nothing"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == list(range(7))
    assert {x["status"] for x in results} == {"applied"}
    seen = [(x["level"]["on_hand"], x["level"]["unavailable"]) for x in results]
    assert seen == [(15, 0), (12, 0), (12, 2), (11, 1), (4, 0), (5, 1), (11, 0)]
    assert results[6]["level"] == {
        "sku": a, "location": loc, "on_hand": 11, "reserved": 0, "unavailable": 0,
        "safety_stock": 0, "available": 11,
    }  # fmt: skip
    assert await _levels(backends, [a, c]) == {
        (a, loc): (11, 0, 0),
        (c, loc): (5, 0, 1),
        (c, loc2): (4, 0, 0),
    }
    assert await _moves(backends, [a, c]) == before + 7
    ref = await backends.pool.fetchval(
        "SELECT reference FROM stock_movements WHERE sku = $1 AND reason = 'cycle_count'", a
    )
    assert ref == "count-7"
    await assert_cache_parity(backends, [a, c])
    await assert_invariants(backends.pool)


async def test_all_or_nothing_rejects_every_failed_item_and_changes_nothing(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, c, loc = f"A{uid}", f"C{uid}", f"w{uid}"
    await stock({a: {loc: 10}, c: {loc: 3}}, locations={f"y{uid}": 1})
    levels, moves = await _levels(backends, [a, c]), await _moves(backends, [a, c])
    cached = await _cached(backends, [a, c])
    items: list[Any] = [
        {"sku": a, "location": loc, "delta": 5, "reason": "received"},
        {"sku": a, "location": loc, "delta": 0, "reason": "received"},
        {"sku": a, "location": loc, "delta": 1, "reason": "fulfil"},
        {"sku": f"Z{uid}", "location": loc, "delta": 1, "reason": "received"},
        {"sku": a, "location": f"nowhere{uid}", "delta": 1, "reason": "received"},
        {"sku": c, "location": loc, "delta": -4, "reason": "shrinkage"},
        {"sku": a, "location": loc, "expected_on_hand": 10, "delta": 1, "reason": "correction"},
        {"sku": c, "location": f"y{uid}", "delta": -1, "reason": "shrinkage"},  # new level
        {"sku": a, "location": loc, "delta": "1", "reason": "received"},
        {"sku": a, "location": loc, "delta": 1, "set_on_hand": 3, "reason": "received"},
    ]
    r = await client.post(URL, json={"items": items, "error_policy": "all_or_nothing"})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] == "batch_rejected"
    assert r.headers["content-type"] == "application/problem+json"
    failed = {x["index"]: x["problem"]["code"] for x in body["items"]}
    assert failed == {
        1: "validation_error",
        2: "validation_error",
        3: "not_found",
        4: "validation_error",
        5: "insufficient_stock",
        6: "stale_quantity",  # item 0 made it 15
        7: "insufficient_stock",
        8: "validation_error",
        9: "validation_error",
    }
    assert body["items"][5]["problem"]["on_hand"] == 15
    assert await _levels(backends, [a, c]) == levels
    assert await _moves(backends, [a, c]) == moves
    assert await _cached(backends, [a, c]) == cached


async def test_skip_failed_applies_exactly_the_good_items(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, c, loc, new = f"A{uid}", f"C{uid}", f"w{uid}", f"n{uid}"
    await stock({a: {loc: 10}, c: {loc: 3}}, locations={new: 1})
    moves = await _moves(backends, [a, c])
    items = [
        {"sku": a, "location": loc, "delta": -8, "reason": "shrinkage"},
        {"sku": a, "location": loc, "delta": -8, "reason": "shrinkage"},  # only 2 left
        {"sku": c, "location": new, "delta": -1, "reason": "shrinkage"},  # new level: refused
        {"sku": c, "location": loc, "set_on_hand": 7, "reason": "cycle_count"},
        {"sku": a, "location": loc, "expected_on_hand": 2, "delta": 3, "reason": "correction"},
        {"sku": c, "location": loc, "reason": "received"},
    ]
    r = await client.post(URL, json={"items": items, "error_policy": "skip_failed"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [
        "applied", "failed", "failed", "applied", "applied", "failed",
    ]  # fmt: skip
    assert results[1]["error"]["code"] == "insufficient_stock"
    assert results[1]["error"]["on_hand"] == 2
    assert "level" not in results[1]
    assert results[5]["error"]["code"] == "validation_error"
    assert results[4]["level"]["on_hand"] == 5
    assert await _levels(backends, [a, c]) == {(a, loc): (5, 0, 0), (c, loc): (7, 0, 0)}
    assert await _moves(backends, [a, c]) == moves + 3
    await assert_cache_parity(backends, [a, c])
    await assert_invariants(backends.pool)


async def test_a_malformed_body_is_422_and_changes_nothing(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, loc = f"A{uid}", f"w{uid}"
    await stock({a: {loc: 10}})
    good = {"sku": a, "location": loc, "delta": 1, "reason": "received"}
    bodies: list[Any] = [
        {"items": good},
        {"items": []},
        {"items": [good] * 2001},
        {"items": [good, 5]},
        {"items": [good], "error_policy": "best_effort"},
        {"items": [good], "extra": 1},
        [good],
    ]
    for body in bodies:
        r = await client.post(URL, json=body)
        assert r.status_code == 422, (body if len(str(body)) < 200 else "big", r.text)
        assert r.json()["code"] == "validation_error"
    assert await _levels(backends, [a]) == {(a, loc): (10, 0, 0)}


async def test_service_refuses_an_empty_or_huge_batch(backends: Backends) -> None:
    adj = Adjustment("X", "y", "received", delta=1)
    for items in ([], [adj] * 2001):
        with pytest.raises(ValidationFailed):
            await bulk.apply_batch(backends, items, bulk.ErrorPolicy.SKIP_FAILED, "t")


async def test_idempotency_key_answers_a_batch_once(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str, api_keys: Keys
) -> None:
    a, loc = f"A{uid}", f"w{uid}"
    await stock({a: {loc: 10}})
    body = {"items": [{"sku": a, "location": loc, "delta": 2, "reason": "received"}]}
    headers = {"Idempotency-Key": f"b{uid}"}
    first = await client.post(URL, json=body, headers=headers)
    again = await client.post(URL, json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
    assert await _levels(backends, [a]) == {(a, loc): (12, 0, 0)}
    stored = await backends.pool.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE key = $1 AND status_code = 200", f"b{uid}"
    )
    assert stored == 1
    other = await client.post(
        URL, json={"items": [{**body["items"][0], "delta": 3}]}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert await _levels(backends, [a]) == {(a, loc): (12, 0, 0)}


async def test_two_thousand_items_apply_quickly(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    skus = [f"B{uid}-{i}" for i in range(200)]
    locs = [f"w{uid}-{j}" for j in range(10)]
    await stock({skus[0]: {locs[0]: 1}}, locations=dict.fromkeys(locs, 1))
    async with backends.pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO skus (code, name) VALUES ($1, $1)", [(s,) for s in skus[1:]]
        )
    items = [
        {"sku": s, "location": loc, "delta": 7, "reason": "received"} for s in skus for loc in locs
    ]
    assert len(items) == 2000
    started = time.perf_counter()
    r = await client.post(URL, json={"items": items, "error_policy": "all_or_nothing"})
    took = time.perf_counter() - started
    assert r.status_code == 200, r.text[:500]
    print(f"2000-item batch: {took:.3f} s")  # measured, never asserted (machine varies)
    total = await backends.pool.fetchval(
        "SELECT sum(on_hand) FROM inventory_levels WHERE sku = ANY($1::text[])", skus
    )
    assert total == 2000 * 7 + 1
    assert await _moves(backends, skus) == 2001
    await assert_cache_parity(backends, skus)


# ------------------------------------------------------------ races


def _adj(sku: str, loc: str, **kw: Any) -> Adjustment:
    return Adjustment(sku, loc, kw.pop("reason", "received"), **kw)


@pytest.mark.parametrize("n", range(20))
async def test_batches_in_opposite_item_order_never_deadlock(
    backends: Backends, stock: Stocker, uid: str, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    skus = [f"D{uid}-{i}" for i in range(6)]
    loc = f"w{uid}"
    await stock({s: {loc: 10} for s in skus})
    forward = [_adj(s, loc, delta=1) for s in skus]
    backward = [_adj(s, loc, delta=2) for s in reversed(skus)]

    async def once(fn: Callable[[], Awaitable[T]]) -> T:
        return await fn()

    # No retry: a deadlock would reach the caller instead of being hidden by a rerun.
    monkeypatch.setattr(uow, "retrying", once)
    results = await race(
        lambda: bulk.apply_batch(backends, forward, bulk.ErrorPolicy.ALL_OR_NOTHING, "t"),
        lambda: bulk.apply_batch(backends, backward, bulk.ErrorPolicy.ALL_OR_NOTHING, "t"),
    )
    for res in results:
        assert isinstance(res, list), res
        assert all(x.applied for x in res)
    assert set((await _levels(backends, skus)).values()) == {(13, 0, 0)}
    await assert_cache_parity(backends, skus)


@pytest.mark.parametrize("n", range(20))
async def test_a_batch_racing_placements_never_oversells(
    backends: Backends, stock: Stocker, uid: str, n: int
) -> None:
    a, c, loc = f"A{uid}", f"C{uid}", f"w{uid}"
    await stock({a: {loc: 5}, c: {loc: 5}})
    batch = [
        _adj(a, loc, reason="shrinkage", delta=-3),
        _adj(c, loc, reason="damaged", unavailable_delta=3),
    ]

    def place(i: int) -> Any:
        return lambda: orders.place_order(
            backends,
            PlaceOrder(f"o{uid}-{i}", ((a, 2), (c, 2)), allow_split=False),
            "t",
        )

    results = await race(
        lambda: bulk.apply_batch(backends, batch, bulk.ErrorPolicy.SKIP_FAILED, "t"),
        place(1),
        place(2),
    )
    batch_result = results[0]
    assert isinstance(batch_result, list), batch_result
    for lv in (await _levels(backends, [a, c])).values():
        on_hand, reserved, unavailable = lv
        assert reserved + unavailable <= on_hand
    placed = sum(1 for r in results[1:] if not isinstance(r, BaseException))
    applied = [x.applied for x in batch_result]
    levels = await _levels(backends, [a, c])
    assert levels[(a, loc)] == (5 - 3 * applied[0], 2 * placed, 0)
    assert levels[(c, loc)] == (5, 2 * placed, 3 * applied[1])
    await assert_cache_parity(backends, [a, c])
    await assert_invariants(backends.pool)


@pytest.mark.parametrize("n", range(20))
async def test_compare_and_set_batch_racing_another_write_one_wins(
    backends: Backends, stock: Stocker, uid: str, n: int
) -> None:
    a, loc = f"A{uid}", f"w{uid}"
    await stock({a: {loc: 10}})
    cas = [_adj(a, loc, reason="cycle_count", expected_on_hand=10, set_on_hand=20)]
    other = _adj(a, loc, reason="cycle_count", expected_on_hand=10, set_on_hand=30)
    results = await race(
        lambda: bulk.apply_batch(backends, cas, bulk.ErrorPolicy.ALL_OR_NOTHING, "t"),
        lambda: catalogue.adjust_stock(backends, other, "t"),
    )
    wins = [not isinstance(r, BaseException) for r in results]
    assert sum(wins) == 1, results
    loser = results[wins.index(False)]
    assert isinstance(loser, (BatchRejected, StaleQuantity)), loser
    expected = 20 if wins[0] else 30
    assert await _levels(backends, [a]) == {(a, loc): (expected, 0, 0)}
    assert await _moves(backends, [a]) == 2
    await assert_cache_parity(backends, [a])


async def test_a_rejected_batch_is_replayed_under_its_key_and_changes_nothing(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, loc = f"A{uid}", f"w{uid}"
    await stock({a: {loc: 10}})
    moves = await _moves(backends, [a])
    body = {
        "items": [
            {"sku": a, "location": loc, "delta": 2, "reason": "received"},
            {"sku": a, "location": loc, "delta": -20, "reason": "shrinkage"},
        ]
    }
    headers = {"Idempotency-Key": f"r{uid}"}
    first = await client.post(URL, json=body, headers=headers)
    again = await client.post(URL, json=body, headers=headers)
    assert first.status_code == again.status_code == 409
    assert first.content == again.content
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert [x["index"] for x in first.json()["items"]] == [1]
    assert await _levels(backends, [a]) == {(a, loc): (10, 0, 0)}
    assert await _moves(backends, [a]) == moves
    await assert_cache_parity(backends, [a])
