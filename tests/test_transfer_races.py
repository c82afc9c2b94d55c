"""Transfers under races (barrier, real concurrent connections, 20 rounds each): the
transfer's row and then its SKUs' levels are locked before anything is decided, so units
are never over-received, never oversold and, per SKU, on hand + in transit is conserved
(DESIGN.md §10, invariant 13)."""

from __future__ import annotations

from functools import partial

import pytest

from stockguard.domain.errors import (
    InsufficientStock,
    InvalidTransition,
    OutOfStock,
    ReceiptExceedsInTransit,
)
from stockguard.service import orders, transfers
from stockguard.service.orders import PlaceOrder
from stockguard.service.transfers import CreateTransfer, Receipt, TransferStatus
from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import assert_cache_parity, assert_invariants, race

ROUNDS = 20

pytestmark = pytest.mark.usefixtures("backends")


async def conserved(backends: Backends, sku: str) -> int:
    """Σ on_hand over every location + Σ units in transit."""
    value = await backends.pool.fetchval(
        "SELECT coalesce((SELECT sum(on_hand) FROM inventory_levels WHERE sku = $1), 0) + "
        "coalesce((SELECT sum(in_transit) FROM transfer_lines WHERE sku = $1), 0)",
        sku,
    )
    return int(value)


async def line(backends: Backends, transfer_id: str, sku: str) -> tuple[int, int, int]:
    row = await backends.pool.fetchrow(
        "SELECT received, cancelled, in_transit FROM transfer_lines "
        "WHERE transfer_id = $1 AND sku = $2",
        transfer_id,
        sku,
    )
    assert row is not None
    return row["received"], row["cancelled"], row["in_transit"]


