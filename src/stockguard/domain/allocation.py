"""Location choice (DESIGN.md §4, seed 004).

Candidates are the channel's linked active locations (every active location when there
is no channel), ordered by the order's preferred locations first, then channel priority,
then location priority. Each line is taken whole from the first candidate that can hold
it; when none can and splitting is allowed, it is split across candidates in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from stockguard.domain.errors import Shortage

__all__ = ["Allocation", "Candidate", "Line", "allocate", "rank_candidates"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A location that may serve an order, with its place in the channel."""

    location: str
    location_priority: int
    channel_priority: int | None = None


@dataclass(frozen=True, slots=True)
class Line:
    line_no: int
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Allocation:
    line_no: int
    sku: str
    location: str
    quantity: int


def rank_candidates(candidates: Iterable[Candidate], preferred: Sequence[str] = ()) -> list[str]:
    """Location codes in the order they are tried."""
    pref_rank = {code: i for i, code in enumerate(dict.fromkeys(preferred))}
    big = len(pref_rank)

    def key(c: Candidate) -> tuple[int, int, int, int, str]:
        p = pref_rank.get(c.location, big)
        cp = c.channel_priority if c.channel_priority is not None else 0
        return (p, cp, c.location_priority, 0, c.location)

    return [c.location for c in sorted(candidates, key=key)]


def allocate(
    lines: Sequence[Line],
    locations: Sequence[str],
    available: Mapping[tuple[str, str], int],
    allow_split: bool,
) -> tuple[list[Allocation], list[Shortage]]:
    """Choose where every line comes from, or say every line that is short.

    ``available`` maps (sku, location) to free units and is not changed; lines of the
    same SKU within one order see each other's allocations. All-or-nothing: when any
    shortage is returned, the allocations must not be applied.
    """
    free = dict(available)
    out: list[Allocation] = []
    short: dict[str, list[int]] = {}
    requested_by_sku: dict[str, int] = {}
    for line in lines:
        requested_by_sku[line.sku] = requested_by_sku.get(line.sku, 0) + line.quantity
        whole = next(
            (loc for loc in locations if free.get((line.sku, loc), 0) >= line.quantity), None
        )
        if whole is not None:
            free[(line.sku, whole)] -= line.quantity
            out.append(Allocation(line.line_no, line.sku, whole, line.quantity))
            continue
        total = sum(max(free.get((line.sku, loc), 0), 0) for loc in locations)
        if not allow_split or total < line.quantity:
            short.setdefault(line.sku, [])
            continue
        need = line.quantity
        for loc in locations:
            take = min(need, free.get((line.sku, loc), 0))
            if take > 0:
                free[(line.sku, loc)] -= take
                out.append(Allocation(line.line_no, line.sku, loc, take))
                need -= take
            if need == 0:
                break
    if short:
        shortages = [
            Shortage(
                sku=sku,
                requested=requested_by_sku[sku],
                available=sum(max(available.get((sku, loc), 0), 0) for loc in locations),
            )
            for sku in short
        ]
        return [], shortages
    return out, []
