"""The feed's ``seq`` is commit order (DESIGN.md §10, invariant 14): transactions that
wrote their events in one order commit in another, under a barrier, while readers poll
the feed (each poll running the sequencer, as ``GET /v1/events`` does) — and no reader
ever misses an event. The same run shows that the hazard is real: a reader of the insert
position (``id > after``, numbers taken at insert time) misses the late commits."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from functools import partial

import asyncpg
import pytest

from stockguard.service import catalogue, orders
from stockguard.service.orders import PlaceOrder
from stockguard.service.uow import Backends
from stockguard.store.events import read_feed, sequence_events
from tests.conftest import Stocker
from tests.helpers import race

ROUNDS = 20
WRITERS = 8


async def _round(pool: asyncpg.Pool, tag: str, rng: random.Random) -> tuple[int, int]:
    """One round; returns (events the feed reader saw, events the naive reader saw)."""
    turn = [asyncio.Event() for _ in range(WRITERS)]
    inserted = asyncio.Barrier(WRITERS + 1)
    committed = asyncio.Event()
    order = list(range(WRITERS))
    while order == sorted(order):
        rng.shuffle(order)

    async def writer(i: int) -> None:
        async with pool.acquire() as conn:
            tr = conn.transaction()
            await tr.start()
            # Writers insert one after another (i-th waits for the i-1-th), so the ids
            # follow i; they commit in the shuffled order.
            if i:
                await inserted_in_order[i - 1].wait()
            await conn.execute(
                "INSERT INTO events (type, data) VALUES ('stock.changed', $1)",
                {"sku": f"{tag}-{i}"},
            )
            inserted_in_order[i].set()
            await inserted.wait()
            await turn[i].wait()
            await tr.commit()

    inserted_in_order = [asyncio.Event() for _ in range(WRITERS)]
    start_seq = int(await pool.fetchval("SELECT last_seq FROM event_counter"))
    start_id = int(await pool.fetchval("SELECT coalesce(max(id), 0) FROM events"))
    seen: list[int] = []
    naive_seen: list[str] = []

    async def reader() -> None:
        last = start_seq
        while True:
            done = committed.is_set()
            await sequence_events(pool)
            for e in await read_feed(pool, last, 500):
                assert e.seq > last
                last = e.seq
                if str(e.data.get("sku", "")).startswith(tag):
                    seen.append(e.seq)
            if done:
                return
            await asyncio.sleep(0)

    async def naive_reader() -> None:
        last_id = start_id
        while True:
            done = committed.is_set()
            for r in await pool.fetch(
                "SELECT id, data FROM events WHERE id > $1 ORDER BY id", last_id
            ):
                last_id = r["id"]
                if str(r["data"].get("sku", "")).startswith(tag):
                    naive_seen.append(r["data"]["sku"])
            if done:
                return
            await asyncio.sleep(0)

    writers = [asyncio.create_task(writer(i)) for i in range(WRITERS)]
    await inserted.wait()
    readers = [asyncio.create_task(reader()), asyncio.create_task(naive_reader())]
    for i in order:
        turn[i].set()
        await writers[i]
        await asyncio.sleep(0.002)  # let the readers poll between commits
    committed.set()
    await asyncio.gather(*readers)
    assert seen == sorted(seen), seen
    assert len(set(seen)) == len(seen)
    return len(seen), len(naive_seen)


@pytest.mark.usefixtures("backends")
async def test_no_reader_misses_an_event_that_commits_late(backends: Backends, uid: str) -> None:
    rng = random.Random(uid)
    naive_missed = 0
    for n in range(ROUNDS):
        seen, naive = await _round(backends.pool, f"OO{uid}-{n}-", rng)
        assert seen == WRITERS, f"round {n}: the feed reader saw {seen} of {WRITERS}"
        naive_missed += WRITERS - naive
    # The hazard the design avoids: numbers taken at insert time skip late commits.
    assert naive_missed > 0


Chain = list[tuple[int, int]]


async def _chains(pool: asyncpg.Pool, sku: str) -> tuple[Chain, Chain]:
    """(on_hand, reserved) after each transaction that changed the SKU: as its
    ``stock.changed`` events say in seq order, and as the ledger says (rows grouped by
    transaction, in the order the transactions wrote them under the SKU's locks)."""
    await pool.fetchval("SELECT stockguard_sequence_events(1000000)")
    told = [
        (r["data"]["on_hand"], r["data"]["reserved"])
        for r in await pool.fetch(
            "SELECT data FROM events WHERE type = 'stock.changed' AND data->>'sku' = $1 "
            "ORDER BY seq",
            sku,
        )
    ]
    groups = await pool.fetch(
        """
        SELECT sum(on_hand_delta) AS on_hand, sum(reserved_delta) AS reserved
        FROM stock_movements WHERE sku = $1
        GROUP BY xmin::text ORDER BY min(id)
        """,
        sku,
    )
    ledger: Chain = []
    on_hand = reserved = 0
    for g in groups:
        on_hand, reserved = on_hand + g["on_hand"], reserved + g["reserved"]
        ledger.append((on_hand, reserved))
    return told, ledger


@pytest.mark.usefixtures("backends")
async def test_one_skus_events_are_in_its_commit_order(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """Cancels (which lock their order, and so take a transaction id, before queueing for
    the SKU) race placements and receipts of one hot SKU: its ``stock.changed`` events in
    seq order tell the same history as its ledger, the last one what the level holds."""
    sku, loc = f"CO{uid}", f"w{uid}"
    await stock({sku: {loc: 1000}})
    for r in range(ROUNDS):
        held = [f"O{uid}-{r}-{i}" for i in range(4)]
        for oid in held:
            await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
        contenders: list[Callable[[], Awaitable[object]]] = [
            *(partial(orders.cancel_order, backends, oid, "t") for oid in held),
            *(
                partial(
                    orders.place_order, backends, PlaceOrder(f"N{uid}-{r}-{i}", ((sku, 2),)), "t"
                )
                for i in range(3)
            ),
            partial(
                catalogue.adjust_stock,
                backends,
                catalogue.Adjustment(sku, loc, "received", delta=1),
                "t",
            ),
        ]
        results = await race(*contenders)
        assert not [x for x in results if isinstance(x, BaseException)]
    told, ledger = await _chains(backends.pool, sku)
    assert told == ledger
    level = await backends.pool.fetchrow(
        "SELECT on_hand, reserved FROM inventory_levels WHERE sku = $1", sku
    )
    assert level is not None
    assert told[-1] == (level["on_hand"], level["reserved"])
