"""Races of returns and holds, each repeated with a barrier: a return id applied once, an
order's returns never beyond its fulfilled units, a return against cancel / delete /
PATCH, and an extension against the expiry worker (DESIGN.md §10, invariant 12)."""

from __future__ import annotations

from functools import partial

import httpx
import pytest

from stockguard.domain.errors import (
    InvalidTransition,
    OrderNotDeletable,
    ReservationExpired,
    ReturnExceedsFulfilled,
)
from stockguard.domain.model import OrderStatus
from stockguard.service import orders, returns
from stockguard.service.expiry import expire_order
from stockguard.service.orders import PlaceOrder
from stockguard.service.returns import Returned, ReturnLine, ReturnRequest
from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import assert_cache_parity, assert_invariants, level, make_overdue, race
from tests.test_returns import ship

pytestmark = pytest.mark.usefixtures("backends")

ROUNDS = 20


async def _unavailable(backends: Backends, sku: str, loc: str) -> int:
    got: int = await backends.pool.fetchval(
        "SELECT unavailable FROM inventory_levels WHERE sku = $1 AND location = $2", sku, loc
    )
    return got


async def test_two_identical_returns_at_once_are_applied_once(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"R{uid}", f"w{uid}"
    await stock({sku: {loc: ROUNDS}})
    await ship(client, f"o{uid}", (sku, ROUNDS))
    for i in range(ROUNDS):
        req = ReturnRequest(f"r{i}{uid}", f"o{uid}", (ReturnLine(sku, 1, "restock"),))
        results = await race(
            partial(returns.record_return, backends, req, "a"),
            partial(returns.record_return, backends, req, "b"),
        )
        assert all(isinstance(r, Returned) for r in results), results
        done = [r for r in results if isinstance(r, Returned)]
        assert sorted(r.created for r in done) == [False, True]
        assert done[0].ret.lines == done[1].ret.lines
        assert await level(backends.pool, sku, loc) == (i + 1, 0)
    assert (
        await backends.pool.fetchval(
            "SELECT count(*) FROM stock_movements WHERE sku = $1 AND reason = 'returned'", sku
        )
        == ROUNDS
    )
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_two_returns_that_together_exceed_fulfilled_never_return_more(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, other = f"R{uid}", f"w{uid}", f"x{uid}"
    await stock({sku: {loc: 2 * ROUNDS, other: 0}})
    damaged = 0
    for i in range(ROUNDS):
        oid = f"o{i}{uid}"
        await ship(client, oid, (sku, 2))
        before = (await level(backends.pool, sku, loc), await level(backends.pool, sku, other))
        first = ReturnRequest(f"a{i}{uid}", oid, (ReturnLine(sku, 2, "restock"),))
        second = ReturnRequest(f"b{i}{uid}", oid, (ReturnLine(sku, 1, "damaged"),), other)
        results = await race(
            partial(returns.record_return, backends, first, "a"),
            partial(returns.record_return, backends, second, "b"),
        )
        won = [r for r in results if isinstance(r, Returned)]
        lost = [r for r in results if isinstance(r, ReturnExceedsFulfilled)]
        assert (len(won), len(lost)) == (1, 1), results
        returned = await backends.pool.fetchval(
            "SELECT sum(quantity) FROM order_return_lines WHERE order_id = $1", oid
        )
        assert returned == won[0].ret.lines[0].quantity <= 2
        after = (await level(backends.pool, sku, loc), await level(backends.pool, sku, other))
        back = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
        assert back == returned
        damaged += won[0].ret.lines[0].disposition == "damaged"
        assert await _unavailable(backends, sku, other) == damaged
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_a_return_racing_cancel_delete_and_patch_is_applied_once_and_restocks_once(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"R{uid}", f"w{uid}"
    await stock({sku: {loc: 2 * ROUNDS}})
    for i in range(ROUNDS):
        oid = f"o{i}{uid}"
        await ship(client, oid, (sku, 2))
        on_hand = (await level(backends.pool, sku, loc))[0]
        req = ReturnRequest(f"r{i}{uid}", oid, (ReturnLine(sku, 2, "restock"),))
        results = await race(
            partial(returns.record_return, backends, req, "a"),
            partial(orders.cancel_order, backends, oid, "b"),
            partial(orders.delete_order, backends, oid, "c"),
            partial(orders.set_status, backends, oid, OrderStatus.DELIVERED, "d"),
        )
        assert isinstance(results[0], Returned), results
        assert results[0].created
        assert isinstance(results[1], InvalidTransition), results
        assert isinstance(results[2], OrderNotDeletable), results
        assert not isinstance(results[3], BaseException), results
        assert await level(backends.pool, sku, loc) == (on_hand + 2, 0)
        order = await orders.get_order(backends, oid)
        assert order.status == OrderStatus.DELIVERED
        assert order.deleted_at is None
        assert [r.return_id for r in order.returns] == [req.return_id]
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_extend_racing_the_expiry_never_leaves_a_reservation_both(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"E{uid}", f"w{uid}"
    await stock({sku: {loc: 1}})
    outcomes: set[str] = set()
    for i in range(ROUNDS):
        oid = f"o{i}{uid}"
        await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
        await make_overdue(backends.pool, oid)
        extended, expired = await race(
            partial(returns.extend_hold, backends, oid, 3600, "a"),
            partial(expire_order, backends, oid),
        )
        (res,) = (await orders.get_order(backends, oid)).reservations
        now = await backends.pool.fetchval("SELECT now()")
        if isinstance(extended, ReservationExpired):
            # The expiry committed first: expired, units given back, not extended.
            assert expired == 1
            assert res.status.value == "expired"
            assert res.expires_at <= now
            assert await level(backends.pool, sku, loc) == (1, 0)
            outcomes.add("expired")
        else:
            # The extension committed first (or the expiry skipped the locked order):
            # held, extended, and the expiry took nothing.
            assert not isinstance(extended, BaseException), extended
            assert expired == 0
            assert res.status.value == "reserved"
            assert res.expires_at > now
            assert await level(backends.pool, sku, loc) == (1, 1)
            # ... and a later expiry run still takes nothing: the extension holds.
            assert await expire_order(backends, oid) == 0
            assert await level(backends.pool, sku, loc) == (1, 1)
            outcomes.add("extended")
            await orders.cancel_order(backends, oid, "t")  # free the unit for the next round
        await assert_invariants(backends.pool)
    assert outcomes  # which one wins is the scheduler's choice; both are correct
    await assert_cache_parity(backends, [sku])


async def test_an_extension_that_commits_first_prevents_the_expiry(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"E{uid}", f"w{uid}"
    await stock({sku: {loc: 1}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 1),)), "t")
    await make_overdue(backends.pool, f"o{uid}")
    extended = await returns.extend_hold(backends, f"o{uid}", 60, "t")
    assert [r.status.value for r in extended.reservations] == ["reserved"]
    assert await expire_order(backends, f"o{uid}") == 0
    (res,) = (await orders.get_order(backends, f"o{uid}")).reservations
    assert res.status.value == "reserved"
    assert res.expires_at == extended.reservations[0].expires_at
    assert await level(backends.pool, sku, loc) == (1, 1)
    # The other order: the expiry first, then the extension is refused and changes nothing.
    await orders.cancel_order(backends, f"o{uid}", "t")
    await orders.place_order(backends, PlaceOrder(f"p{uid}", ((sku, 1),)), "t")
    await make_overdue(backends.pool, f"p{uid}")
    assert await expire_order(backends, f"p{uid}") == 1
    before = await orders.get_order(backends, f"p{uid}")
    with pytest.raises(ReservationExpired):
        await returns.extend_hold(backends, f"p{uid}", 60, "t")
    assert await orders.get_order(backends, f"p{uid}") == before
    await assert_invariants(backends.pool)
