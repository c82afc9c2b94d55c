"""The benchmark's catalogue and the orders it places.

- ``HOT``: one SKU with plenty of stock (10^9 units) at one location;
- ``FLASH``: one SKU with the flash sale's units (created by that scenario);
- ``S00000``...: the spread SKUs, each stocked at both locations (``loc-a`` first by
  priority, ``loc-b`` second).

The hot SKU goes through the service (``put_sku`` + ``adjust_stock``); the spread SKUs
are bulk-inserted in one transaction with one ledger row per level (reason
``received``), then written to Redis through ``repair_cache`` (the service's own
lock-stamp-write path), so every invariant and cache parity hold from the start.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from stockguard.service import catalogue
from stockguard.service.orders import PlaceOrder
from stockguard.service.uow import Backends, repair_cache

__all__ = ["Catalogue", "OrderFactory", "seed"]

LOCATIONS = {"loc-a": 10, "loc-b": 20}
HOT = "HOT"
ACTOR = "bench"


@dataclass
class Catalogue:
    hot: str
    spread: list[str]
    locations: dict[str, int]
    extra: list[str] = field(default_factory=list)  # SKUs added by scenarios

    def all_skus(self) -> list[str]:
        return [self.hot, *self.spread, *self.extra]


async def seed(
    backends: Backends, *, spread_skus: int, spread_on_hand: int, hot_on_hand: int
) -> Catalogue:
    for code, priority in LOCATIONS.items():
        await catalogue.put_location(backends, code, code, priority, True, ACTOR)
    await catalogue.put_sku(backends, HOT, "hot sku")
    await catalogue.adjust_stock(
        backends,
        catalogue.Adjustment(sku=HOT, location="loc-a", reason="received", delta=hot_on_hand),
        ACTOR,
    )
    spread = [f"S{i:05d}" for i in range(spread_skus)]
    levels = [(sku, loc) for sku in spread for loc in LOCATIONS]
    async with backends.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO skus (code, name) SELECT c, 'spread ' || c FROM unnest($1::text[]) c",
            spread,
        )
        await conn.execute(
            "INSERT INTO inventory_levels (sku, location, on_hand) "
            "SELECT s, l, $3 FROM unnest($1::text[], $2::text[]) AS t(s, l)",
            [s for s, _ in levels],
            [loc for _, loc in levels],
            spread_on_hand,
        )
        await conn.execute(
            "INSERT INTO stock_movements (sku, location, on_hand_delta, reserved_delta, reason, "
            "actor, reference) SELECT s, l, $3, 0, 'received', $4, 'bench seed' "
            "FROM unnest($1::text[], $2::text[]) AS t(s, l)",
            [s for s, _ in levels],
            [loc for _, loc in levels],
            spread_on_hand,
            ACTOR,
        )
    for i in range(0, len(spread), 500):
        await repair_cache(backends, spread[i : i + 500])
    return Catalogue(hot=HOT, spread=spread, locations=dict(LOCATIONS))


class OrderFactory:
    """Unique order ids and the two order shapes (hot: one line of the hot SKU;
    spread: 1-3 distinct random spread SKUs, 1-3 units each)."""

    def __init__(self, run_id: str, cat: Catalogue, seed_value: int) -> None:
        self.run_id = run_id
        self.cat = cat
        self.rng = random.Random(seed_value)
        self._n = itertools.count()

    def order_id(self, tag: str) -> str:
        return f"b{self.run_id}-{tag}-{next(self._n)}"

    def hot_lines(self) -> tuple[tuple[str, int], ...]:
        return ((self.cat.hot, 1),)

    def spread_lines(self) -> tuple[tuple[str, int], ...]:
        skus = self.rng.sample(self.cat.spread, self.rng.randint(1, 3))
        return tuple((s, self.rng.randint(1, 3)) for s in skus)

    def hot(self, tag: str) -> PlaceOrder:
        return PlaceOrder(id=self.order_id(tag), lines=self.hot_lines())

    def spread(self, tag: str) -> PlaceOrder:
        return PlaceOrder(id=self.order_id(tag), lines=self.spread_lines())

    def sample(self, k: int) -> Sequence[str]:
        return self.rng.sample(self.cat.spread, k)
