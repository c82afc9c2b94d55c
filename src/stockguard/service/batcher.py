"""Group commit of order placements (DESIGN.md §10 "Group commit on the HTTP path").

Concurrent placements are gathered while the previous batch is in its transaction and
decided together in one transaction (:func:`stockguard.service.orders.decide_orders`
inside one :func:`stockguard.service.uow.run`), in arrival order, each all-or-nothing,
each caller getting its own outcome. There is no fixed wait: a lane that is idle starts a
batch at once, so a lone request goes alone. Requests are spread over lanes by the hash of
their smallest SKU, so batches of disjoint SKUs run side by side (a multi-SKU order whose
SKUs fall in two lanes is still correct: the levels' locks serialise what overlaps).

``Idempotency-Key`` claims (:mod:`stockguard.service.idempotency`) of every request in a
batch are taken first and their answers stored last, in the batch's own transaction, so a
crash leaves either the effect with its answer or neither (invariant 15). A key another
transaction took first answers its caller with that transaction's answer. Two requests
with the same order id or the same key never share a batch: the later one waits for the
next, where it finds the first one's result. When a batch fails for a reason that is not
every request's (anything but a lost connection or an unavailable cache), each of its
requests is run again alone, so one request cannot take the others down.

"Sold out costs nothing": after a batch refuses a SKU with nothing available, the next
buyers of that SKU are first checked against the availability cache, which is at parity
with PostgreSQL (written under the levels' locks before COMMIT); when it shows the order
cannot fit, and neither its id nor its key is known (a repeated id answers with its order,
a used key with its answer), the buyer is refused from it without queueing for the SKU's
rows. Buyers arriving together share one cache read and one query of ids and keys.
"""

from __future__ import annotations

import asyncio
import contextvars
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from stockguard.config import CacheMode
from stockguard.domain.errors import CacheUnavailable, OutOfStock, Shortage, StockguardError
from stockguard.logging import get_logger
from stockguard.service import orders
from stockguard.service.idempotency import (
    Answer,
    Claim,
    KeyAnswered,
    claim_keys,
    current_claim,
    store_answers,
)
from stockguard.service.orders import Placed, PlaceOrder
from stockguard.service.uow import CACHE_ERRORS, Backends, UnitOfWork, run
from stockguard.store.db import CONNECTION_LOST, LostBeforeCommit

__all__ = ["Outcome", "PlacementBatcher"]

log = get_logger(__name__)

Outcome = Placed | StockguardError

# Failures that are every request's, not one request's: running each alone cannot help.
_SHARED_FAILURES: Final = (CacheUnavailable, LostBeforeCommit, *CONNECTION_LOST)


class _RunAlone:
    """The batch failed for a reason that may be one request's: run this one alone."""


_ALONE: Final = _RunAlone()


@dataclass
class _Pending:
    request: PlaceOrder
    actor: str
    claim: Claim | None
    future: asyncio.Future[Outcome | _RunAlone]


@dataclass
class _Suspect:
    request: PlaceOrder
    claim: Claim | None
    future: asyncio.Future[OutOfStock | None]


@dataclass
class _Decided:
    outcomes: list[Outcome | None]  # None: the key was answered by another transaction
    answers: list[Answer | None]


