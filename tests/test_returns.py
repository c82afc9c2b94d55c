"""Returns after shipment (API.md "Returns (service)", DESIGN.md §10 invariant 12): units
come back once per return id, never more than were fulfilled, to where they shipped from
(or where the return says), sellable (``restock``) or not (``damaged``)."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from stockguard.domain.errors import ValidationFailed
from stockguard.service import returns
from stockguard.service.returns import ReturnRequest
from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import assert_cache_parity, assert_invariants

pytestmark = pytest.mark.usefixtures("backends")


async def ship(
    client: httpx.AsyncClient, order_id: str, *lines: tuple[str, int], status: str = "shipped"
) -> dict[str, Any]:
    """Place, pay and walk the order to ``status`` (processing, shipped or delivered)."""
    body = {"id": order_id, "lines": [{"sku": s, "quantity": q} for s, q in lines]}
    placed = await client.post("/v1/orders", json=body)
    assert placed.status_code == 201, placed.text
    paid = await client.post(
        f"/v1/orders/{order_id}/payments", json={"provider": "manual", "payment_id": order_id}
    )
    assert paid.status_code == 200, paid.text
    path = ["processing", "shipped", "delivered"]
    for target in path[: path.index(status) + 1]:
        r = await client.patch(f"/v1/orders/{order_id}", json={"status": target})
        assert r.status_code == 200, r.text
    got: dict[str, Any] = (await client.get(f"/v1/orders/{order_id}")).json()
    return got


async def state(pool: asyncpg.Pool, skus: list[str], order_id: str) -> dict[str, Any]:
    """Everything a return may change: levels, ledger, returns, reservations, the order."""
    levels = await pool.fetch(
        "SELECT sku, location, on_hand, reserved, unavailable FROM inventory_levels "
        "WHERE sku = ANY($1::text[]) ORDER BY sku, location",
        skus,
    )
    return {
        "levels": [tuple(r) for r in levels],
        "ledger": await pool.fetchval(
            "SELECT count(*) FROM stock_movements WHERE sku = ANY($1::text[])", skus
        ),
        "returns": await pool.fetchval(
            "SELECT count(*) FROM order_return_lines WHERE order_id = $1", order_id
        ),
        "order": tuple(
            await pool.fetchrow(
                "SELECT status, updated_at, deleted_at FROM orders WHERE id = $1", order_id
            )
            or ()
        ),
        "reservations": [
            tuple(r)
            for r in await pool.fetch(
                "SELECT id, status, quantity FROM reservations WHERE order_id = $1 ORDER BY id",
                order_id,
            )
        ],
    }


def ret(return_id: str, *lines: tuple[str, int, str], **extra: object) -> dict[str, Any]:
    return {
        "return_id": return_id,
        "lines": [{"sku": s, "quantity": q, "disposition": d} for s, q, d in lines],
        **extra,
    }


async def test_restock_and_damaged_go_back_where_they_shipped_from_by_priority(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, a, b = f"R{uid}", f"a{uid}", f"b{uid}"
    await stock({sku: {a: 2, b: 3}}, locations={a: 1, b: 2})
    order = await ship(client, f"o{uid}", (sku, 4))  # 2 from a, 2 from b
    assert {(r["location"], r["quantity"]) for r in order["reservations"]} == {(a, 2), (b, 2)}
    r = await client.post(f"/v1/orders/o{uid}/returns", json=ret(f"r1{uid}", (sku, 3, "restock")))
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["return_id"], body["order_id"], body["note"]) == (f"r1{uid}", f"o{uid}", None)
    assert body["created_at"].endswith("Z")
    assert body["lines"] == [
        {"sku": sku, "quantity": 2, "disposition": "restock", "location": a},
        {"sku": sku, "quantity": 1, "disposition": "restock", "location": b},
    ]
    r2 = await client.post(
        f"/v1/orders/o{uid}/returns",
        json=ret(f"r2{uid}", (sku, 1, "damaged"), note="box crushed"),
    )
    assert r2.status_code == 201, r2.text
    assert r2.json()["lines"] == [
        {"sku": sku, "quantity": 1, "disposition": "damaged", "location": b}
    ]
    now = await state(backends.pool, [sku], f"o{uid}")
    assert now["levels"] == [(sku, a, 2, 0, 0), (sku, b, 3, 0, 1)]
    moves = await backends.pool.fetch(
        "SELECT location, on_hand_delta, reserved_delta, unavailable_delta, reason, order_id, "
        "reference FROM stock_movements WHERE sku = $1 AND reason LIKE 'returned%' ORDER BY id",
        sku,
    )
    assert [tuple(m) for m in moves] == [
        (a, 2, 0, 0, "returned", f"o{uid}", f"r1{uid}"),
        (b, 1, 0, 0, "returned", f"o{uid}", f"r1{uid}"),
        (b, 1, 0, 1, "returned_damaged", f"o{uid}", f"r2{uid}"),
    ]
    after = (await client.get(f"/v1/orders/o{uid}")).json()
    assert after["status"] == "shipped"
    assert after["reservations"] == order["reservations"]  # a return never touches them
    assert after["returns"] == [body, r2.json()]
    listed = await client.get(f"/v1/orders/o{uid}/returns")
    assert listed.json() == {"items": [body, r2.json()]}
    view = (await client.get(f"/v1/skus/{sku}")).json()
    assert (view["on_hand"], view["unavailable"], view["available"]) == (5, 1, 4)
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_the_same_return_id_is_applied_once_and_other_content_is_a_conflict(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, other = f"R{uid}", f"w{uid}", f"x{uid}"
    await stock({sku: {loc: 5, other: 0}})
    await ship(client, f"o{uid}", (sku, 3))
    await ship(client, f"p{uid}", (sku, 1))
    url = f"/v1/orders/o{uid}/returns"
    first = await client.post(url, json=ret(f"r{uid}", (sku, 1, "restock"), note="n"))
    assert first.status_code == 201, first.text
    before = await state(backends.pool, [sku], f"o{uid}")
    again = await client.post(url, json=ret(f"r{uid}", (sku, 1, "restock"), note="n"))
    assert (again.status_code, again.json()) == (200, first.json())
    for body in (
        ret(f"r{uid}", (sku, 2, "restock"), note="n"),
        ret(f"r{uid}", (sku, 1, "damaged"), note="n"),
        ret(f"r{uid}", (sku, 1, "restock")),
        ret(f"r{uid}", (sku, 1, "restock"), note="n", location=other),
    ):
        r = await client.post(url, json=body)
        assert (r.status_code, r.json()["code"]) == (409, "conflict"), body
    # The id is taken for good: another order cannot use it either.
    r = await client.post(
        f"/v1/orders/p{uid}/returns", json=ret(f"r{uid}", (sku, 1, "restock"), note="n")
    )
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    assert await state(backends.pool, [sku], f"o{uid}") == before
    assert (await client.get(f"/v1/orders/p{uid}/returns")).json() == {"items": []}
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_more_than_fulfilled_is_refused_whole_over_all_returns(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, c, loc = f"A{uid}", f"B{uid}", f"C{uid}", f"w{uid}"
    await stock({a: {loc: 5}, b: {loc: 5}, c: {loc: 5}})
    await ship(client, f"o{uid}", (a, 2), (b, 3))
    url = f"/v1/orders/o{uid}/returns"
    assert (await client.post(url, json=ret(f"r1{uid}", (a, 1, "restock")))).status_code == 201
    before = await state(backends.pool, [a, b, c], f"o{uid}")
    refused = await client.post(
        url,
        json=ret(
            f"r2{uid}",
            (a, 1, "restock"),
            (a, 1, "damaged"),  # 2 of a, 1 still returnable
            (b, 3, "restock"),  # fits: not listed
            (c, 1, "restock"),  # never ordered
        ),
    )
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert problem["code"] == "return_exceeds_fulfilled"
    assert problem["lines"] == [
        {"sku": a, "requested": 2, "returnable": 1},
        {"sku": c, "requested": 1, "returnable": 0},
    ]
    assert await state(backends.pool, [a, b, c], f"o{uid}") == before
    # Nothing of r2 was kept: the id is free, and the rest fits.
    ok = await client.post(url, json=ret(f"r2{uid}", (a, 1, "damaged"), (b, 3, "restock")))
    assert ok.status_code == 201, ok.text
    full = await client.post(url, json=ret(f"r3{uid}", (b, 1, "restock")))
    assert full.json()["lines"] == [{"sku": b, "requested": 1, "returnable": 0}]
    assert (
        await backends.pool.fetchval(
            "SELECT sum(quantity) FROM order_return_lines WHERE order_id = $1", f"o{uid}"
        )
        == 5
    )
    await assert_cache_parity(backends, [a, b, c])
    await assert_invariants(backends.pool)


async def test_returns_only_for_shipped_or_delivered_orders(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"R{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    pending = f"pe{uid}"
    assert (
        await client.post(
            "/v1/orders", json={"id": pending, "lines": [{"sku": sku, "quantity": 1}]}
        )
    ).status_code == 201
    await ship(client, f"pr{uid}", (sku, 1), status="processing")
    cancelled = f"ca{uid}"
    await client.post("/v1/orders", json={"id": cancelled, "lines": [{"sku": sku, "quantity": 1}]})
    assert (await client.post(f"/v1/orders/{cancelled}/cancel")).status_code == 200
    for order_id, status in (
        (pending, "pending"),
        (f"pr{uid}", "processing"),
        (cancelled, "cancelled"),
    ):
        before = await state(backends.pool, [sku], order_id)
        r = await client.post(
            f"/v1/orders/{order_id}/returns", json=ret(f"r{order_id}", (sku, 1, "restock"))
        )
        assert r.status_code == 409, r.text
        assert (r.json()["code"], r.json()["from"], r.json()["to"]) == (
            "invalid_transition",
            status,
            "returned",
        )
        assert await state(backends.pool, [sku], order_id) == before
    missing = await client.post(
        f"/v1/orders/no{uid}/returns", json=ret(f"m{uid}", (sku, 1, "restock"))
    )
    assert missing.status_code == 404
    assert (await client.get(f"/v1/orders/no{uid}/returns")).status_code == 404
    # Delivered takes returns and stays delivered.
    await ship(client, f"de{uid}", (sku, 2), status="delivered")
    r = await client.post(f"/v1/orders/de{uid}/returns", json=ret(f"rd{uid}", (sku, 2, "damaged")))
    assert r.status_code == 201, r.text
    order = (await client.get(f"/v1/orders/de{uid}")).json()
    assert order["status"] == "delivered"
    assert [x["return_id"] for x in order["returns"]] == [f"rd{uid}"]
    await assert_invariants(backends.pool)


async def test_a_return_to_another_location_and_the_refusals_of_its_form(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, other = f"R{uid}", f"w{uid}", f"x{uid}"
    await stock({sku: {loc: 5}}, locations={other: 50})  # no level of sku at other yet
    await ship(client, f"o{uid}", (sku, 2))
    url = f"/v1/orders/o{uid}/returns"
    before = await state(backends.pool, [sku], f"o{uid}")
    for body in (
        ret(f"r{uid}", (sku, 1, "restock"), location=f"nowhere{uid}"),
        ret(f"r{uid}"),
        ret(f"r{uid}", (sku, 0, "restock")),
        ret(f"r{uid}", (sku, 1, "lost")),
        ret(f"r{uid}", (sku, 1, "restock"), extra=1),
        {"lines": [{"sku": sku, "quantity": 1, "disposition": "restock"}]},
        ret(f"r {uid}", (sku, 1, "restock")),
    ):
        r = await client.post(url, json=body)
        assert (r.status_code, r.json()["code"]) == (422, "validation_error"), body
    assert await state(backends.pool, [sku], f"o{uid}") == before
    r = await client.post(
        url, json=ret(f"r{uid}", (sku, 1, "restock"), (sku, 1, "damaged"), location=other)
    )
    assert r.status_code == 201, r.text
    assert [ln["location"] for ln in r.json()["lines"]] == [other, other]
    after = await state(backends.pool, [sku], f"o{uid}")
    assert after["levels"] == [(sku, loc, 3, 0, 0), (sku, other, 2, 0, 1)]
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_a_returned_order_is_never_cancelled_or_deleted_so_never_restocked_again(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"R{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    await ship(client, f"o{uid}", (sku, 2))
    r = await client.post(f"/v1/orders/o{uid}/returns", json=ret(f"r{uid}", (sku, 2, "restock")))
    assert r.status_code == 201
    before = await state(backends.pool, [sku], f"o{uid}")
    cancel = await client.post(f"/v1/orders/o{uid}/cancel")
    assert (cancel.status_code, cancel.json()["code"]) == (409, "invalid_transition")
    delete = await client.delete(f"/v1/orders/o{uid}")
    assert (delete.status_code, delete.json()["code"]) == (409, "order_not_deletable")
    patch = await client.patch(f"/v1/orders/o{uid}", json={"status": "cancelled"})
    assert patch.status_code == 409
    assert await state(backends.pool, [sku], f"o{uid}") == before
    assert before["levels"] == [(sku, loc, 5, 0, 0)]
    await assert_invariants(backends.pool)


async def test_idempotency_key_answers_a_return_again_without_applying_it_again(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"R{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    await ship(client, f"o{uid}", (sku, 3))
    key = {"Idempotency-Key": f"k{uid}"}
    url = f"/v1/orders/o{uid}/returns"
    first = await client.post(url, json=ret(f"r{uid}", (sku, 1, "restock")), headers=key)
    assert first.status_code == 201
    before = await state(backends.pool, [sku], f"o{uid}")
    again = await client.post(url, json=ret(f"r{uid}", (sku, 1, "restock")), headers=key)
    assert (again.status_code, again.content) == (201, first.content)
    other = await client.post(url, json=ret(f"s{uid}", (sku, 1, "restock")), headers=key)
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    assert await state(backends.pool, [sku], f"o{uid}") == before
    stored = await backends.pool.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE key = $1", f"k{uid}"
    )
    assert stored == 1


async def test_the_database_refuses_returns_beyond_fulfilled_and_edits(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    """Invariant 12 held by PostgreSQL itself, whatever a caller does (rolled back at the
    end: these returns are not in the ledger)."""
    sku, loc = f"R{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    await ship(client, f"o{uid}", (sku, 2))
    insert = (
        "WITH r AS (INSERT INTO order_returns (return_id, order_id, request_hash, actor) "
        "VALUES ($1, $2, 'h', 'test') RETURNING return_id) "
        "INSERT INTO order_return_lines (return_id, line_no, order_id, sku, location, quantity, "
        "disposition) SELECT return_id, 1, $2, $3, $4, $5, 'restock' FROM r"
    )
    refusals: list[tuple[type[Exception], str, tuple[object, ...]]] = [
        (asyncpg.CheckViolationError, insert, (f"z{uid}", f"o{uid}", sku, loc, 1)),
        (asyncpg.UniqueViolationError, insert, (f"y{uid}", f"o{uid}", sku, loc, 1)),
        (
            asyncpg.ForeignKeyViolationError,
            "INSERT INTO order_return_lines (return_id, line_no, order_id, sku, location, "
            "quantity, disposition) VALUES ($1, 2, $2, $3, $4, 1, 'restock')",
            (f"y{uid}", f"other{uid}", sku, loc),
        ),
        (
            asyncpg.CheckViolationError,
            "INSERT INTO order_return_lines (return_id, line_no, order_id, sku, location, "
            "quantity, disposition) VALUES ($1, 2, $2, $3, $4, 1, 'lost')",
            (f"y{uid}", f"o{uid}", sku, loc),
        ),
    ]
    for sql in (
        "UPDATE order_return_lines SET quantity = 1 WHERE return_id = $1",
        "DELETE FROM order_return_lines WHERE return_id = $1",
        "DELETE FROM order_returns WHERE return_id = $1",
        "UPDATE order_returns SET note = 'x' WHERE return_id = $1",
    ):
        refusals.append((asyncpg.InsufficientPrivilegeError, sql, (f"y{uid}",)))
    async with backends.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            with pytest.raises(asyncpg.CheckViolationError, match="only 2 fulfilled"):
                async with conn.transaction():
                    await conn.execute(insert, f"x{uid}", f"o{uid}", sku, loc, 3)
            await conn.execute(insert, f"y{uid}", f"o{uid}", sku, loc, 2)
            for error, sql, args in refusals:
                with pytest.raises(error):
                    async with conn.transaction():
                        await conn.execute(sql, *args)
            assert (
                await conn.fetchval(
                    "SELECT sum(quantity) FROM order_return_lines WHERE order_id = $1", f"o{uid}"
                )
                == 2
            )
        finally:
            await tx.rollback()
    await assert_invariants(backends.pool)


async def test_verify_names_returns_beyond_fulfilled_and_returns_not_in_the_ledger(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    from stockguard.service.verify import CHECKS

    sku, loc = f"R{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    await ship(client, f"o{uid}", (sku, 2))
    checks = {name: sql for inv, name, sql in CHECKS if inv == 12}
    assert set(checks) == {"returns_within_fulfilled", "returns_applied_once_in_the_ledger"}
    async with backends.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            # What a bug could leave if the trigger were off: 3 of 2 returned, none applied.
            await conn.execute(
                "ALTER TABLE order_return_lines DISABLE TRIGGER order_returns_within_fulfilled"
            )
            await conn.execute(
                "INSERT INTO order_returns (return_id, order_id, request_hash, actor) "
                "VALUES ($1, $2, 'h', 'test')",
                f"x{uid}",
                f"o{uid}",
            )
            await conn.execute(
                "INSERT INTO order_return_lines (return_id, line_no, order_id, sku, location, "
                "quantity, disposition) VALUES ($1, 1, $2, $3, $4, 3, 'restock')",
                f"x{uid}",
                f"o{uid}",
                sku,
                loc,
            )
            over = await conn.fetch(checks["returns_within_fulfilled"])
            assert [
                (r["order_id"], r["sku"], int(r["returned"]), int(r["fulfilled"])) for r in over
            ] == [(f"o{uid}", sku, 3, 2)]
            unapplied = await conn.fetch(checks["returns_applied_once_in_the_ledger"])
            assert [(r["return_id"], int(r["returned"]), int(r["ledger"])) for r in unapplied] == [
                (f"x{uid}", 3, 0)
            ]
        finally:
            await tx.rollback()
    await assert_invariants(backends.pool)


async def test_the_contract_is_served_and_a_return_needs_a_line(
    client: httpx.AsyncClient, backends: Backends, uid: str
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"post", "get"} <= set(paths["/v1/orders/{order_id}/returns"])
    assert "post" in paths["/v1/orders/{order_id}/extend"]
    with pytest.raises(ValidationFailed):
        await returns.record_return(backends, ReturnRequest(f"r{uid}", f"o{uid}", ()), "t")
    assert (
        await backends.pool.fetchval(
            "SELECT count(*) FROM order_returns WHERE return_id = $1", f"r{uid}"
        )
        == 0
    )
