"""The cache reconciler: finds SKUs whose Redis copy differs from PostgreSQL and rewrites
them (dirty SKUs first, then a sweep over every SKU in batches)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stockguard.cache.redis_cache import Entry, SkuAvailability, load_availability
from stockguard.metrics import RECONCILER_REPAIRS
from stockguard.service.uow import Backends, repair_cache

__all__ = ["Drift", "ReconcileReport", "reconcile", "repair_dirty"]


@dataclass(frozen=True, slots=True)
class Drift:
    sku: str
    redis: int | None
    postgres: int


@dataclass
class ReconcileReport:
    checked: int = 0
    drifted: list[Drift] = field(default_factory=list)
    repaired: int = 0


def _differs(pg: SkuAvailability, cached: Entry) -> bool:
    return cached.answer != (pg.total, pg.locations)


async def _check(
    backends: Backends, skus: Sequence[str], repair: bool, report: ReconcileReport
) -> None:
    assert backends.cache is not None
    async with backends.pool.acquire() as conn:
        pg = await load_availability(conn, skus)
    async with asyncio.timeout(backends.redis_timeout * 4):
        cached = await backends.cache.entries(list(skus))
    drifted = [s for s in skus if _differs(pg[s], cached[s])]
    report.checked += len(skus)
    for sku in drifted:
        report.drifted.append(Drift(sku, cached[sku].total, pg[sku].total))
    if repair and drifted:
        # Rewritten under the levels' locks, so an operation in flight cannot be undone.
        await repair_cache(backends, drifted)
        report.repaired += len(drifted)
        RECONCILER_REPAIRS.inc(len(drifted))


async def reconcile(
    backends: Backends,
    *,
    repair: bool = False,
    skus: Sequence[str] | None = None,
    batch: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> ReconcileReport:
    """Compare Redis with PostgreSQL for the given SKUs (all when None); repair drift."""
    report = ReconcileReport()
    if backends.cache is None:
        return report
    if repair:
        report.repaired += await repair_dirty(backends)
    if skus is not None:
        for i in range(0, len(skus), batch):
            await _check(backends, list(skus[i : i + batch]), repair, report)
            if progress:
                progress(report.checked, len(skus))
        return report
    total = int(await backends.pool.fetchval("SELECT count(*) FROM skus"))
    after = ""
    while True:
        rows = await backends.pool.fetch(
            "SELECT code FROM skus WHERE code > $1 ORDER BY code LIMIT $2", after, batch
        )
        if not rows:
            break
        codes = [r["code"] for r in rows]
        await _check(backends, codes, repair, report)
        if progress:
            progress(report.checked, max(total, report.checked))
        after = codes[-1]
    return report


async def repair_dirty(backends: Backends, limit: int = 1000) -> int:
    """Rewrite every SKU marked dirty (degraded mode, failed writes). Returns how many."""
    rows = await backends.pool.fetch(
        "SELECT sku FROM cache_dirty ORDER BY marked_at LIMIT $1", limit
    )
    skus = [r["sku"] for r in rows]
    if skus:
        await repair_cache(backends, skus)
        RECONCILER_REPAIRS.inc(len(skus))
    return len(skus)