@dataclass
class _Lane:
    queue: deque[_Pending] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class PlacementBatcher:
    """The one place that batches placements; ``place`` is the whole interface."""

    def __init__(
        self,
        backends: Callable[[], Backends],
        *,
        max_batch: int = 200,
        lanes: int = 4,
    ) -> None:
        if max_batch < 1 or lanes < 1:
            raise ValueError("max_batch and lanes must be at least 1")
        self._backends = backends
        self.max_batch = max_batch
        self._lanes = [_Lane() for _ in range(lanes)]
        self._sold_out: set[str] = set()  # SKUs a batch found with nothing available
        self._suspects: list[_Suspect] = []  # their buyers, waiting for the cache's word
        self._judging: asyncio.Task[None] | None = None
        # Batches committed, requests decided in them and the largest (tests, the benchmark).
        self.batches = 0
        self.decided = 0
        self.largest = 0

    # ------------------------------------------------------------------ the interface

    async def place(self, request: PlaceOrder, actor: str) -> Outcome:
        """Place one order through a batch; the outcome is the order or why it was
        refused. When the request carries an ``Idempotency-Key`` (the current claim, with
        a renderer that takes an :data:`Outcome`), its answer is stored in the batch's
        transaction and left in ``claim.answer``. Raises ``KeyAnswered`` when another
        request with the key committed first."""
        backends = self._backends()
        refused = await self._refused_from_cache(backends, request)
        if refused is not None:
            return refused
        claim = current_claim()
        if claim is not None and (claim.render is None or claim.done):
            claim = None
        future: asyncio.Future[Outcome | _RunAlone] = asyncio.get_running_loop().create_future()
        lane = self._lanes[_lane_of(request, len(self._lanes))]
        lane.queue.append(_Pending(request, actor, claim, future))
        if lane.task is None:
            # A context of its own: the batch must not run inside one caller's context.
            lane.task = asyncio.create_task(self._drain(lane), context=contextvars.Context())
        outcome = await future
        if isinstance(outcome, _RunAlone):
            return await _place_alone(backends, request, actor)
        return outcome

    async def drain(self) -> None:
        """Wait until every lane is idle (shutdown, tests)."""
        while running := [lane.task for lane in self._lanes if lane.task is not None]:
            await asyncio.gather(*running, return_exceptions=True)

    # ------------------------------------------------------------------ sold out

    async def _refused_from_cache(
        self, backends: Backends, request: PlaceOrder
    ) -> OutOfStock | None:
        """The refusal a batch would give, read from the availability cache, for buyers of
        a SKU a batch recently found sold out; None when the order may fit (or the cache
        cannot say). Buyers arriving together are judged together: one cache read and
        one PostgreSQL query (is any of their ids or keys known?) for all of them."""
        skus = [sku for sku, _ in request.lines]
        if not self._sold_out or not self._sold_out.intersection(skus):
            return None
        if (
            backends.cache is None
            or backends.cache_mode is not CacheMode.STRICT
            or request.channel is not None  # the cache does not know channels' locations
            or len(set(skus)) != len(skus)  # lines of one SKU interact: leave it to the batch
            or not backends.breaker.allow()
        ):
            return None
        claim = current_claim()
        future: asyncio.Future[OutOfStock | None] = asyncio.get_running_loop().create_future()
        self._suspects.append(_Suspect(request, claim, future))
        if self._judging is None:
            self._judging = asyncio.create_task(
                self._judge_suspects(backends), context=contextvars.Context()
            )
        return await future

    async def _judge_suspects(self, backends: Backends) -> None:
        try:
            while self._suspects:
                group = self._suspects[: self.max_batch]
                del self._suspects[: self.max_batch]
                try:
                    verdicts = await self._judge(backends, group)
                except Exception:  # the batch decides them instead
                    log.warning("sold_out_check_failed", exc_info=True)
                    verdicts = [None] * len(group)
                for suspect, verdict in zip(group, verdicts, strict=True):
                    if not suspect.future.done():
                        suspect.future.set_result(verdict)
        finally:
            self._judging = None

    async def _judge(self, backends: Backends, group: list[_Suspect]) -> list[OutOfStock | None]:
        assert backends.cache is not None
        skus = sorted({sku for s in group for sku, _ in s.request.lines})
        try:
            async with asyncio.timeout(backends.redis_timeout):
                cached = await backends.cache.read(skus)
        except CACHE_ERRORS:
            return [None] * len(group)
        short = [_cached_shortages(cached, s.request) for s in group]
        self._sold_out.difference_update(
            sku for sku in skus if (entry := cached.get(sku)) is not None and entry[0] > 0
        )
        candidates = [s for s, found in zip(group, short, strict=True) if found]
        if not candidates:
            return [None] * len(group)
        keyed = [s for s in candidates if s.claim is not None]
        # A repeated id answers with its order and a used key with its answer, whatever
        # is left: only a new request is refused here.
        known = await backends.pool.fetchrow(
            "SELECT ARRAY(SELECT id FROM orders WHERE id = ANY($1::text[])) AS ids, "
            "ARRAY(SELECT c.n FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS c(s, k, n) "
            "WHERE EXISTS (SELECT 1 FROM idempotency_keys i WHERE i.scope = c.s AND i.key = c.k)"
            ") AS used",
            [s.request.id for s in candidates],
            [s.claim.owner for s in keyed if s.claim is not None],
            [s.claim.key for s in keyed if s.claim is not None],
        )
        assert known is not None
        ids = set(known["ids"])
        used = {id(keyed[n - 1]) for n in known["used"]}
        verdicts: list[OutOfStock | None] = []
        for s, found in zip(group, short, strict=True):
            fresh = found and s.request.id not in ids and id(s) not in used
            verdicts.append(OutOfStock(found) if fresh else None)
        return verdicts

    def _remember_sold_out(self, outcomes: list[Outcome | None]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, OutOfStock):
                self._sold_out.update(s.sku for s in outcome.shortages if s.available == 0)

    # ------------------------------------------------------------------ batches

    async def _drain(self, lane: _Lane) -> None:
        try:
            while lane.queue:
                batch = _take(lane.queue, self.max_batch)
                await self._decide(batch)
        finally:
            lane.task = None

    async def _decide(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a caller may have gone
        if not live:
            return
        try:
            decided = await self._run(live)
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
                log.warning("order_batch_failed", size=len(live), error=type(exc).__name__)
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        self.decided += len(live)
        self.largest = max(self.largest, len(live))
        self._remember_sold_out(decided.outcomes)
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

    async def _run(self, batch: list[_Pending]) -> _Decided:
        keyed = [(i, p.claim) for i, p in enumerate(batch) if p.claim is not None]

        async def body(uow: UnitOfWork) -> _Decided:
            taken = await claim_keys(uow.conn, [c for _, c in keyed])
            elsewhere = {i for (i, _), ok in zip(keyed, taken, strict=True) if not ok}
            placing = [i for i in range(len(batch)) if i not in elsewhere]
            results = await orders.decide_orders(uow, [batch[i].request for i in placing])
            outcomes: list[Outcome | None] = [None] * len(batch)
            answers: list[Answer | None] = [None] * len(batch)
            stored: list[tuple[Claim, Answer]] = []
            for i, outcome in zip(placing, results, strict=True):
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
            self._backends(), batch[0].actor, body, operation="place_order_batch", answers=False
        )


