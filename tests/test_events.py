"""The transactional outbox (DESIGN.md §10, invariant 14; API.md "Outgoing events"): every
event type fires exactly when the contract says, in the change's own transaction, and
never for a refused or rolled-back operation; ``stock.changed`` is one event per SKU per
transaction; threshold events fire once per edge, also when two transactions race for
the last units at two locations."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from stockguard.domain.errors import InsufficientStock, OutOfStock, StockguardError
from stockguard.domain.model import OrderStatus
from stockguard.service import catalogue, orders, recovery, returns, transfers
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.transfers import CreateTransfer, Receipt
from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import expire_now, mark_paid, race

pytestmark = pytest.mark.usefixtures("backends")

ROUNDS = 20


async def events_of(pool: asyncpg.Pool, *keys: str) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of the events about these SKUs, orders or transfers, in write order."""
    rows = await pool.fetch(
        """
        SELECT type, data FROM events
        WHERE data->>'sku' = ANY($1) OR data->'order'->>'id' = ANY($1)
           OR data->>'order_id' = ANY($1) OR data->'transfer'->>'id' = ANY($1)
        ORDER BY id
        """,
        list(keys),
    )
    return [(r["type"], r["data"]) for r in rows]


async def types_of(pool: asyncpg.Pool, *keys: str) -> list[str]:
    return [t for t, _ in await events_of(pool, *keys)]


def adjust(sku: str, location: str, delta: int, reason: str = "received") -> catalogue.Adjustment:
    return catalogue.Adjustment(sku=sku, location=location, reason=reason, delta=delta)


