"""Bulk stock writes: many adjustments (any SKUs, any locations) in one transaction.

An ERP syncs its counts with one batch instead of thousands of single adjustments. Every
item is the single route's adjustment (``catalogue._check_form`` and ``catalogue._delta``
decide it); the levels of every SKU of the batch are locked once, up front, in the usual
(sku, location) order, so two batches never wait on each other in a cycle whatever their
item order. Items are decided in index order against running in-memory levels (a second
item on a level sees the first one's effect), then every applied item is written with
one set-based ``LevelWriter.apply`` (one ledger row per item).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from stockguard.domain.errors import (
    BatchRejected,
    NotFound,
    StaleQuantity,
    StockguardError,
    ValidationFailed,
)
from stockguard.service.catalogue import Adjustment, _check_form, _delta
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.levels import Delta, LevelRow

__all__ = ["MAX_ITEMS", "BatchItem", "ErrorPolicy", "ItemResult", "apply_batch"]

MAX_ITEMS = 2_000  # API.md: 1 to 2,000 items per batch


class ErrorPolicy(StrEnum):
    ALL_OR_NOTHING = "all_or_nothing"
    SKIP_FAILED = "skip_failed"


# An item is an adjustment, or the error that made it unreadable (bad field, bad type):
# that item fails on its own, the batch is still decided.
BatchItem = Adjustment | StockguardError


@dataclass(frozen=True, slots=True)
class ItemResult:
    index: int
    level: LevelRow | None = None  # the level after this item, when applied
    error: StockguardError | None = None

    @property
    def applied(self) -> bool:
        return self.error is None


def _precheck(item: BatchItem) -> StockguardError | None:
    if isinstance(item, StockguardError):
        return item
    try:
        _check_form(item)
    except ValidationFailed as exc:
        return exc
    return None


async def _known(uow: UnitOfWork, items: Sequence[Adjustment]) -> tuple[set[str], set[str]]:
    row = await uow.conn.fetchrow(
        "SELECT ARRAY(SELECT code FROM skus WHERE code = ANY($1::text[])) AS skus, "
        "ARRAY(SELECT code FROM locations WHERE code = ANY($2::text[])) AS locations",
        sorted({a.sku for a in items}),
        sorted({a.location for a in items}),
    )
    assert row is not None
    return set(row["skus"]), set(row["locations"])


async def _ensure(uow: UnitOfWork, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Create the missing levels, in (sku, location) order like every level lock; returns
    those created."""
    rows = await uow.conn.fetch(
        "INSERT INTO inventory_levels (sku, location) "
        "SELECT s, l FROM unnest($1::text[], $2::text[]) AS t(s, l) ORDER BY s, l "
        "ON CONFLICT DO NOTHING RETURNING sku, location",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    return {(r["sku"], r["location"]) for r in rows}


def _decide(adj: Adjustment, level: LevelRow) -> Delta:
    """The single route's decision on the level as it is after the earlier items."""
    if adj.expected_on_hand is not None and adj.expected_on_hand != level.on_hand:
        raise StaleQuantity(
            f"on_hand is {level.on_hand}, not {adj.expected_on_hand}",
            expected_on_hand=adj.expected_on_hand,
            on_hand=level.on_hand,
        )
    return _delta(adj, level)


async def _apply(
    uow: UnitOfWork, items: Sequence[BatchItem], policy: ErrorPolicy
) -> list[ItemResult]:
    errors: dict[int, StockguardError] = {}
    adjustments: dict[int, Adjustment] = {}
    for index, item in enumerate(items):
        problem = _precheck(item)
        if problem is not None:
            errors[index] = problem
        else:
            assert isinstance(item, Adjustment)
            adjustments[index] = item
    skus, locations = await _known(uow, list(adjustments.values()))
    for index, adj in list(adjustments.items()):
        if adj.sku not in skus:
            errors[index] = NotFound(f"sku {adj.sku} not found")
        elif adj.location not in locations:
            errors[index] = ValidationFailed(f"unknown location {adj.location!r}")
        else:
            continue
        del adjustments[index]
    pairs = sorted({(a.sku, a.location) for a in adjustments.values()})
    created = await _ensure(uow, pairs)
    running = await uow.levels.lock({p[0] for p in pairs})
    deltas: list[Delta] = []
    after: dict[int, LevelRow] = {}
    for index, adj in adjustments.items():  # index order: dicts keep insertion order
        key = (adj.sku, adj.location)
        try:
            delta = _decide(adj, running[key])
        except StockguardError as exc:
            errors[index] = exc
            continue
        level = running[key]
        running[key] = after[index] = dataclasses.replace(
            level,
            on_hand=level.on_hand + delta.on_hand,
            unavailable=level.unavailable + delta.unavailable,
        )
        deltas.append(delta)
    if errors and policy is ErrorPolicy.ALL_OR_NOTHING:
        raise BatchRejected(sorted(errors.items()))  # the transaction rolls back
    await uow.levels.apply(deltas)
    used = {(adjustments[i].sku, adjustments[i].location) for i in after}
    unused = sorted(created - used)
    if unused:  # a failed item leaves no empty level behind it
        await uow.conn.execute(
            "DELETE FROM inventory_levels l USING unnest($1::text[], $2::text[]) AS t(s, c) "
            "WHERE l.sku = t.s AND l.location = t.c",
            [p[0] for p in unused],
            [p[1] for p in unused],
        )
    # A new level is a new entry in the SKU's cached locations.
    uow.levels.touched.update(p[0] for p in created & used)
    return [ItemResult(i, level=after.get(i), error=errors.get(i)) for i in range(len(items))]


async def apply_batch(
    backends: Backends, items: Sequence[BatchItem], policy: ErrorPolicy, actor: str
) -> list[ItemResult]:
    """Apply the items in one transaction. ``all_or_nothing``: any failed item raises
    BatchRejected (listing every failed item) and nothing changes; ``skip_failed``: a
    failed item changes nothing and the others apply. One result per item, in order."""
    if not 1 <= len(items) <= MAX_ITEMS:
        raise ValidationFailed(f"a batch has 1 to {MAX_ITEMS} items, not {len(items)}")

    async def body(uow: UnitOfWork) -> list[ItemResult]:
        return await _apply(uow, items, policy)

    return await run(backends, actor, body, operation="adjust_batch")
