"""Group commit (DESIGN.md §10 "Group commit on the HTTP path"): the machinery shared by
the placement and cancel batchers.

Requests are gathered while the previous batch of their lane is in its transaction and
decided together in one transaction (one :func:`stockguard.service.uow.run`), in arrival
order, each caller getting its own outcome. There is no fixed wait: an idle lane starts a
batch at once, so a lone request goes alone. Requests are spread over lanes by a key of
the request, so batches run side by side (whatever they share, the locks serialise).

``Idempotency-Key`` claims (:mod:`stockguard.service.idempotency`) of every request in a
batch are taken first and their answers stored last, in the batch's own transaction, so a
crash leaves either the effect with its answer or neither (invariant 15). A key another
transaction took first answers its caller with that transaction's answer. Two requests
with the same identity (an order id) or the same key never share a batch: the later one
waits for the next, where it finds the first one's result. When a batch fails for a reason
that is not every request's (anything but a lost connection or an unavailable cache), each
of its requests is run again alone, so one request cannot take the others down.
"""

from __future__ import annotations

import asyncio
import contextvars
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from stockguard.domain.errors import CacheUnavailable
from stockguard.logging import get_logger
from stockguard.service.idempotency import (
    Answer,
    Claim,
    KeyAnswered,
    claim_keys,
    current_claim,
    store_answers,
)
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.db import CONNECTION_LOST, LostBeforeCommit

__all__ = ["GroupCommit"]

log = get_logger(__name__)

R = TypeVar("R")  # a request
Out = TypeVar("Out")  # its outcome: what it did, or a StockguardError saying why not

# Failures that are every request's, not one request's: running each alone cannot help.
_SHARED_FAILURES: Final = (CacheUnavailable, LostBeforeCommit, *CONNECTION_LOST)


class _RunAlone:
    """The batch failed for a reason that may be one request's: run this one alone."""


_ALONE: Final = _RunAlone()


@dataclass
class _Pending(Generic[R, Out]):
    request: R
    actor: str
    claim: Claim | None
    future: asyncio.Future[Out | _RunAlone]


@dataclass
class _Decided(Generic[Out]):
    outcomes: list[Out | None]  # None: the key was answered by another transaction
    answers: list[Answer | None]