async def test_placing_announces_the_order_and_its_stock(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"EV{uid}", f"w{uid}"
    await stock({sku: {loc: 2}})
    assert await types_of(backends.pool, sku) == ["stock.changed", "stock.back_in_stock"]
    placed = await orders.place_order(backends, PlaceOrder(f"O{uid}", ((sku, 2),)), "t")
    got = await events_of(backends.pool, sku, f"O{uid}")
    assert [t for t, _ in got[2:]] == ["order.placed", "stock.changed", "stock.out_of_stock"]
    order_event, changed, gone = (d for _, d in got[2:])
    assert order_event["order"]["id"] == placed.order.id
    assert order_event["order"]["status"] == "pending"
    assert [r["quantity"] for r in order_event["order"]["reservations"]] == [2]
    assert changed == {
        "sku": sku,
        "on_hand": 2,
        "reserved": 2,
        "unavailable": 0,
        "safety_stock": 0,
        "available": 0,
        "locations": {loc: 0},
    }
    assert gone == {"sku": sku, "available": 0}


async def test_a_refused_or_rolled_back_operation_writes_no_event(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"NE{uid}", f"w{uid}"
    await stock({sku: {loc: 1}})
    before = await events_of(backends.pool, sku)
    with pytest.raises(OutOfStock):
        await orders.place_order(backends, PlaceOrder(f"O{uid}", ((sku, 5),)), "t")
    with pytest.raises(InsufficientStock):
        await catalogue.adjust_stock(backends, adjust(sku, loc, -3, "shrinkage"), "t")

    async def fails_after_writing(uow: Any) -> None:
        await catalogue.apply_adjustment(uow, adjust(sku, loc, 4))
        uow.events.order(f"O{uid}", "order.placed")
        raise StockguardError("the use case fails after its writes")

    from stockguard.service.uow import run

    with pytest.raises(StockguardError):
        await run(backends, "t", fails_after_writing, operation="test")
    assert await events_of(backends.pool, sku, f"O{uid}") == before


async def test_a_batch_writes_one_stock_changed_per_sku(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, loc = f"BA{uid}", f"BB{uid}", f"w{uid}"
    await stock({a: {loc: 100}, b: {loc: 100}})
    requests = [PlaceOrder(f"O{uid}-{i}", ((a, 1), (b, 2))) for i in range(50)]
    requests.append(PlaceOrder(f"O{uid}-big", ((a, 1000),)))  # refused: no event
    results = await orders.place_orders(backends, requests, "t")
    assert sum(isinstance(r, OutOfStock) for r in results) == 1
    got = await events_of(backends.pool, a, b, *(r.id for r in requests))
    placed = [d["order"]["id"] for t, d in got if t == "order.placed"]
    assert placed == [r.id for r in requests[:50]]
    changed = [d for t, d in got if t == "stock.changed"][2:]  # after the two receipts
    assert [(d["sku"], d["available"]) for d in changed] == [(a, 50), (b, 0)]
    assert [t for t, d in got if t == "stock.out_of_stock"] == ["stock.out_of_stock"]
    # Nothing anywhere has two stock.changed of one SKU in one transaction.
    doubled = await backends.pool.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM events WHERE type = 'stock.changed' "
        "GROUP BY txid, data->>'sku' HAVING count(*) > 1) AS d"
    )
    assert doubled == 0


async def test_thresholds_fire_on_edges_only(backends: Backends, stock: Stocker, uid: str) -> None:
    sku, loc = f"TH{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    await catalogue.put_sku(backends, sku, sku, threshold=(5,))
    mark = len(await events_of(backends.pool, sku))
    for delta in (-4, -1, -1, 3, -2, -5, 7, 0):  # 6, 5, 4 (low), 7, 5, 0 (out), 7 (back)
        if delta:
            await catalogue.adjust_stock(backends, adjust(sku, loc, delta, "correction"), "t")
    got = (await events_of(backends.pool, sku))[mark:]
    edges = [(t, d.get("available")) for t, d in got if t != "stock.changed"]
    assert edges == [
        ("stock.low", 4),
        ("stock.out_of_stock", 0),
        ("stock.low", 0),
        ("stock.back_in_stock", 7),
    ]
    assert [d["threshold"] for t, d in got if t == "stock.low"] == [5, 5]
    # A threshold of null: no stock.low at all.
    await catalogue.put_sku(backends, sku, sku, threshold=(None,))
    await catalogue.adjust_stock(backends, adjust(sku, loc, -6, "correction"), "t")
    assert [t for t, _ in (await events_of(backends.pool, sku))[mark + len(got) :]] == [
        "stock.changed"
    ]


async def test_safety_stock_and_location_switches_move_availability(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, a, b = f"SS{uid}", f"a{uid}", f"b{uid}"
    await stock({sku: {a: 3, b: 2}})
    mark = len(await events_of(backends.pool, sku))
    await catalogue.set_safety_stock(backends, sku, a, 3, "t")
    await catalogue.put_location(backends, b, b, 100, False, "t")  # off: 0 left
    await catalogue.put_location(backends, b, b, 100, False, "t")  # again: no change
    await catalogue.put_location(backends, b, b, 100, True, "t")
    got = (await events_of(backends.pool, sku))[mark:]
    assert [(t, d["available"]) for t, d in got] == [
        ("stock.changed", 2),
        ("stock.changed", 0),
        ("stock.out_of_stock", 0),
        ("stock.changed", 2),
        ("stock.back_in_stock", 2),
    ]
    assert got[1][1]["locations"] == {a: 0}  # only active locations


async def test_the_order_lifecycle_is_announced(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"LC{uid}", f"w{uid}"
    await stock({sku: {loc: 20}})
    ids = [f"O{uid}-{n}" for n in range(6)]
    for oid in ids:
        await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),), total_amount=100), "t")
    proof = PaymentProof("stripe", f"pi_{uid}", 100)
    await orders.pay_order(backends, ids[0], proof, "t")
    await orders.pay_order(backends, ids[0], proof, "t")  # retry: nothing new
    await orders.set_status(backends, ids[0], OrderStatus.PROCESSING, "t")
    await orders.set_status(backends, ids[0], OrderStatus.SHIPPED, "t")
    await orders.set_status(backends, ids[0], OrderStatus.DELIVERED, "t")
    await returns.record_return(
        backends,
        returns.ReturnRequest(f"R{uid}", ids[0], (returns.ReturnLine(sku, 1, "restock"),)),
        "t",
    )
    await orders.cancel_order(backends, ids[1], "t", "customer")
    await orders.cancel_order(backends, ids[1], "t", "customer")  # again: nothing new
    await orders.delete_order(backends, ids[2], "t")
    await expire_now(backends, ids[3])
    # A second, different payment: an inconsistency, and needs_review.
    await orders.pay_order(backends, ids[4], PaymentProof("stripe", f"pi_{uid}-4", 100), "t")
    await orders.pay_order(backends, ids[4], PaymentProof("stripe", f"pi_{uid}-x", 100), "t")
    # A paid order whose stock was never committed (seed 003): recovery.
    await mark_paid(backends.pool, ids[5])
    await recovery.recover_order(backends, ids[5], "t")

    def order_types(got: list[tuple[str, dict[str, Any]]], oid: str) -> list[str]:
        return [
            t
            for t, d in got
            if t.startswith(("order.", "payment.")) and oid in (d.get("order_id"), _id(d))
        ]

    got = await events_of(backends.pool, *ids)
    assert order_types(got, ids[0]) == [
        "order.placed",
        "order.paid",
        "order.shipped",
        "order.delivered",
        "order.returned",
    ]
    assert order_types(got, ids[1]) == ["order.placed", "order.cancelled"]
    assert order_types(got, ids[2]) == ["order.placed", "order.cancelled", "order.deleted"]
    assert order_types(got, ids[3]) == ["order.placed", "order.expired"]
    assert order_types(got, ids[4]) == [
        "order.placed",
        "order.paid",
        "payment.inconsistency",
        "order.needs_review",
    ]
    assert order_types(got, ids[5]) == ["order.placed", "order.recovered"]
    by_type = {(t, _id(d) or d.get("order_id")): d for t, d in got}
    assert by_type[("order.cancelled", ids[1])]["reason"] == "customer"
    assert by_type[("order.cancelled", ids[2])]["reason"] == "deleted"
    assert by_type[("order.delivered", ids[0])]["order"]["status"] == "delivered"
    assert by_type[("order.returned", ids[0])]["order"]["returns"][0]["return_id"] == f"R{uid}"
    assert by_type[("payment.inconsistency", ids[4])] == {
        "order_id": ids[4],
        "reason": "SECOND_PAYMENT",
        "provider": "stripe",
        "payment_id": f"pi_{uid}-x",
    }
    assert by_type[("order.expired", ids[3])]["order"]["reservations"][0]["status"] == "expired"