def _lane_of(request: PlaceOrder, lanes: int) -> int:
    return zlib.crc32(min(sku for sku, _ in request.lines).encode()) % lanes


def _take(queue: deque[_Pending], limit: int) -> list[_Pending]:
    """Up to ``limit`` requests in arrival order, of the first one's actor (the ledger
    names one actor per transaction), never two with the same order id or key; the others
    keep their places for the next batch."""
    actor = queue[0].actor
    taken: list[_Pending] = []
    kept: list[_Pending] = []
    ids: set[str] = set()
    keys: set[tuple[str, str]] = set()
    while queue and len(taken) < limit:
        p = queue.popleft()
        key = (p.claim.owner, p.claim.key) if p.claim is not None else None
        if p.actor != actor or p.request.id in ids or (key is not None and key in keys):
            kept.append(p)
            continue
        ids.add(p.request.id)
        if key is not None:
            keys.add(key)
        taken.append(p)
    queue.extendleft(reversed(kept))
    return taken


async def _place_alone(backends: Backends, request: PlaceOrder, actor: str) -> Outcome:
    try:
        return await orders.place_order(backends, request, actor)
    except StockguardError as exc:
        return exc


def _cached_shortages(
    cached: dict[str, tuple[int, dict[str, int]] | None], request: PlaceOrder
) -> list[Shortage]:
    """What the batch would find short, judged on the cached availability (one line per
    SKU, every active location a candidate); nothing when an entry is missing."""
    shortages: list[Shortage] = []
    for sku, quantity in request.lines:
        entry = cached.get(sku)
        if entry is None:
            return []
        total, locations = entry
        best = total if request.allow_split else max(locations.values(), default=0)
        if best < quantity:
            shortages.append(Shortage(sku=sku, requested=quantity, available=total))
    return shortages