@dataclass
class _InFlight(Generic[R, Out]):
    """A batch being decided; ``holding`` is set once it holds its levels' locks (or has
    ended without taking any)."""

    batch: list[_Pending[R, Out]]
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] = field(init=False)

    async def settled(self) -> None:
        """Until the batch holds its locks or has ended (its failure is raised later, by
        whoever awaits the task)."""
        waiting = asyncio.ensure_future(self.holding.wait())
        try:
            await asyncio.wait((waiting, self.task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()

    def requests(self) -> list[R]:
        return [p.request for p in self.batch]

    def identities(self, identity: Callable[[R], str]) -> set[str]:
        return {identity(p.request) for p in self.batch}

    def keys(self) -> set[tuple[str, str]]:
        return {(p.claim.owner, p.claim.key) for p in self.batch if p.claim is not None}


@dataclass
class _Lane(Generic[R, Out]):
    queue: deque[_Pending[R, Out]] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class GroupCommit(ABC, Generic[R, Out]):
    """Batches of one use case. A subclass says how a batch is decided in one
    transaction (:meth:`decide`), how one request runs alone (:meth:`alone`), which lane
    a request takes and what identifies it; callers use :meth:`submit`."""

    operation: str  # the transaction's name in the metrics

    def __init__(
        self, backends: Callable[[], Backends], *, max_batch: int = 200, lanes: int = 4
    ) -> None:
        if max_batch < 1 or lanes < 1:
            raise ValueError("max_batch and lanes must be at least 1")
        self._backends = backends
        self.max_batch = max_batch
        self._lanes: list[_Lane[R, Out]] = [_Lane() for _ in range(lanes)]
        # Batches committed, requests decided in them and the largest (tests, the benchmark).
        self.batches = 0
        self.decided = 0
        self.largest = 0

    # ------------------------------------------------------------------ the use case's part

    @abstractmethod
    async def decide(self, uow: UnitOfWork, requests: list[R]) -> list[Out]:
        """Decide these requests in the batch's transaction, in order, each on its own."""

    @abstractmethod
    async def alone(self, backends: Backends, request: R, actor: str) -> Out:
        """Run one request in a transaction of its own (after its batch failed)."""

    @abstractmethod
    def lane_of(self, request: R, lanes: int) -> int:
        """The lane (0 <= lane < lanes) this request queues in."""

    @abstractmethod
    def identity(self, request: R) -> str:
        """Requests with the same identity never share a batch."""

    def contends(self, request: R, ahead: list[R]) -> bool:
        """Whether ``request`` would wait for locks the requests ``ahead`` take (then its
        batch may start while theirs holds them); by default it would not."""
        return False

    def decided_batch(self, outcomes: list[Out | None]) -> None:
        """Called with a committed batch's outcomes (the placements learn from them)."""

    async def failed(self, request: R, actor: str, exc: Exception) -> None:
        """Called before ``exc`` is raised to the caller of ``request`` whose batch failed
        (alone, or for a reason every request shares): the use case's failsafe, if any."""

    # ------------------------------------------------------------------ the interface

    async def submit(self, request: R, actor: str) -> Out:
        """Decide ``request`` in a batch. When it carries an ``Idempotency-Key`` (the
        current claim, with a renderer that takes an outcome), its answer is stored in
        the batch's transaction and left in ``claim.answer``. Raises ``KeyAnswered`` when
        another request with the key committed first."""
        claim = current_claim()
        if claim is not None and (claim.render is None or claim.done):
            claim = None
        future: asyncio.Future[Out | _RunAlone] = asyncio.get_running_loop().create_future()
        lane = self._lanes[self.lane_of(request, len(self._lanes))]
        lane.queue.append(_Pending(request, actor, claim, future))
        if lane.task is None:
            # A context of its own: the batch must not run inside one caller's context.
            lane.task = asyncio.create_task(self._drain(lane), context=contextvars.Context())
        try:
            outcome = await future
        except KeyAnswered:
            raise
        except Exception as exc:
            await self.failed(request, actor, exc)
            raise
        if isinstance(outcome, _RunAlone):
            return await self.alone(self._backends(), request, actor)
        return outcome

    async def drain(self) -> None:
        """Wait until every lane is idle (shutdown, tests)."""
        while running := [lane.task for lane in self._lanes if lane.task is not None]:
            await asyncio.gather(*running, return_exceptions=True)

    # ------------------------------------------------------------------ batches

    async def _drain(self, lane: _Lane[R, Out]) -> None:
        """Batches of the lane. When the request at the head of the queue would wait for
        the batch ahead's locks anyway (:meth:`contends`: a hot SKU), the next batch starts
        once the batch ahead holds them: it queues behind them in PostgreSQL, so it is
        never decided first, and its work before the lock and the one ahead's commit
        overlap. Otherwise the next batch waits for the one ahead to end, and batches stay
        large on a busy machine. Two in flight at most; the second shares no order or key
        with the first."""
        ahead: _InFlight[R, Out] | None = None
        try:
            while lane.queue or ahead is not None:
                if ahead is not None and not (
                    lane.queue and self.contends(lane.queue[0].request, ahead.requests())
                ):
                    await ahead.task
                    ahead = None
                    continue
                batch = self._take(lane.queue, ahead)
                if not batch:  # all of it waits for the batch ahead (an order or key)
                    assert ahead is not None
                    await ahead.task
                    ahead = None
                    continue
                current = _InFlight(batch)
                current.task = asyncio.create_task(self._decide(current))
                await current.settled()
                if ahead is not None:
                    await ahead.task
                ahead = current
        finally:
            lane.task = None

    async def _decide(self, flight: _InFlight[R, Out]) -> None:
        try:
            await self._decide_batch(flight.batch, flight.holding)
        finally:
            flight.holding.set()

    async def _decide_batch(self, batch: list[_Pending[R, Out]], holding: asyncio.Event) -> None:
        live = [p for p in batch if not p.future.done()]  # a caller may have gone
        if not live:
            return
        try:
            decided = await self._run(live, holding)
        except BaseException as exc:
            shared = isinstance(exc, _SHARED_FAILURES) or not isinstance(exc, Exception)
            for p in live:
                if p.future.done():
                    continue
                if len(live) == 1 or shared:
                    p.future.set_exception(exc)
                else:
                    p.future.set_result(_ALONE)
            if len(live) > 1 and not shared:
                log.warning(
                    "batch_failed", operation=self.operation, size=len(live),
                    error=type(exc).__name__,
                )  # fmt: skip
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        self.decided += len(live)
        self.largest = max(self.largest, len(live))
        self.decided_batch(decided.outcomes)
        for p, outcome, answer in zip(live, decided.outcomes, decided.answers, strict=True):
            if p.claim is not None:
                p.claim.done = True
                p.claim.answer = answer
            if p.future.done():
                continue
            if outcome is None:
                assert p.claim is not None
                p.future.set_exception(KeyAnswered(p.claim))
            else:
                p.future.set_result(outcome)

    async def _run(self, batch: list[_Pending[R, Out]], holding: asyncio.Event) -> _Decided[Out]:
        keyed = [(i, p.claim) for i, p in enumerate(batch) if p.claim is not None]

        async def body(uow: UnitOfWork) -> _Decided[Out]:
            uow.levels.on_locked = holding.set
            taken = await claim_keys(uow.conn, [c for _, c in keyed])
            elsewhere = {i for (i, _), ok in zip(keyed, taken, strict=True) if not ok}
            deciding = [i for i in range(len(batch)) if i not in elsewhere]
            results = await self.decide(uow, [batch[i].request for i in deciding])
            outcomes: list[Out | None] = [None] * len(batch)
            answers: list[Answer | None] = [None] * len(batch)
            stored: list[tuple[Claim, Answer]] = []
            for i, outcome in zip(deciding, results, strict=True):
                outcomes[i] = outcome
                claim = batch[i].claim
                if claim is not None:
                    assert claim.render is not None
                    answer = claim.render(outcome)
                    answers[i] = answer
                    stored.append((claim, answer))
            await store_answers(uow.conn, stored)
            return _Decided(outcomes, answers)

        return await run(
            self._backends(), batch[0].actor, body, operation=self.operation, answers=False
        )

    def _take(
        self, queue: deque[_Pending[R, Out]], ahead: _InFlight[R, Out] | None
    ) -> list[_Pending[R, Out]]:
        """Up to ``max_batch`` requests in arrival order, of the first one's actor (the
        ledger names one actor per transaction), never two with the same identity or
        key, none with the identity or key of the batch ``ahead`` while it is in flight;
        the others keep their places for the next batch."""
        actor = queue[0].actor
        taken: list[_Pending[R, Out]] = []
        kept: list[_Pending[R, Out]] = []
        ids: set[str] = set()
        keys: set[tuple[str, str]] = set()
        busy = ahead is not None and not ahead.task.done()
        busy_ids = ahead.identities(self.identity) if busy and ahead else set()
        busy_keys = ahead.keys() if busy and ahead else set()
        while queue and len(taken) < self.max_batch:
            p = queue.popleft()
            key = (p.claim.owner, p.claim.key) if p.claim is not None else None
            ident = self.identity(p.request)
            if (
                p.actor != actor
                or ident in ids
                or ident in busy_ids
                or (key is not None and (key in keys or key in busy_keys))
            ):
                kept.append(p)
                continue
            ids.add(ident)
            if key is not None:
                keys.add(key)
            taken.append(p)
        queue.extendleft(reversed(kept))
        return taken