def _id(data: dict[str, Any]) -> str | None:
    order = data.get("order")
    return order["id"] if isinstance(order, dict) else None


async def test_transfers_are_announced(backends: Backends, stock: Stocker, uid: str) -> None:
    sku, src, dst = f"TR{uid}", f"s{uid}", f"d{uid}"
    await stock({sku: {src: 5}}, locations={dst: 100})
    for n in (1, 2):
        tid = f"T{uid}-{n}"
        await transfers.create_transfer(backends, CreateTransfer(tid, src, dst, ((sku, 2),)), "t")
    await transfers.receive_transfer(backends, f"T{uid}-1", Receipt("r1", ((sku, 1),)), "t")
    await transfers.receive_transfer(backends, f"T{uid}-1", Receipt("r1", ((sku, 1),)), "t")
    await transfers.receive_transfer(backends, f"T{uid}-1", Receipt("r2", ((sku, 1),)), "t")
    await transfers.cancel_transfer(backends, f"T{uid}-2", "t")
    got = [(t, d) for t, d in await events_of(backends.pool, f"T{uid}-1", f"T{uid}-2")]
    assert [(t, d["transfer"]["id"], d["transfer"]["status"]) for t, d in got] == [
        ("transfer.shipped", f"T{uid}-1", "in_transit"),
        ("transfer.shipped", f"T{uid}-2", "in_transit"),
        ("transfer.received", f"T{uid}-1", "in_transit"),
        ("transfer.received", f"T{uid}-1", "received"),
        ("transfer.cancelled", f"T{uid}-2", "cancelled"),
    ]


