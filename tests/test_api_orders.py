"""Orders over HTTP (API.md "Orders" and "Details that integrations rely on"): the order
document, re-posting, payments, cancel, PATCH transitions, delete, lists; levels checked in
PostgreSQL after every step."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import httpx

from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import assert_cache_parity, assert_invariants, ledger, level, log_actions
from tests.test_api_problems import assert_problem, order_body, order_count


def _time(value: object) -> datetime:
    assert isinstance(value, str)
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


async def _pay(client: httpx.AsyncClient, order_id: str, **extra: object) -> httpx.Response:
    body = {"provider": "manual", "payment_id": f"pay-{order_id}", **extra}
    return await client.post(f"/v1/orders/{order_id}/payments", json=body)


async def _patch(client: httpx.AsyncClient, order_id: str, status: str) -> httpx.Response:
    return await client.patch(f"/v1/orders/{order_id}", json={"status": status})


# ---------------------------------------------------------------- placing


async def test_place_order_answers_201_with_the_order(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, loc = f"A{uid}", f"B{uid}", f"w{uid}"
    await stock({a: {loc: 5}, b: {loc: 5}}, channels={f"web{uid}": [loc]})
    r = await client.post(
        "/v1/orders",
        json={
            "id": f"o{uid}",
            "channel": f"web{uid}",
            "lines": [{"sku": a, "quantity": 2}, {"sku": b, "quantity": 1}],
            "reservation_ttl_seconds": 600,
            "total_amount": 2599,
            "currency": "eur",
        },
    )
    assert r.status_code == 201, r.text
    order = r.json()
    assert {
        "id",
        "status",
        "channel",
        "lines",
        "reservations",
        "payment",
        "total_amount",
        "currency",
        "created_at",
        "updated_at",
    } <= order.keys()
    assert (order["id"], order["status"], order["channel"]) == (f"o{uid}", "pending", f"web{uid}")
    assert order["lines"] == [{"sku": a, "quantity": 2}, {"sku": b, "quantity": 1}]
    assert (order["payment"], order["total_amount"], order["currency"]) == (None, 2599, "EUR")
    created = _time(order["created_at"])
    assert _time(order["updated_at"]) == created
    held = sorted(
        (r["sku"], r["location"], r["quantity"], r["status"]) for r in order["reservations"]
    )
    assert held == [(a, loc, 2, "reserved"), (b, loc, 1, "reserved")]
    for res in order["reservations"]:
        assert isinstance(res["id"], int)
        assert _time(res["expires_at"]) == created + timedelta(seconds=600)
    assert await level(backends.pool, a, loc) == (5, 2)
    assert await level(backends.pool, b, loc) == (5, 1)
    assert (await client.get(f"/v1/orders/o{uid}")).json() == order
    await assert_cache_parity(backends, [a, b])


async def test_order_without_id_gets_one(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    first = await client.post("/v1/orders", json={"lines": [{"sku": sku, "quantity": 1}]})
    second = await client.post("/v1/orders", json={"lines": [{"sku": sku, "quantity": 1}]})
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert (await client.get(f"/v1/orders/{first.json()['id']}")).status_code == 200
    assert await level(backends.pool, sku, loc) == (5, 2)


async def test_reposting_an_order_returns_it_and_other_content_conflicts(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    body = {**order_body(f"o{uid}", (sku, 3)), "total_amount": 100, "currency": "usd"}
    first = await client.post("/v1/orders", json=body)
    assert first.status_code == 201
    again = await client.post("/v1/orders", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    same_upper = await client.post("/v1/orders", json={**body, "currency": "USD"})
    assert (same_upper.status_code, same_upper.json()) == (200, first.json())
    for other in (
        {**body, "lines": [{"sku": sku, "quantity": 4}]},
        {**body, "total_amount": 101},
        {**body, "allow_split": False},
        {**body, "reservation_ttl_seconds": 60},
        {k: v for k, v in body.items() if k != "currency"},
    ):
        assert_problem(await client.post("/v1/orders", json=other), 409, "conflict")
    assert await order_count(backends.pool, sku) == 1
    assert await level(backends.pool, sku, loc) == (10, 3)


async def test_location_choice_follows_preferences_priority_and_split(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, near, far = f"S{uid}", f"near{uid}", f"far{uid}"
    await stock({sku: {near: 3, far: 3}}, locations={near: 1, far: 2})

    async def held(body: dict[str, object]) -> list[tuple[str, int]]:
        r = await client.post("/v1/orders", json=body)
        assert r.status_code == 201, r.text
        return sorted((x["location"], x["quantity"]) for x in r.json()["reservations"])

    assert await held(order_body(f"a{uid}", (sku, 1))) == [(near, 1)]
    assert await held({**order_body(f"b{uid}", (sku, 1)), "preferred_locations": [far]}) == [
        (far, 1)
    ]
    r = await client.post(
        "/v1/orders", json={**order_body(f"c{uid}", (sku, 3)), "allow_split": False}
    )
    body = assert_problem(r, 409, "out_of_stock")
    assert body["shortages"] == [{"sku": sku, "requested": 3, "available": 4}]
    assert await held(order_body(f"d{uid}", (sku, 3))) == [(far, 1), (near, 2)]
    assert await level(backends.pool, sku, near) == (3, 3)
    assert await level(backends.pool, sku, far) == (3, 2)


# ---------------------------------------------------------------- paying


async def test_payment_commits_and_is_idempotent(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    placed = await client.post(
        "/v1/orders",
        json={**order_body(f"o{uid}", (sku, 2)), "total_amount": 500, "currency": "INR"},
    )
    assert placed.status_code == 201
    paid = await _pay(client, f"o{uid}", provider="razorpay", amount=500, currency="inr")
    assert paid.status_code == 200, paid.text
    order = paid.json()
    assert order["status"] == "paid"
    assert (order["payment"]["provider"], order["payment"]["payment_id"]) == (
        "razorpay",
        f"pay-o{uid}",
    )
    _time(order["payment"]["paid_at"])
    assert [r["status"] for r in order["reservations"]] == ["committed"]
    assert await level(backends.pool, sku, loc) == (5, 2)
    again = await _pay(client, f"o{uid}", provider="razorpay", amount=500, currency="inr")
    assert (again.status_code, again.json()) == (200, order)
    assert await log_actions(backends.pool, f"o{uid}") == ["RESERVED", "COMMITTED"]


async def test_payment_with_wrong_amount_goes_to_review(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    body = {**order_body(f"o{uid}", (sku, 1)), "total_amount": 1000, "currency": "EUR"}
    assert (await client.post("/v1/orders", json=body)).status_code == 201
    r = await _pay(client, f"o{uid}", amount=999, currency="EUR")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "needs_review"
    assert r.json()["payment"]["payment_id"] == f"pay-o{uid}"
    assert "INCONSISTENCY_DETECTED" in await log_actions(backends.pool, f"o{uid}")
    assert await level(backends.pool, sku, loc) == (5, 1)  # nothing released

    other = {**order_body(f"p{uid}", (sku, 1)), "total_amount": 1000, "currency": "EUR"}
    assert (await client.post("/v1/orders", json=other)).status_code == 201
    r = await _pay(client, f"p{uid}", amount=1000, currency="usd")
    assert r.json()["status"] == "needs_review"


async def test_second_different_payment_for_a_paid_order_goes_to_review(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    assert (await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 1)))).is_success
    assert (await _pay(client, f"o{uid}")).json()["status"] == "paid"
    r = await _pay(client, f"o{uid}", payment_id=f"other-{uid}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "needs_review"
    assert r.json()["payment"]["payment_id"] == f"pay-o{uid}"
    assert (await log_actions(backends.pool, f"o{uid}"))[-1] == "INCONSISTENCY_DETECTED"
    assert await level(backends.pool, sku, loc) == (5, 1)


async def test_payment_on_a_cancelled_order_is_an_invalid_transition(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    assert (await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 2)))).is_success
    assert (await client.post(f"/v1/orders/o{uid}/cancel")).json()["status"] == "cancelled"
    body = assert_problem(await _pay(client, f"o{uid}"), 409, "invalid_transition")
    assert (body["from"], body["to"]) == ("cancelled", "paid")
    order = (await client.get(f"/v1/orders/o{uid}")).json()
    assert (order["status"], order["payment"]) == ("cancelled", None)
    assert await level(backends.pool, sku, loc) == (5, 0)


async def test_a_new_payment_on_a_paid_then_cancelled_order_is_refused(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    """API.md: payments on a cancelled order are 409 ``invalid_transition``, also when the
    order had been paid before it was cancelled (a second charge must not look accepted)."""
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    assert (await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 2)))).is_success
    assert (await _pay(client, f"o{uid}")).json()["status"] == "paid"
    cancelled = await client.post(f"/v1/orders/o{uid}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    r = await _pay(client, f"o{uid}", payment_id=f"second-{uid}")
    assert r.status_code == 409, (
        "BUG in service/orders.py pay_order: a different payment for a paid-then-cancelled "
        f"order answers {r.status_code} with the cancelled order instead of 409 "
        f"invalid_transition: {r.text[:200]}"
    )
    body = assert_problem(r, 409, "invalid_transition")
    assert (body["from"], body["to"]) == ("cancelled", "paid")
    order = (await client.get(f"/v1/orders/o{uid}")).json()
    assert (order["status"], order["payment"]["payment_id"]) == ("cancelled", f"pay-o{uid}")
    assert await level(backends.pool, sku, loc) == (5, 0)


# ---------------------------------------------------------------- cancel, PATCH, ship


async def test_cancel_restores_once_and_cancelling_again_is_unchanged(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 6}})
    assert (await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 4)))).is_success
    assert (await _pay(client, f"o{uid}")).json()["status"] == "paid"
    first = await client.post(f"/v1/orders/o{uid}/cancel", json={"reason": "customer"})
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "cancelled"
    assert first.json()["cancel_reason"] == "customer"
    assert [r["status"] for r in first.json()["reservations"]] == ["released"]
    assert await level(backends.pool, sku, loc) == (6, 0)
    for attempt in (
        client.post(f"/v1/orders/o{uid}/cancel"),
        client.post(f"/v1/orders/o{uid}/cancel", json={"reason": "again"}),
        _patch(client, f"o{uid}", "cancelled"),
    ):
        r = await attempt
        assert (r.status_code, r.json()) == (200, first.json())
    assert await level(backends.pool, sku, loc) == (6, 0)
    assert await ledger(backends.pool, sku, loc) == (6, 0)
    assert (await log_actions(backends.pool, f"o{uid}")).count("STOCK_RESTORED") == 1


async def test_patch_walks_the_fulfilment_path_and_ship_moves_stock(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, a, b = f"S{uid}", f"a{uid}", f"b{uid}"
    await stock({sku: {a: 2, b: 3}}, locations={a: 1, b: 2})
    # Neither location holds 4: split, the higher priority first.
    assert (await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 4)))).is_success
    assert await level(backends.pool, sku, a) == (2, 2)
    assert await level(backends.pool, sku, b) == (3, 2)
    assert (await _pay(client, f"o{uid}")).json()["status"] == "paid"

    processing = await _patch(client, f"o{uid}", "processing")
    assert (processing.status_code, processing.json()["status"]) == (200, "processing")
    again = await _patch(client, f"o{uid}", "processing")
    assert (again.status_code, again.json()) == (200, processing.json())

    shipped = await _patch(client, f"o{uid}", "shipped")
    assert (shipped.status_code, shipped.json()["status"]) == (200, "shipped")
    assert {r["status"] for r in shipped.json()["reservations"]} == {"fulfilled"}
    assert await level(backends.pool, sku, a) == (0, 0)
    assert await level(backends.pool, sku, b) == (1, 0)
    assert await ledger(backends.pool, sku, b) == (1, 0)
    view = (await client.get(f"/v1/skus/{sku}")).json()
    assert (view["on_hand"], view["reserved"], view["available"]) == (1, 0, 1)
    await assert_cache_parity(backends, [sku])

    delivered = await _patch(client, f"o{uid}", "delivered")
    assert (delivered.status_code, delivered.json()["status"]) == (200, "delivered")
    assert await level(backends.pool, sku, b) == (1, 0)
    await assert_invariants(backends.pool)


async def test_invalid_transitions_are_409_and_change_nothing(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})

    async def refused(order_id: str, target: str, current: str) -> None:
        before = (await client.get(f"/v1/orders/{order_id}")).json()
        r = (
            await client.post(f"/v1/orders/{order_id}/cancel")
            if target == "cancel"
            else await _patch(client, order_id, target)
        )
        body = assert_problem(r, 409, "invalid_transition")
        to = "cancelled" if target == "cancel" else target
        assert (body["from"], body["to"]) == (current, to)
        assert (await client.get(f"/v1/orders/{order_id}")).json() == before

    pending = f"p{uid}"
    assert (await client.post("/v1/orders", json=order_body(pending, (sku, 1)))).is_success
    for target in ("processing", "shipped", "delivered"):
        await refused(pending, target, "pending")

    paid = f"q{uid}"
    assert (await client.post("/v1/orders", json=order_body(paid, (sku, 1)))).is_success
    await _pay(client, paid)
    for target in ("shipped", "delivered"):
        await refused(paid, target, "paid")
    await _patch(client, paid, "processing")
    await refused(paid, "delivered", "processing")
    await _patch(client, paid, "shipped")
    for target in ("processing", "cancelled", "cancel"):
        await refused(paid, target, "shipped")
    await _patch(client, paid, "delivered")
    for target in ("processing", "shipped", "cancelled", "cancel"):
        await refused(paid, target, "delivered")

    cancelled = f"r{uid}"
    assert (await client.post("/v1/orders", json=order_body(cancelled, (sku, 1)))).is_success
    await client.post(f"/v1/orders/{cancelled}/cancel")
    for target in ("processing", "shipped", "delivered"):
        await refused(cancelled, target, "cancelled")

    assert await level(backends.pool, sku, loc) == (9, 1)  # one shipped, one still pending
    await assert_invariants(backends.pool)


# ---------------------------------------------------------------- delete


async def test_delete_restores_then_the_order_is_gone(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    assert (await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 3)))).is_success
    assert (await _pay(client, f"o{uid}")).json()["status"] == "paid"
    gone = await client.delete(f"/v1/orders/o{uid}")
    assert (gone.status_code, gone.content) == (204, b"")
    assert await level(backends.pool, sku, loc) == (5, 0)
    assert_problem(await client.delete(f"/v1/orders/o{uid}"), 404, "not_found")
    assert_problem(await client.get(f"/v1/orders/o{uid}"), 404, "not_found")
    assert_problem(await _pay(client, f"o{uid}"), 404, "not_found")
    assert_problem(await client.post(f"/v1/orders/o{uid}/cancel"), 404, "not_found")
    for status in ("processing", "shipped", "cancelled"):
        assert_problem(await _patch(client, f"o{uid}", status), 404, "not_found")
    assert_problem(await client.delete(f"/v1/orders/never{uid}"), 404, "not_found")
    listed = (await client.get("/v1/orders?status=cancelled&limit=500")).json()["items"]
    assert f"o{uid}" not in [o["id"] for o in listed]
    assert await level(backends.pool, sku, loc) == (5, 0)
    assert await ledger(backends.pool, sku, loc) == (5, 0)
    # The audit trail stays (invariant 9).
    assert await log_actions(backends.pool, f"o{uid}") == [
        "RESERVED",
        "COMMITTED",
        "RELEASED",
        "STOCK_RESTORED",
    ]
    logs = await client.get(f"/v1/admin/orders/o{uid}/inventory-logs")
    assert [i["action"] for i in logs.json()["items"]][-1] == "STOCK_RESTORED"


async def test_delete_of_a_cancelled_order_restores_nothing_more(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    assert (await client.post("/v1/orders", json=order_body(f"o{uid}", (sku, 3)))).is_success
    assert (await client.post(f"/v1/orders/o{uid}/cancel")).is_success
    assert (await client.delete(f"/v1/orders/o{uid}")).status_code == 204
    assert await level(backends.pool, sku, loc) == (5, 0)
    assert (await log_actions(backends.pool, f"o{uid}")).count("STOCK_RESTORED") == 1


async def test_shipped_and_delivered_orders_cannot_be_deleted(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    for oid, final in ((f"s{uid}", "shipped"), (f"d{uid}", "delivered")):
        assert (await client.post("/v1/orders", json=order_body(oid, (sku, 1)))).is_success
        await _pay(client, oid)
        for status in ("processing", "shipped", "delivered")[: 2 if final == "shipped" else 3]:
            assert (await _patch(client, oid, status)).status_code == 200
        assert_problem(await client.delete(f"/v1/orders/{oid}"), 409, "order_not_deletable")
        assert (await client.get(f"/v1/orders/{oid}")).json()["status"] == final
    assert await level(backends.pool, sku, loc) == (3, 0)


# ---------------------------------------------------------------- list


async def test_orders_list_filters_by_status_and_pages(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 20}})
    paid = [f"o{uid}-{i}" for i in range(5)]
    for oid in [*paid, f"x{uid}"]:
        assert (await client.post("/v1/orders", json=order_body(oid, (sku, 1)))).is_success
    for oid in paid:
        assert (await _pay(client, oid)).json()["status"] == "paid"

    async def walk(limit: int) -> list[dict[str, object]]:
        items: list[dict[str, object]] = []
        r = await client.get(f"/v1/orders?status=paid&limit={limit}")
        while True:
            assert r.status_code == 200, r.text
            page = r.json()
            items.extend(page["items"])
            if page["next"] is None:
                return items
            assert len(page["items"]) == limit
            r = await client.get(f"/v1/orders?status=paid&limit={limit}&after={page['next']}")

    everything = await walk(500)
    assert {o["status"] for o in everything} == {"paid"}
    ids = [str(o["id"]) for o in everything]
    assert len(ids) == len(set(ids))
    assert [i for i in ids if uid in i] == paid  # oldest first; the pending one is absent
    keys = [(_time(o["created_at"]), str(o["id"])) for o in everything]
    assert keys == sorted(keys)
    assert await walk(2) == everything
    first = (await client.get("/v1/orders?status=paid&limit=3")).json()
    second = (await client.get(f"/v1/orders?status=paid&limit=3&after={first['next']}")).json()
    assert first["items"] + second["items"] == everything[:6]


async def test_concurrent_buyers_for_the_last_units_over_http(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 3}})
    answers = await asyncio.gather(
        *(client.post("/v1/orders", json=order_body(f"o{uid}-{i}", (sku, 1))) for i in range(12))
    )
    assert sorted(r.status_code for r in answers) == [201] * 3 + [409] * 9
    for r in answers:
        if r.status_code == 409:
            body = assert_problem(r, 409, "out_of_stock")
            assert body["shortages"] == [{"sku": sku, "requested": 1, "available": 0}]
    assert await level(backends.pool, sku, loc) == (3, 3)
    assert await order_count(backends.pool, sku) == 3

    winners = [r.json()["id"] for r in answers if r.status_code == 201]
    cancels = await asyncio.gather(
        *(client.post(f"/v1/orders/{oid}/cancel") for oid in winners for _ in range(4))
    )
    assert {r.status_code for r in cancels} == {200}
    assert {r.json()["status"] for r in cancels} == {"cancelled"}
    assert await level(backends.pool, sku, loc) == (3, 0)
    assert await ledger(backends.pool, sku, loc) == (3, 0)
    for oid in winners:
        assert (await log_actions(backends.pool, oid)).count("STOCK_RESTORED") == 1
    await assert_cache_parity(backends, [sku])
