"""Group commit of order placements (DESIGN.md §10 "Group commit on the HTTP path"):
:class:`stockguard.service.group_commit.GroupCommit` with placements decided by
:func:`stockguard.service.orders.decide_orders`, each all-or-nothing. Requests are spread
over lanes by the hash of their smallest SKU, so batches of disjoint SKUs run side by side
(a multi-SKU order whose SKUs fall in two lanes is still correct: the levels' locks
serialise what overlaps).

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
from collections.abc import Callable
from dataclasses import dataclass

from stockguard.config import CacheMode
from stockguard.domain.errors import OutOfStock, Shortage, StockguardError
from stockguard.logging import get_logger
from stockguard.service import orders
from stockguard.service.group_commit import GroupCommit
from stockguard.service.idempotency import Claim, current_claim
from stockguard.service.orders import Placed, PlaceOrder
from stockguard.service.uow import CACHE_ERRORS, Backends, UnitOfWork

__all__ = ["Outcome", "PlacementBatcher"]

log = get_logger(__name__)

Outcome = Placed | StockguardError


@dataclass
class _Suspect:
    request: PlaceOrder
    claim: Claim | None
    future: asyncio.Future[OutOfStock | None]


class PlacementBatcher(GroupCommit[PlaceOrder, Outcome]):
    """The one place that batches placements; ``place`` is the whole interface."""

    operation = "place_order_batch"

    def __init__(
        self, backends: Callable[[], Backends], *, max_batch: int = 200, lanes: int = 4
    ) -> None:
        super().__init__(backends, max_batch=max_batch, lanes=lanes)
        self._sold_out: set[str] = set()  # SKUs a batch found with nothing available
        self._suspects: list[_Suspect] = []  # their buyers, waiting for the cache's word
        self._judging: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the interface

    async def place(self, request: PlaceOrder, actor: str) -> Outcome:
        """Place one order through a batch; the outcome is the order or why it was
        refused. When the request carries an ``Idempotency-Key`` (the current claim, with
        a renderer that takes an :data:`Outcome`), its answer is stored in the batch's
        transaction and left in ``claim.answer``. Raises ``KeyAnswered`` when another
        request with the key committed first."""
        refused = await self._refused_from_cache(self._backends(), request)
        if refused is not None:
            return refused
        return await self.submit(request, actor)

    # ------------------------------------------------------------------ GroupCommit

    async def decide(self, uow: UnitOfWork, requests: list[PlaceOrder]) -> list[Outcome]:
        return await orders.decide_orders(uow, requests)

    async def alone(self, backends: Backends, request: PlaceOrder, actor: str) -> Outcome:
        try:
            return await orders.place_order(backends, request, actor)
        except StockguardError as exc:
            return exc

    def lane_of(self, request: PlaceOrder, lanes: int) -> int:
        return zlib.crc32(min(sku for sku, _ in request.lines).encode()) % lanes

    def identity(self, request: PlaceOrder) -> str:
        return request.id

    def contends(self, request: PlaceOrder, ahead: list[PlaceOrder]) -> bool:
        """A SKU of the batch ahead: a hot SKU's batches overlap."""
        skus = {sku for sku, _ in request.lines}
        return any(sku in skus for r in ahead for sku, _ in r.lines)

    def decided_batch(self, outcomes: list[Outcome | None]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, OutOfStock):
                self._sold_out.update(s.sku for s in outcome.shortages if s.available == 0)

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
