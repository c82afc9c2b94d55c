"""Two transactions that each create a first level of the same SKU, at two locations, at
once: Redis must end up listing both locations (invariant 8).

Found by the state machine (tests/test_stateful.py). ``LevelWriter.lock`` serialises a
SKU's writers by locking the SKU's *existing* levels; a level another transaction has
just inserted (``ensure``, not yet committed) is invisible to that lock, so both writers
went ahead, each wrote the SKU's availability without the other's new level, and the
higher cache version won: Redis lacked one location PostgreSQL had. ``ensure`` now
serialises the creation of a SKU's levels on the SKU's row.
"""

from __future__ import annotations

from functools import partial

import pytest

from stockguard.service import catalogue
from stockguard.service.uow import Backends
from tests.helpers import assert_cache_parity, assert_invariants, race

pytestmark = pytest.mark.usefixtures("backends")


async def test_first_levels_of_a_sku_created_at_once_are_both_cached(
    backends: Backends, uid: str
) -> None:
    here, there = f"na{uid}", f"nb{uid}"
    await catalogue.put_location(backends, here, here, 1, True, "t")
    await catalogue.put_location(backends, there, there, 2, True, "t")
    for n in range(20):
        sku = f"N{uid}{n}"
        await catalogue.put_sku(backends, sku, sku)
        add = catalogue.Adjustment(sku, here, "correction", delta=1)
        results = await race(
            partial(catalogue.adjust_stock, backends, add, "t"),
            partial(catalogue.set_safety_stock, backends, sku, there, 2, "t"),
        )
        assert not any(isinstance(r, BaseException) for r in results), results
        await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)