async def test_the_last_units_at_two_locations_sell_out_once(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """Two transactions take the last unit at each of two locations at once: the SKU's
    total goes 2 → 1 → 0 in some order, and exactly one ``stock.out_of_stock`` fires
    (totals are read under the locks of all the SKU's levels)."""
    a, b = f"a{uid}", f"b{uid}"
    skus = [f"LU{uid}-{i}" for i in range(ROUNDS)]
    await stock({sku: {a: 1, b: 1} for sku in skus})
    for i, sku in enumerate(skus):
        results = await race(
            lambda sku=sku, i=i: orders.place_order(  # type: ignore[misc]
                backends, PlaceOrder(f"O{uid}-{i}-a", ((sku, 1),), preferred_locations=(a,)), "t"
            ),
            lambda sku=sku, i=i: orders.place_order(  # type: ignore[misc]
                backends, PlaceOrder(f"O{uid}-{i}-b", ((sku, 1),), preferred_locations=(b,)), "t"
            ),
        )
        assert not any(isinstance(r, BaseException) for r in results), results
        got = await types_of(backends.pool, sku)
        assert got.count("stock.out_of_stock") == 1, (i, got)
        assert got.count("stock.back_in_stock") == 1, (i, got)
        changed = [
            d["available"] for t, d in await events_of(backends.pool, sku) if t == "stock.changed"
        ]
        assert changed[-2:] == [1, 0], changed


async def test_the_feed_lists_events_in_seq_order(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku = f"FD{uid}"
    await stock({sku: {f"w{uid}": 3}})
    first = await client.get("/v1/events", params={"type": "stock.*", "limit": 500})
    assert first.status_code == 200, first.text
    body = first.json()
    seqs = [e["seq"] for e in body["items"]]
    assert seqs == sorted(seqs)
    assert all(e["type"].startswith("stock.") for e in body["items"])
    mine = [e for e in body["items"] if e["data"].get("sku") == sku]
    while body["next"] is not None:
        body = (await client.get("/v1/events", params={"after": body["next"], "limit": 500})).json()
        mine += [e for e in body["items"] if e["data"].get("sku") == sku]
    assert [e["type"] for e in mine] == ["stock.changed", "stock.back_in_stock"]
    event = mine[0]
    assert event["id"].startswith("evt_")
    assert event["occurred_at"].endswith("Z")
    last = mine[-1]["seq"]
    await catalogue.adjust_stock(backends, adjust(sku, f"w{uid}", 1), "t")
    after = (await client.get("/v1/events", params={"after": last, "type": "stock.changed"})).json()
    assert [e["data"]["available"] for e in after["items"] if e["data"]["sku"] == sku] == [4]
    assert all(e["seq"] > last for e in after["items"])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"type": "stock.nope"}, "unknown event types"),
        ({"type": "ping"}, "unknown event types"),
        ({"after": "-1"}, "after"),
        ({"limit": "501"}, "limit"),
        ({"limit": "0"}, "limit"),
    ],
)
async def test_the_feed_refuses_bad_input(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    answer = await client.get("/v1/events", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert field in answer.text


async def test_after_below_the_retention_horizon_is_gone(
    client: httpx.AsyncClient, backends: Backends
) -> None:
    row = await backends.pool.fetchrow("SELECT last_seq, pruned_through FROM event_counter")
    assert row is not None
    last, pruned = row["last_seq"], row["pruned_through"]
    if last == 0:
        await backends.pool.execute("UPDATE event_counter SET last_seq = 1")
    await backends.pool.execute(
        "UPDATE event_counter SET pruned_through = GREATEST(pruned_through, 1)"
    )
    try:
        gone = await client.get("/v1/events", params={"after": 0})
        assert gone.status_code == 410, gone.text
        assert gone.json()["code"] == "events_expired"
        assert (await client.get("/v1/events")).status_code == 200  # no after: from the oldest
    finally:
        await backends.pool.execute("UPDATE event_counter SET pruned_through = $1", pruned)


async def test_an_event_never_changes(backends: Backends, stock: Stocker, uid: str) -> None:
    sku = f"IM{uid}"
    await stock({sku: {f"w{uid}": 1}})
    await backends.pool.fetchval("SELECT stockguard_sequence_events(100000)")
    event_id = await backends.pool.fetchval(
        "SELECT id FROM events WHERE data->>'sku' = $1 AND seq IS NOT NULL LIMIT 1", sku
    )
    for change in ("data = '{}'", "seq = seq + 1000000", "type = 'stock.low'"):
        with pytest.raises(asyncpg.CheckViolationError):
            await backends.pool.execute(f"UPDATE events SET {change} WHERE id = $1", event_id)


async def test_verify_watches_the_feed(backends: Backends, stock: Stocker, uid: str) -> None:
    """``verify``: no seq beyond the sequencer's counter, and each SKU's last numbered
    ``stock.changed`` tells its level."""
    from stockguard.service.verify import verify

    sku = f"VF{uid}"
    await stock({sku: {f"w{uid}": 3}})
    await backends.pool.fetchval("SELECT stockguard_sequence_events(100000)")

    async def found() -> set[str]:
        async with backends.pool.acquire() as conn:
            return {v.check for v in await verify(conn) if v.invariant == 14}

    assert await found() == set()
    last = await backends.pool.fetchval("SELECT last_seq FROM event_counter")
    lie = {"sku": sku, "on_hand": 99, "reserved": 0, "unavailable": 0, "available": 99}
    planted = await backends.pool.fetchval(
        "INSERT INTO events (type, data, seq) VALUES ('stock.changed', $1, $2) RETURNING id",
        lie,
        last + 1_000_000,
    )
    try:
        assert await found() == {
            "events_numbered_by_the_sequencer",
            "stock_changed_tells_the_level",
        }
    finally:
        await backends.pool.execute("DELETE FROM events WHERE id = $1", planted)
    assert await found() == set()


async def test_the_events_and_the_cache_stamp_are_one_statement(
    migrated: str, backends: Backends, stock: Stocker, uid: str
) -> None:
    """A change's events and its cache stamp go to PostgreSQL together (one round trip
    fewer under the levels' locks), and Redis gets what that statement stamped."""
    from stockguard.store.db import connect_pool
    from tests.helpers import assert_cache_parity

    sku, oid = f"ST{uid}", f"st{uid}"
    await stock({sku: {f"w{uid}": 5}})
    sent: list[str] = []
    pool = await connect_pool(migrated, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda r: sent.append(r.query))
        own = Backends(pool, backends.cache, backends.cache_mode, backends.redis_timeout)
        await orders.place_order(own, PlaceOrder(oid, ((sku, 2),)), "t")
        await orders.cancel_order(own, oid, "t")
    finally:
        await pool.close()
    stamps = [q for q in sent if "cache_version_seq" in q]
    assert len(stamps) == 2, sent
    assert all("INSERT INTO events" in q for q in stamps)
    assert [t for t, _ in await events_of(backends.pool, oid)] == [
        "order.placed",
        "order.cancelled",
    ]
    await assert_cache_parity(backends, [sku])
    (avail,) = await catalogue.availability(backends, [sku])
    assert (avail.available, avail.source) == (5, "redis")


async def test_without_the_outbox_the_cache_is_still_stamped(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """``events=False`` (the benchmark's measure of the outbox's cost) writes no events
    and still keeps Redis equal to PostgreSQL."""
    from tests.helpers import assert_cache_parity

    sku, oid = f"NE{uid}", f"ne{uid}"
    await stock({sku: {f"w{uid}": 4}})
    off = Backends(backends.pool, backends.cache, backends.cache_mode, events=False)
    await orders.place_order(off, PlaceOrder(oid, ((sku, 3),)), "t")
    assert await events_of(backends.pool, oid) == []
    await assert_cache_parity(backends, [sku])
    (avail,) = await catalogue.availability(backends, [sku])
    assert (avail.available, avail.source) == (1, "redis")
    # verify checks that each SKU's last stock.changed tells its level: tell it again.
    await orders.cancel_order(backends, oid, "t")