async def test_two_receipts_of_the_last_units_apply_one(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    src, dst = f"src{uid}", f"dst{uid}"
    skus = [f"RR{uid}-{i}" for i in range(ROUNDS)]
    await stock({sku: {src: 5} for sku in skus}, locations={dst: 100})
    for i, sku in enumerate(skus):
        tid = f"T{uid}-{i}"
        await transfers.create_transfer(backends, CreateTransfer(tid, src, dst, ((sku, 5),)), "t")
        await transfers.receive_transfer(backends, tid, Receipt("first", ((sku, 2),)), "t")
        results = await race(
            partial(transfers.receive_transfer, backends, tid, Receipt("a", ((sku, 3),)), "t"),
            partial(transfers.receive_transfer, backends, tid, Receipt("b", ((sku, 3),)), "t"),
        )
        won = [r for r in results if isinstance(r, transfers.Written)]
        lost = [r for r in results if isinstance(r, ReceiptExceedsInTransit)]
        assert (len(won), len(lost)) == (1, 1), results
        assert won[0].transfer.status is TransferStatus.RECEIVED
        assert await line(backends, tid, sku) == (5, 0, 0)
        assert await conserved(backends, sku) == 5
        receipts = await backends.pool.fetchval(
            "SELECT count(*) FROM transfer_receipts WHERE transfer_id = $1", tid
        )
        assert receipts == 2
    await assert_cache_parity(backends, skus)
    await assert_invariants(backends.pool)


async def test_a_transfer_racing_an_order_for_the_same_units_never_oversells(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    src, dst = f"src{uid}", f"dst{uid}"
    skus = [f"RO{uid}-{i}" for i in range(ROUNDS)]
    await stock({sku: {src: 5} for sku in skus}, locations={src: 1, dst: 100})
    for i, sku in enumerate(skus):
        # Each wants 4 of the 5 units at src: exactly one of them can have them.
        results = await race(
            partial(
                transfers.create_transfer,
                backends,
                CreateTransfer(f"T{uid}-{i}", src, dst, ((sku, 4),)),
                "t",
            ),
            partial(
                orders.place_order,
                backends,
                PlaceOrder(id=f"O{uid}-{i}", lines=((sku, 4),), allow_split=False),
                "t",
            ),
        )
        kinds = sorted(type(r).__name__ for r in results)
        assert kinds in (["InsufficientStock", "Placed"], ["OutOfStock", "Written"]), results
        level = await backends.pool.fetchrow(
            "SELECT on_hand, reserved, unavailable FROM inventory_levels "
            "WHERE sku = $1 AND location = $2",
            sku,
            src,
        )
        assert level is not None
        assert level["on_hand"] >= level["reserved"] + level["unavailable"]
        if any(isinstance(r, OutOfStock) for r in results):
            assert tuple(level.values()) == (1, 0, 0)
        else:
            assert any(isinstance(r, InsufficientStock) for r in results)
            assert tuple(level.values()) == (5, 4, 0)
        assert await conserved(backends, sku) == 5
    await assert_cache_parity(backends, skus)
    await assert_invariants(backends.pool)


async def test_a_receipt_racing_a_cancel_conserves_units(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    src, dst = f"src{uid}", f"dst{uid}"
    skus = [f"RC{uid}-{i}" for i in range(ROUNDS)]
    await stock({sku: {src: 6} for sku in skus}, locations={dst: 100})
    outcomes: set[str] = set()
    for i, sku in enumerate(skus):
        tid = f"T{uid}-{i}"
        await transfers.create_transfer(backends, CreateTransfer(tid, src, dst, ((sku, 6),)), "t")
        # Half of it arrives while the rest is being cancelled.
        receipt, cancelled = await race(
            partial(transfers.receive_transfer, backends, tid, Receipt("r", ((sku, 3),)), "t"),
            partial(transfers.cancel_transfer, backends, tid, "t"),
        )
        assert isinstance(cancelled, transfers.TransferRecord), cancelled
        assert cancelled.status is TransferStatus.CANCELLED
        src_on_hand = await backends.pool.fetchval(
            "SELECT on_hand FROM inventory_levels WHERE sku = $1 AND location = $2", sku, src
        )
        if isinstance(receipt, transfers.Written):
            outcomes.add("received first")
            assert await line(backends, tid, sku) == (3, 3, 0)
            assert src_on_hand == 3
        else:
            outcomes.add("cancelled first")
            assert isinstance(receipt, InvalidTransition), receipt
            assert await line(backends, tid, sku) == (0, 6, 0)
            assert src_on_hand == 6
        assert await conserved(backends, sku) == 6
    assert outcomes  # either order is correct; each is checked above
    await assert_cache_parity(backends, skus)
    await assert_invariants(backends.pool)


async def test_the_same_receipt_sent_twice_at_once_is_applied_once(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    src, dst = f"src{uid}", f"dst{uid}"
    skus = [f"RS{uid}-{i}" for i in range(ROUNDS)]
    await stock({sku: {src: 4} for sku in skus}, locations={dst: 100})
    for i, sku in enumerate(skus):
        tid = f"T{uid}-{i}"
        await transfers.create_transfer(backends, CreateTransfer(tid, src, dst, ((sku, 4),)), "t")
        results = await race(
            *(
                partial(
                    transfers.receive_transfer, backends, tid, Receipt("same", ((sku, 3),)), "t"
                )
                for _ in range(3)
            )
        )
        assert all(isinstance(r, transfers.Written) for r in results), results
        assert sorted(r.created for r in results if isinstance(r, transfers.Written)) == [
            False, False, True
        ]  # fmt: skip
        assert await line(backends, tid, sku) == (3, 0, 1)
        on_dst = await backends.pool.fetchval(
            "SELECT on_hand FROM inventory_levels WHERE sku = $1 AND location = $2", sku, dst
        )
        assert on_dst == 3
        assert await conserved(backends, sku) == 4
    await assert_cache_parity(backends, skus)
    await assert_invariants(backends.pool)


async def test_the_same_transfer_created_twice_at_once_moves_units_once(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    src, dst = f"src{uid}", f"dst{uid}"
    skus = [f"RT{uid}-{i}" for i in range(ROUNDS)]
    await stock({sku: {src: 9} for sku in skus}, locations={dst: 100})
    for i, sku in enumerate(skus):
        req = CreateTransfer(f"T{uid}-{i}", src, dst, ((sku, 4),))
        results = await race(
            partial(transfers.create_transfer, backends, req, "t"),
            partial(transfers.create_transfer, backends, req, "t"),
        )
        assert sorted(r.created for r in results if isinstance(r, transfers.Written)) == [
            False, True
        ], results  # fmt: skip
        on_src = await backends.pool.fetchval(
            "SELECT on_hand FROM inventory_levels WHERE sku = $1 AND location = $2", sku, src
        )
        assert on_src == 5
        assert await conserved(backends, sku) == 9
    await assert_cache_parity(backends, skus)
    await assert_invariants(backends.pool)
