"""Two batches of a lane in flight (service/group_commit.py): the next batch starts only
once the one ahead holds its levels' locks, so it queues behind them in PostgreSQL and is
never decided first; never a third batch before the first has ended; a request sharing an
identity or key with the batch in flight waits for the batch after it.

A toy use case makes each step visible: its decision locks the levels of one SKU, then
waits for the test to let it finish."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from stockguard.service.group_commit import GroupCommit
from stockguard.service.uow import Backends, UnitOfWork
from tests.conftest import Stocker

pytestmark = pytest.mark.race


class Toy(GroupCommit[str, str]):
    """Requests are ``identity:n``; a batch locks ``sku``'s levels, then waits for its gate."""

    operation = "toy"

    def __init__(self, backends: Backends, sku: str) -> None:
        super().__init__(lambda: backends, max_batch=10, lanes=1)
        self.sku = sku
        self.started: list[list[str]] = []
        self.locked: list[list[str]] = []
        self.gates: list[asyncio.Event] = []
        self.changed = asyncio.Condition()

    async def _note(self, where: list[list[str]], requests: list[str]) -> None:
        async with self.changed:
            where.append(requests)
            self.changed.notify_all()

    async def decide(self, uow: UnitOfWork, requests: list[str]) -> list[str]:
        gate = asyncio.Event()
        self.gates.append(gate)
        await self._note(self.started, requests)
        await uow.levels.lock([self.sku])
        await self._note(self.locked, requests)
        await gate.wait()
        return [f"done {r}" for r in requests]

    async def alone(self, backends: Backends, request: str, actor: str) -> str:
        raise AssertionError("no batch fails here")

    def lane_of(self, request: str, lanes: int) -> int:
        return 0

    def identity(self, request: str) -> str:
        return request.split(":")[0]

    def contends(self, request: str, ahead: list[str]) -> bool:
        return not request.startswith("free")  # "free:n" locks nothing of the others'

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(10), self.changed:
            await self.changed.wait_for(check)


@pytest.fixture
async def toy(backends: Backends, stock: Stocker, uid: str) -> Toy:
    """A toy use case over a SKU of its own."""
    sku = f"GC{uid}"
    await stock({sku: {f"w{uid}": 1}})
    return Toy(backends, sku)


async def _waiting_on_a_lock(backends: Backends) -> None:
    """Until some backend of this database waits for a row lock."""
    async with asyncio.timeout(10):
        while True:  # no event to wait for: PostgreSQL's own state, polled
            waiting = await backends.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
            if waiting:
                return
            await asyncio.sleep(0.01)


async def test_the_next_batch_starts_once_the_one_ahead_holds_its_locks(
    toy: Toy, backends: Backends
) -> None:
    submitted: list[asyncio.Task[str]] = []

    def submit(request: str) -> None:
        submitted.append(asyncio.create_task(toy.submit(request, "t")))

    submit("a:1")
    await toy.until(lambda: len(toy.locked) == 1)
    # Batch 1 holds the locks: the next batch starts and queues behind them in
    # PostgreSQL; "a:2" shares an identity with batch 1 and waits for a later batch.
    submit("b:1")
    submit("a:2")
    submit("c:1")
    await toy.until(lambda: len(toy.started) == 2)
    assert toy.started[1] == ["b:1", "c:1"]
    await _waiting_on_a_lock(backends)
    assert len(toy.locked) == 1  # batch 2 cannot lock before batch 1 ends
    submit("d:1")
    await asyncio.sleep(0)  # nothing more may start: batch 2 holds nothing yet
    assert len(toy.started) == 2

    toy.gates[0].set()  # batch 1 commits: batch 2 locks, then batch 3 starts
    assert await submitted[0] == "done a:1"
    await toy.until(lambda: len(toy.started) == 3)
    assert toy.locked[1] == ["b:1", "c:1"]
    assert toy.started[2] == ["a:2", "d:1"]  # in arrival order, "a" no longer in flight
    await _waiting_on_a_lock(backends)
    assert len(toy.locked) == 2

    toy.gates[1].set()
    await toy.until(lambda: len(toy.locked) == 3)
    toy.gates[2].set()
    answers = await asyncio.gather(*submitted)
    assert answers == ["done a:1", "done b:1", "done a:2", "done c:1", "done d:1"]
    await toy.drain()
    assert toy.batches == 3


async def test_a_batch_that_locks_nothing_lets_the_next_start_when_it_ends(toy: Toy) -> None:
    running, release = asyncio.Event(), asyncio.Event()
    plain = toy.decide

    async def decide(uow: UnitOfWork, requests: list[str]) -> list[str]:
        if requests == ["x:1"]:  # refuses everything before any lock
            running.set()
            await release.wait()
            return ["refused x:1"]
        return await plain(uow, requests)

    toy.decide = decide  # type: ignore[method-assign]
    first = asyncio.create_task(toy.submit("x:1", "t"))
    await running.wait()
    second = asyncio.create_task(toy.submit("y:1", "t"))
    # y waits in the queue while x's batch runs; a lane that started it now would have
    # started it within these 50 ms.
    await asyncio.sleep(0.05)
    assert toy.started == []  # batch 1 holds no lock and has not ended
    release.set()
    assert await first == "refused x:1"
    await toy.until(lambda: len(toy.locked) == 1)
    toy.gates[0].set()
    assert await second == "done y:1"


async def test_a_request_that_contends_with_nothing_ahead_waits_for_the_batch_to_end(
    toy: Toy,
) -> None:
    first = asyncio.create_task(toy.submit("a:1", "t"))
    await toy.until(lambda: len(toy.locked) == 1)
    second = asyncio.create_task(toy.submit("free:1", "t"))
    await asyncio.sleep(0.05)  # a lane that started it early would have by now
    assert len(toy.started) == 1
    toy.gates[0].set()
    assert await first == "done a:1"
    await toy.until(lambda: len(toy.locked) == 2)
    toy.gates[1].set()
    assert await second == "done free:1"
    assert toy.started == [["a:1"], ["free:1"]]
