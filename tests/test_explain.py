"""Explain a number (GET /v1/admin/explain, ``stockguard explain``): a SKU's levels rebuilt
from the ledger as of a time equal what the levels were then, and the ledger adds up to
the levels now (or the mismatch is named)."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest

from stockguard.service import catalogue, orders
from stockguard.service.catalogue import Adjustment
from stockguard.service.explain import Counts, explain
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.uow import Backends
from tests.conftest import Stocker

pytestmark = pytest.mark.usefixtures("backends")

URL = "/v1/admin/explain"


async def _now(b: Backends) -> datetime:
    moment: datetime = await b.pool.fetchval("SELECT clock_timestamp()")
    return moment


async def _levels(b: Backends, sku: str) -> dict[str, Counts]:
    rows = await b.pool.fetch(
        "SELECT location, on_hand, reserved, unavailable FROM inventory_levels WHERE sku = $1",
        sku,
    )
    return {r["location"]: Counts(r["on_hand"], r["reserved"], r["unavailable"]) for r in rows}


async def test_levels_as_of_each_moment_equal_what_they_were(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, w, x = f"E{uid}", f"w{uid}", f"x{uid}"
    await stock({sku: {w: 0}}, locations={x: 1})
    start = await _now(backends)
    history: list[tuple[datetime, dict[str, Counts]]] = []

    async def snap() -> None:
        history.append((await _now(backends), await _levels(backends, sku)))

    await catalogue.adjust_stock(backends, Adjustment(sku, w, "received", delta=10), "t")
    await snap()
    await catalogue.adjust_stock(backends, Adjustment(sku, x, "received", delta=4), "t")
    await snap()
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 3),)), "t")
    await snap()
    await catalogue.adjust_stock(backends, Adjustment(sku, w, "damaged", unavailable_delta=2), "t")
    await snap()
    await orders.pay_order(backends, f"o{uid}", PaymentProof("manual", f"p{uid}"), "t")
    await snap()
    await orders.place_order(backends, PlaceOrder(f"q{uid}", ((sku, 1),)), "t")
    await orders.cancel_order(backends, f"q{uid}", "t")
    await catalogue.adjust_stock(
        backends, Adjustment(sku, w, "shrinkage", delta=-1, from_unavailable=True), "t"
    )
    await snap()

    for moment, levels in history:
        found = await explain(backends.pool, sku, at=moment)
        assert found.levels == {w: Counts(), x: Counts(), **levels}, moment  # x: zeros first
        assert found.at == moment
        assert found.totals == sum(levels.values(), Counts())
        assert found.consistent
    before = await explain(backends.pool, sku, at=start - timedelta(seconds=1))
    assert before.levels == {w: Counts(), x: Counts()}
    later = await explain(backends.pool, sku, at=await _now(backends) + timedelta(days=1))
    assert later.levels == history[-1][1]
    assert later.at == later.now
    one = await explain(backends.pool, sku, location=x)
    assert one.levels == {x: history[-1][1][x]}
    assert {m["location"] for m in one.movements} == {x}


async def test_the_route_shows_movements_newest_first_with_a_cursor(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, w = f"E{uid}", f"w{uid}"
    await stock({sku: {w: 1}})
    for n in range(4):
        await catalogue.adjust_stock(
            backends, Adjustment(sku, w, "received", delta=n + 1, reference=f"r{n}"), "t"
        )
    r = await client.get(URL, params={"sku": sku, "limit": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["levels"] == [{"location": w, "on_hand": 11, "reserved": 0, "unavailable": 0}]
    assert body["totals"] == {"on_hand": 11, "reserved": 0, "unavailable": 0}
    assert body["consistent"] is True
    assert body["mismatches"] == []
    assert [m["reference"] for m in body["movements"]] == ["r3", "r2", "r1"]
    assert [m["on_hand_delta"] for m in body["movements"]] == [4, 3, 2]
    rest = await client.get(URL, params={"sku": sku, "limit": 3, "after": body["next"]})
    assert [m["on_hand_delta"] for m in rest.json()["movements"]] == [1, 1]
    assert rest.json()["next"] is None
    at = body["movements"][1]["created_at"]  # as of the movement "r2"
    then = await client.get(URL, params={"sku": sku, "at": at})
    assert then.json()["totals"]["on_hand"] == 7  # 1 + r0 + r1 + r2
    assert then.json()["at"] == at


async def test_a_level_that_disagrees_with_the_ledger_is_named(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, w = f"E{uid}", f"w{uid}"
    await stock({sku: {w: 5}})
    await backends.pool.execute(
        "UPDATE inventory_levels SET on_hand = on_hand + 2 WHERE sku = $1", sku
    )
    try:
        r = await client.get(URL, params={"sku": sku, "location": w})
        body = r.json()
        assert body["consistent"] is False
        assert body["mismatches"] == [
            {
                "location": w,
                "level": {"on_hand": 7, "reserved": 0, "unavailable": 0},
                "ledger": {"on_hand": 5, "reserved": 0, "unavailable": 0},
            }
        ]
    finally:
        await backends.pool.execute(
            "UPDATE inventory_levels SET on_hand = on_hand - 2 WHERE sku = $1", sku
        )


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"sku": "NOPE-{uid}"}, 404, "not_found"),
        ({"sku": "E{uid}", "location": "nowhere-{uid}"}, 422, "validation_error"),
        ({"sku": "E{uid}", "at": "yesterday"}, 422, "validation_error"),
        ({"sku": "E{uid}", "at": "2026-11-26T10:00:00"}, 422, "validation_error"),
        ({"sku": "E{uid}", "at": "2026-02-30T10:00:00Z"}, 422, "validation_error"),
        ({"sku": "E{uid}", "limit": "0"}, 422, "validation_error"),
        ({"sku": "E{uid}", "after": "!!"}, 422, "validation_error"),
        ({"sku": "bad sku"}, 422, "validation_error"),
        ({}, 422, "validation_error"),
    ],
)
async def test_bad_input_is_a_precise_problem(
    client: httpx.AsyncClient,
    stock: Stocker,
    uid: str,
    params: dict[str, str],
    status: int,
    code: str,
) -> None:
    await stock({f"E{uid}": {f"w{uid}": 1}})
    r = await client.get(URL, params={k: v.format(uid=uid) for k, v in params.items()})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code


async def test_fractions_and_offsets_are_understood(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    sku = f"E{uid}"
    await stock({sku: {f"w{uid}": 3}})
    for at in ("2000-01-01T00:00:00.123456789+02:00", "2999-01-01 00:00:00z"):
        r = await client.get(URL, params={"sku": sku, "at": at})
        assert r.status_code == 200, r.text
    assert r.json()["totals"]["on_hand"] == 3


async def test_service_refuses_a_bad_limit(backends: Backends) -> None:
    from stockguard.domain.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        await explain(backends.pool, "X", limit=0)
