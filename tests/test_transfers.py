"""Transfers between locations (API.md "Transfers between locations (admin)", DESIGN.md
§10 invariant 13): units leave ``from`` at once, arrive at ``to`` receipt by receipt or go
back on cancel; every refusal changes nothing; per SKU, on hand + in transit is conserved."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from stockguard.service import orders
from stockguard.service.orders import PlaceOrder
from stockguard.service.uow import Backends
from stockguard.service.verify import CHECKS
from tests.conftest import Keys, Stocker
from tests.helpers import assert_cache_parity, assert_invariants

pytestmark = pytest.mark.usefixtures("backends")


async def state(backends: Backends, skus: list[str]) -> dict[str, Any]:
    """Everything a transfer may change for these SKUs: levels, ledger, transfers."""
    pool = backends.pool
    levels = await pool.fetch(
        "SELECT sku, location, on_hand, reserved, unavailable, safety_stock "
        "FROM inventory_levels WHERE sku = ANY($1::text[]) ORDER BY sku, location",
        skus,
    )
    ledger = await pool.fetchval(
        "SELECT count(*) FROM stock_movements WHERE sku = ANY($1::text[])", skus
    )
    lines = await pool.fetch(
        "SELECT transfer_id, sku, quantity, received, cancelled FROM transfer_lines "
        "WHERE sku = ANY($1::text[]) ORDER BY transfer_id, sku",
        skus,
    )
    transfers = await pool.fetch(
        "SELECT id, status, updated_at FROM transfers WHERE id IN "
        "(SELECT transfer_id FROM transfer_lines WHERE sku = ANY($1::text[])) ORDER BY id",
        skus,
    )
    receipts = await pool.fetchval(
        "SELECT count(*) FROM transfer_receipts WHERE transfer_id IN "
        "(SELECT transfer_id FROM transfer_lines WHERE sku = ANY($1::text[]))",
        skus,
    )
    return {
        "levels": [tuple(r.values()) for r in levels],
        "ledger": ledger,
        "lines": [tuple(r.values()) for r in lines],
        "transfers": [tuple(r.values()) for r in transfers],
        "receipts": receipts,
    }


async def on_hand(backends: Backends, sku: str, loc: str) -> int | None:
    value = await backends.pool.fetchval(
        "SELECT on_hand FROM inventory_levels WHERE sku = $1 AND location = $2", sku, loc
    )
    return None if value is None else int(value)


async def conserved(backends: Backends, sku: str) -> int:
    """Σ on_hand over every location + Σ units in transit."""
    value = await backends.pool.fetchval(
        "SELECT coalesce((SELECT sum(on_hand) FROM inventory_levels WHERE sku = $1), 0) + "
        "coalesce((SELECT sum(in_transit) FROM transfer_lines WHERE sku = $1), 0)",
        sku,
    )
    return int(value)


def problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    return body


async def test_a_transfer_leaves_arrives_in_parts_and_conserves_units(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, src, dst = f"TA{uid}", f"TB{uid}", f"src{uid}", f"dst{uid}"
    await stock({a: {src: 10}, b: {src: 5}}, locations={dst: 100})
    body = {
        "id": f"T{uid}",
        "from": src,
        "to": dst,
        "lines": [{"sku": a, "quantity": 6}, {"sku": b, "quantity": 5}],
        "note": "truck 7",
    }
    created = await client.post("/v1/transfers", json=body)
    assert created.status_code == 201, created.text
    t = created.json()
    assert (t["id"], t["from"], t["to"], t["status"], t["note"]) == (
        f"T{uid}",
        src,
        dst,
        "in_transit",
        "truck 7",
    )
    assert t["lines"] == [
        {"sku": a, "quantity": 6, "received": 0, "in_transit": 6, "cancelled": 0},
        {"sku": b, "quantity": 5, "received": 0, "in_transit": 5, "cancelled": 0},
    ]
    assert t["receipts"] == []
    assert t["created_at"].endswith("Z")
    assert (await on_hand(backends, a, src), await on_hand(backends, b, src)) == (4, 0)
    assert await on_hand(backends, a, dst) is None  # nothing there until it arrives
    moves = await backends.pool.fetch(
        "SELECT sku, location, on_hand_delta, reason, reference FROM stock_movements "
        "WHERE reference = $1 ORDER BY sku",
        f"T{uid}",
    )
    assert [tuple(m.values()) for m in moves] == [
        (a, src, -6, "transfer_out", f"T{uid}"),
        (b, src, -5, "transfer_out", f"T{uid}"),
    ]
    assert (await conserved(backends, a), await conserved(backends, b)) == (10, 5)
    sku_view = (await client.get(f"/v1/skus/{a}")).json()
    assert (sku_view["on_hand"], sku_view["available"]) == (4, 4)
    await assert_cache_parity(backends, [a, b])

    first = await client.post(
        f"/v1/transfers/T{uid}/receipts",
        json={"receipt_id": "R1", "lines": [{"sku": a, "quantity": 2}]},
    )
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "in_transit"
    assert first.json()["lines"][0] == {
        "sku": a, "quantity": 6, "received": 2, "in_transit": 4, "cancelled": 0
    }  # fmt: skip
    assert [r["receipt_id"] for r in first.json()["receipts"]] == ["R1"]
    assert first.json()["receipts"][0]["lines"] == [{"sku": a, "quantity": 2}]
    assert await on_hand(backends, a, dst) == 2
    assert await conserved(backends, a) == 10
    await assert_cache_parity(backends, [a, b])

    # The same receipt again: applied once, answered 200 with the transfer.
    before = await state(backends, [a, b])
    again = await client.post(
        f"/v1/transfers/T{uid}/receipts",
        json={"receipt_id": "R1", "lines": [{"sku": a, "quantity": 2}]},
    )
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    other = await client.post(
        f"/v1/transfers/T{uid}/receipts",
        json={"receipt_id": "R1", "lines": [{"sku": a, "quantity": 3}]},
    )
    problem(other, 409, "conflict")
    too_many = await client.post(
        f"/v1/transfers/T{uid}/receipts",
        json={"receipt_id": "R2", "lines": [{"sku": b, "quantity": 1}, {"sku": a, "quantity": 5}]},
    )
    exceeded = problem(too_many, 409, "receipt_exceeds_in_transit")
    assert exceeded["lines"] == [{"sku": a, "received": 5, "in_transit": 4}]
    assert await state(backends, [a, b]) == before

    last = await client.post(
        f"/v1/transfers/T{uid}/receipts",
        json={"receipt_id": "R2", "lines": [{"sku": b, "quantity": 5}, {"sku": a, "quantity": 4}]},
    )
    assert last.status_code == 201, last.text
    done = last.json()
    assert done["status"] == "received"
    assert [ln["in_transit"] for ln in done["lines"]] == [0, 0]
    assert [ln["received"] for ln in done["lines"]] == [6, 5]
    assert (await on_hand(backends, a, dst), await on_hand(backends, b, dst)) == (6, 5)
    assert (await conserved(backends, a), await conserved(backends, b)) == (10, 5)
    reasons = await backends.pool.fetch(
        "SELECT reason, sum(on_hand_delta) AS n FROM stock_movements WHERE reference = $1 "
        "GROUP BY reason ORDER BY reason",
        f"T{uid}",
    )
    assert [tuple(r.values()) for r in reasons] == [("transfer_in", 11), ("transfer_out", -11)]

    # Nothing left in transit: no receipt fits, a received transfer cannot be cancelled.
    before = await state(backends, [a, b])
    more = await client.post(
        f"/v1/transfers/T{uid}/receipts",
        json={"receipt_id": "R3", "lines": [{"sku": a, "quantity": 1}]},
    )
    problem(more, 409, "receipt_exceeds_in_transit")
    cancel = await client.post(f"/v1/transfers/T{uid}/cancel")
    refused = problem(cancel, 409, "invalid_transition")
    assert (refused["from"], refused["to"]) == ("received", "cancelled")
    assert await state(backends, [a, b]) == before
    assert (await client.get(f"/v1/transfers/T{uid}")).json() == done
    await assert_cache_parity(backends, [a, b])
    await assert_invariants(backends.pool)


async def test_the_same_id_with_the_same_content_is_the_transfer_other_content_conflicts(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, src, dst = f"IA{uid}", f"IB{uid}", f"src{uid}", f"dst{uid}"
    await stock({a: {src: 10}, b: {src: 10}}, locations={dst: 100})
    lines = [{"sku": a, "quantity": 3}, {"sku": b, "quantity": 2}]
    body = {"id": f"T{uid}", "from": src, "to": dst, "lines": lines}
    first = await client.post("/v1/transfers", json=body)
    assert first.status_code == 201, first.text
    before = await state(backends, [a, b])
    # The order of the lines is not content.
    same = await client.post("/v1/transfers", json={**body, "lines": lines[::-1]})
    assert same.status_code == 200, same.text
    assert same.json() == first.json()
    for other in (
        {**body, "lines": [{"sku": a, "quantity": 4}, {"sku": b, "quantity": 2}]},
        {**body, "to": src, "from": dst},
        {**body, "note": "changed"},
    ):
        problem(await client.post("/v1/transfers", json=other), 409, "conflict")
    assert await state(backends, [a, b]) == before
    await assert_invariants(backends.pool)


async def test_a_transfer_never_takes_reserved_unavailable_or_missing_units(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, c, src, dst = f"RA{uid}", f"RB{uid}", f"RC{uid}", f"src{uid}", f"dst{uid}"
    await stock({a: {src: 10}, b: {src: 10}, c: {dst: 4}}, locations={dst: 100})
    await orders.place_order(backends, PlaceOrder(id=f"O{uid}", lines=((a, 4),)), "t")
    damaged = await client.post(
        f"/v1/skus/{b}/adjustments",
        json={"location": src, "unavailable_delta": 3, "reason": "damaged"},
    )
    assert damaged.status_code == 201, damaged.text
    before = await state(backends, [a, b, c])

    def body(lines: list[tuple[str, int]]) -> dict[str, Any]:
        return {
            "id": f"T{uid}",
            "from": src,
            "to": dst,
            "lines": [{"sku": s, "quantity": q} for s, q in lines],
        }

    reserved = problem(
        await client.post("/v1/transfers", json=body([(b, 1), (a, 7)])), 409, "insufficient_stock"
    )
    assert reserved["location"] == src
    assert reserved["shortages"] == [{"sku": a, "requested": 7, "movable": 6}]
    unavailable = problem(
        await client.post("/v1/transfers", json=body([(b, 8)])), 409, "insufficient_stock"
    )
    assert unavailable["shortages"] == [{"sku": b, "requested": 8, "movable": 7}]
    # No level of c at src at all: missing units, and no empty level is left behind.
    missing = problem(
        await client.post("/v1/transfers", json=body([(c, 1)])), 409, "insufficient_stock"
    )
    assert missing["shortages"] == [{"sku": c, "requested": 1, "movable": 0}]
    assert await state(backends, [a, b, c]) == before
    assert (await client.get(f"/v1/transfers/T{uid}")).status_code == 404

    # Exactly what is movable goes: on_hand ends at reserved + unavailable.
    ok = await client.post("/v1/transfers", json=body([(a, 6), (b, 7)]))
    assert ok.status_code == 201, ok.text
    rows = await backends.pool.fetch(
        "SELECT sku, on_hand, reserved, unavailable FROM inventory_levels "
        "WHERE location = $1 AND sku = ANY($2::text[]) ORDER BY sku",
        src,
        [a, b],
    )
    assert [tuple(r.values()) for r in rows] == [(a, 4, 4, 0), (b, 3, 0, 3)]
    await assert_cache_parity(backends, [a, b, c])
    await assert_invariants(backends.pool)


async def test_safety_stock_units_may_be_transferred(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, src, dst = f"SS{uid}", f"src{uid}", f"dst{uid}"
    await stock({sku: {src: 10}}, locations={dst: 100})
    put = await client.put(f"/v1/skus/{sku}/levels/{src}", json={"safety_stock": 8})
    assert put.status_code in (200, 201), put.text
    moved = await client.post(
        "/v1/transfers",
        json={"id": f"T{uid}", "from": src, "to": dst, "lines": [{"sku": sku, "quantity": 10}]},
    )
    assert moved.status_code == 201, moved.text
    level = (await client.get(f"/v1/skus/{sku}")).json()["levels"][0]
    assert (level["on_hand"], level["safety_stock"], level["available"]) == (0, 8, 0)
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_cancel_sends_what_is_in_transit_back_once(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, src, dst = f"CA{uid}", f"CB{uid}", f"src{uid}", f"dst{uid}"
    await stock({a: {src: 10}, b: {src: 3}}, locations={dst: 100})
    body = {
        "id": f"T{uid}",
        "from": src,
        "to": dst,
        "lines": [{"sku": a, "quantity": 5}, {"sku": b, "quantity": 3}],
    }
    assert (await client.post("/v1/transfers", json=body)).status_code == 201
    receipt = {"receipt_id": "R1", "lines": [{"sku": a, "quantity": 2}]}
    got = await client.post(f"/v1/transfers/T{uid}/receipts", json=receipt)
    assert got.status_code == 201, got.text
    cancelled = await client.post(f"/v1/transfers/T{uid}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    t = cancelled.json()
    assert t["status"] == "cancelled"
    assert t["lines"] == [
        {"sku": a, "quantity": 5, "received": 2, "in_transit": 0, "cancelled": 3},
        {"sku": b, "quantity": 3, "received": 0, "in_transit": 0, "cancelled": 3},
    ]
    assert (await on_hand(backends, a, src), await on_hand(backends, a, dst)) == (8, 2)
    assert await on_hand(backends, b, src) == 3
    assert (await conserved(backends, a), await conserved(backends, b)) == (10, 3)
    back = await backends.pool.fetch(
        "SELECT sku, location, on_hand_delta FROM stock_movements "
        "WHERE reference = $1 AND reason = 'transfer_cancelled' ORDER BY sku",
        f"T{uid}",
    )
    assert [tuple(r.values()) for r in back] == [(a, src, 3), (b, src, 3)]
    await assert_cache_parity(backends, [a, b])

    before = await state(backends, [a, b])
    again = await client.post(f"/v1/transfers/T{uid}/cancel")
    assert again.status_code == 200
    assert again.json() == t
    # A receipt applied before the cancel is still answered; a new one is refused.
    replay = await client.post(f"/v1/transfers/T{uid}/receipts", json=receipt)
    assert replay.status_code == 200, replay.text
    late = await client.post(
        f"/v1/transfers/T{uid}/receipts",
        json={"receipt_id": "R2", "lines": [{"sku": b, "quantity": 1}]},
    )
    refused = problem(late, 409, "invalid_transition")
    assert (refused["from"], refused["to"]) == ("cancelled", "received")
    assert await state(backends, [a, b]) == before
    await assert_invariants(backends.pool)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"from": "same"}, "from"),
        ({"to": "nowhere"}, "to"),
        ({"from": "nowhere"}, "from"),
        ({"lines": [{"sku": "NOPE-unknown", "quantity": 1}]}, "unknown skus"),
        ({"lines": "dup"}, "listed twice"),
        ({"lines": [{"sku": "X", "quantity": 0}]}, "quantity"),
        ({"lines": [{"sku": "X", "quantity": 1_000_001}]}, "quantity"),
        ({"lines": [{"sku": "X", "quantity": "1"}]}, "quantity"),
        ({"lines": [{"sku": "X", "quantity": 1.0}]}, "quantity"),
        ({"lines": [{"sku": "X", "quantity": True}]}, "quantity"),
        ({"lines": []}, "lines"),
        ({"lines": "many"}, "lines"),
        ({"id": "bad id"}, "id"),
        ({"extra": 1}, "extra"),
        ({"note": "n" * 501}, "note"),
    ],
)
async def test_bad_transfers_are_refused_with_nothing_changed(
    client: httpx.AsyncClient,
    backends: Backends,
    stock: Stocker,
    uid: str,
    change: dict[str, Any],
    where: str,
) -> None:
    sku, src, dst = f"V{uid}", f"src{uid}", f"dst{uid}"
    await stock({sku: {src: 10}}, locations={dst: 100})
    body: dict[str, Any] = {
        "id": f"T{uid}",
        "from": src,
        "to": dst,
        "lines": [{"sku": sku, "quantity": 1}],
    }
    for key, value in change.items():
        body[key] = value
    if change.get("from") == "same":
        body["from"] = dst
    if change.get("lines") == "dup":
        body["lines"] = [{"sku": sku, "quantity": 1}, {"sku": sku, "quantity": 2}]
    if change.get("lines") == "many":
        body["lines"] = [{"sku": f"{sku}-{i}", "quantity": 1} for i in range(501)]
    if isinstance(body["lines"], list) and body["lines"] and body["lines"][0]["sku"] == "X":
        body["lines"][0]["sku"] = sku
    before = await state(backends, [sku])
    refused = problem(await client.post("/v1/transfers", json=body), 422, "validation_error")
    assert where in refused["detail"] or where in str(refused.get("errors")), refused
    assert await state(backends, [sku]) == before
    assert (
        await backends.pool.fetchval("SELECT count(*) FROM transfers WHERE id = $1", body["id"])
        == 0
    )


async def test_receipts_name_lines_of_the_transfer(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, other, src, dst = f"LA{uid}", f"LO{uid}", f"src{uid}", f"dst{uid}"
    await stock({a: {src: 5}, other: {src: 5}}, locations={dst: 100})
    body = {"id": f"T{uid}", "from": src, "to": dst, "lines": [{"sku": a, "quantity": 5}]}
    assert (await client.post("/v1/transfers", json=body)).status_code == 201
    before = await state(backends, [a, other])
    url = f"/v1/transfers/T{uid}/receipts"
    for bad in (
        {"receipt_id": "R", "lines": [{"sku": other, "quantity": 1}]},
        {"receipt_id": "R", "lines": [{"sku": a, "quantity": 1}, {"sku": a, "quantity": 1}]},
        {"receipt_id": "R", "lines": [{"sku": a, "quantity": 0}]},
        {"receipt_id": "R", "lines": []},
        {"receipt_id": "bad id", "lines": [{"sku": a, "quantity": 1}]},
        {"lines": [{"sku": a, "quantity": 1}]},
    ):
        problem(await client.post(url, json=bad), 422, "validation_error")
    receipt = {"receipt_id": "R", "lines": [{"sku": a, "quantity": 1}]}
    for url in (f"/v1/transfers/N{uid}/receipts", f"/v1/transfers/N{uid}/cancel"):
        problem(
            await client.post(url, json=receipt if "receipts" in url else None), 404, "not_found"
        )
    problem(await client.get(f"/v1/transfers/N{uid}"), 404, "not_found")
    problem(await client.get("/v1/transfers/bad%20id"), 422, "validation_error")
    assert await state(backends, [a, other]) == before


async def test_transfers_are_listed_by_status_with_a_cursor(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, src, dst = f"P{uid}", f"src{uid}", f"dst{uid}"
    await stock({sku: {src: 10}}, locations={dst: 100})
    ids = [f"T{uid}-{i}" for i in range(3)]
    for tid in ids:
        body = {"id": tid, "from": src, "to": dst, "lines": [{"sku": sku, "quantity": 1}]}
        assert (await client.post("/v1/transfers", json=body)).status_code == 201
    assert (await client.post(f"/v1/transfers/{ids[1]}/cancel")).status_code == 200

    async def all_pages(status: str) -> list[str]:
        seen: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"status": status, "limit": 1}
            if after:
                params["after"] = after
            got = await client.get("/v1/transfers", params=params)
            assert got.status_code == 200, got.text
            page = got.json()
            assert len(page["items"]) <= 1
            seen += [t["id"] for t in page["items"] if t["id"].startswith(f"T{uid}")]
            after = page["next"]
            if after is None:
                return seen

    assert await all_pages("in_transit") == [ids[0], ids[2]]
    assert await all_pages("cancelled") == [ids[1]]
    everything = (await client.get("/v1/transfers", params={"limit": 500})).json()
    assert [t["id"] for t in everything["items"] if t["id"].startswith(f"T{uid}")] == ids
    problem(await client.get("/v1/transfers?status=lost"), 422, "validation_error")
    problem(await client.get("/v1/transfers?limit=0"), 422, "validation_error")
    problem(await client.get("/v1/transfers?after=nope"), 422, "validation_error")


async def test_transfers_need_an_admin_key_and_honour_idempotency_keys(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str, api_keys: Keys
) -> None:
    sku, src, dst = f"K{uid}", f"src{uid}", f"dst{uid}"
    await stock({sku: {src: 10}}, locations={dst: 100})
    body = {"id": f"T{uid}", "from": src, "to": dst, "lines": [{"sku": sku, "quantity": 4}]}
    service = {"Authorization": f"Bearer {api_keys.service}"}
    problem(await client.post("/v1/transfers", json=body, headers=service), 403, "forbidden")
    problem(await client.get("/v1/transfers", headers=service), 403, "forbidden")
    problem(
        await client.post("/v1/transfers", json=body, headers={"Authorization": "Bearer x"}),
        401,
        "unauthorized",
    )
    assert await on_hand(backends, sku, src) == 10

    key = {"Idempotency-Key": f"k-{uid}"}
    first = await client.post("/v1/transfers", json=body, headers=key)
    assert first.status_code == 201
    replay = await client.post("/v1/transfers", json=body, headers=key)
    assert (replay.status_code, replay.content) == (201, first.content)
    reused = await client.post("/v1/transfers", json={**body, "note": "x"}, headers=key)
    problem(reused, 422, "idempotency_key_reused")
    receipt = {"receipt_id": "R", "lines": [{"sku": sku, "quantity": 1}]}
    rkey = {"Idempotency-Key": f"r-{uid}"}
    got = await client.post(f"/v1/transfers/T{uid}/receipts", json=receipt, headers=rkey)
    assert got.status_code == 201
    again = await client.post(f"/v1/transfers/T{uid}/receipts", json=receipt, headers=rkey)
    assert (again.status_code, again.content) == (201, got.content)
    # A refusal is an answer too: it is replayed, and the cancel stays undone meanwhile.
    over = {"receipt_id": "R9", "lines": [{"sku": sku, "quantity": 9}]}
    okey = {"Idempotency-Key": f"o-{uid}"}
    refused = await client.post(f"/v1/transfers/T{uid}/receipts", json=over, headers=okey)
    problem(refused, 409, "receipt_exceeds_in_transit")
    replayed = await client.post(f"/v1/transfers/T{uid}/receipts", json=over, headers=okey)
    assert (replayed.status_code, replayed.content) == (409, refused.content)
    ckey = {"Idempotency-Key": f"c-{uid}"}
    cancel = await client.post(f"/v1/transfers/T{uid}/cancel", headers=ckey)
    assert cancel.status_code == 200
    assert (await client.post(f"/v1/transfers/T{uid}/cancel", headers=ckey)).content == (
        cancel.content
    )
    assert (await on_hand(backends, sku, src), await on_hand(backends, sku, dst)) == (9, 1)
    assert await conserved(backends, sku) == 10
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_postgresql_holds_what_it_can_of_a_transfer(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    import asyncpg

    sku, src, dst = f"D{uid}", f"src{uid}", f"dst{uid}"
    await stock({sku: {src: 10}}, locations={dst: 100})
    body = {"id": f"T{uid}", "from": src, "to": dst, "lines": [{"sku": sku, "quantity": 4}]}
    assert (await client.post("/v1/transfers", json=body)).status_code == 201
    assert (await client.post(f"/v1/transfers/T{uid}/cancel")).status_code == 200
    broken = [
        (
            "UPDATE transfer_lines SET received = 5 WHERE transfer_id = $1",
            asyncpg.CheckViolationError,
        ),
        (
            "UPDATE transfer_lines SET received = 1 WHERE transfer_id = $1",
            asyncpg.CheckViolationError,
        ),
        ("UPDATE transfers SET status = 'in_transit' WHERE id = $1", asyncpg.CheckViolationError),
        (
            "UPDATE transfers SET to_location = from_location WHERE id = $1",
            asyncpg.CheckViolationError,
        ),
        (
            "INSERT INTO transfers (id, from_location, to_location, request_hash, actor) "
            "SELECT $1 || 'x', from_location, from_location, 'h', 'a' FROM transfers WHERE id = $1",
            asyncpg.CheckViolationError,
        ),
        (
            "INSERT INTO transfer_receipts (transfer_id, receipt_id, lines, request_hash, actor) "
            "VALUES ($1 || 'nope', 'R', '[]', 'h', 'a')",
            asyncpg.ForeignKeyViolationError,
        ),
    ]
    for sql, error in broken:
        with pytest.raises(error):
            await backends.pool.execute(sql, f"T{uid}")
    row = await backends.pool.fetchrow(
        "SELECT t.status, l.received, l.cancelled, l.in_transit FROM transfers t "
        "JOIN transfer_lines l ON l.transfer_id = t.id WHERE t.id = $1",
        f"T{uid}",
    )
    assert row is not None
    assert tuple(row.values()) == ("cancelled", 0, 4, 0)
    await assert_invariants(backends.pool)


@pytest.mark.parametrize(
    ("sabotage", "check"),
    [
        # A line that says more arrived than the ledger shows.
        (
            "UPDATE transfer_lines SET received = received + 1 WHERE transfer_id = '{t}'",
            "transfer_ledger_matches_lines",
        ),
        # Units taken off the road without a movement: conservation breaks.
        (
            "UPDATE transfer_lines SET cancelled = cancelled + 1 WHERE transfer_id = '{t}'",
            "units_conserved_with_transit",
        ),
        # A transfer marked received while units are still on the road.
        (
            "UPDATE transfers SET status = 'received' WHERE id = '{t}'",
            "transfer_status_matches_lines",
        ),
    ],
)
async def test_verify_names_a_broken_invariant_13(
    client: httpx.AsyncClient,
    backends: Backends,
    stock: Stocker,
    uid: str,
    sabotage: str,
    check: str,
) -> None:
    sku, src, dst = f"B{uid}", f"src{uid}", f"dst{uid}"
    await stock({sku: {src: 10}}, locations={dst: 100})
    body = {"id": f"T{uid}", "from": src, "to": dst, "lines": [{"sku": sku, "quantity": 4}]}
    assert (await client.post("/v1/transfers", json=body)).status_code == 201
    sql = dict((name, q) for _, name, q in CHECKS)
    async with backends.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            assert await conn.fetch(sql[check]) == []
            await conn.execute(sabotage.format(t=f"T{uid}"))
            found = [dict(r.items()) for r in await conn.fetch(sql[check])]
            assert any(r.get("transfer_id") == f"T{uid}" or r.get("sku") == sku for r in found), (
                found
            )
        finally:
            await tx.rollback()
    await assert_invariants(backends.pool)


async def test_the_service_checks_lines_itself(backends: Backends, uid: str) -> None:
    """Callers other than the API (the CLI) get the same limits on lines."""
    from stockguard.domain.errors import ValidationFailed
    from stockguard.service import transfers
    from stockguard.service.transfers import CreateTransfer

    for lines in ((), tuple((f"S{i}", 1) for i in range(501)), (("S", 1_000_001),)):
        with pytest.raises(ValidationFailed):
            await transfers.create_transfer(
                backends, transfers.CreateTransfer(f"T{uid}", "a", "b", lines), "t"
            )
        with pytest.raises(ValidationFailed):
            await transfers.receive_transfer(
                backends, f"T{uid}", transfers.Receipt("R", lines), "t"
            )
    for bad in (
        CreateTransfer("..", "a", "b", (("S", 1),)),
        CreateTransfer("T", "a", "b", (("S", 1),), "n" * 501),
    ):
        with pytest.raises(ValidationFailed):
            await transfers.create_transfer(backends, bad, "t")
    with pytest.raises(ValidationFailed, match="receipt_id"):
        await transfers.receive_transfer(
            backends, "T", transfers.Receipt("x" * 65, (("S", 1),)), "t"
        )
    with pytest.raises(ValidationFailed, match="two different"):
        await transfers.create_transfer(
            backends, transfers.CreateTransfer(f"T{uid}", "a", "a", (("S", 1),)), "t"
        )
