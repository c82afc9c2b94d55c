"""Group commit of cancels (DESIGN.md §10): many concurrent cancels over HTTP and through
the batcher, released together by a barrier; every client gets its own answer, every
order's units come back exactly once, a cancel that meets a payment or another cancel of
the same order ends as one of the orders the two could make one after the other, and a
request that breaks its batch is run alone without taking the others down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import asyncpg
import httpx
import pytest

from stockguard.api.app import build_app
from stockguard.config import Settings
from stockguard.domain.errors import InvalidTransition, NotFound
from stockguard.metrics import RESTORED_UNITS
from stockguard.service.cancel_batcher import CancelBatcher, CancelOutcome
from stockguard.service.idempotency import Answer, Claim, KeyAnswered, close_claim, open_claim
from stockguard.service.orders import CancelOrder, Placed, PlaceOrder, place_orders
from stockguard.service.uow import Backends
from stockguard.store.orders import OrderRecord
from tests.conftest import Keys, Stocker
from tests.helpers import (
    app_client,
    assert_cache_parity,
    assert_invariants,
    assert_replayed,
    level,
    race,
)

pytestmark = pytest.mark.race


@pytest.fixture
async def batched(
    settings: Settings, backends: Backends, api_keys: Keys
) -> AsyncIterator[tuple[httpx.AsyncClient, CancelBatcher]]:
    """A client of an app of its own, so its batcher's counters are this test's."""
    app = build_app(settings.model_copy(update={"order_batching": True}), backends)
    batcher = app.state.cancel_batcher
    assert isinstance(batcher, CancelBatcher)
    async with app_client(app, api_keys.service) as c:
        yield c, batcher


async def _placed(backends: Backends, ids: list[str], sku: str, quantity: int = 2) -> None:
    results = await place_orders(backends, [PlaceOrder(i, ((sku, quantity),)) for i in ids], "t")
    assert all(isinstance(r, Placed) for r in results), results


async def _released(pool: asyncpg.Pool, order_id: str) -> int:
    """Units the ledger gave back for the order (each reservation at most once)."""
    n = await pool.fetchval(
        "SELECT coalesce(-sum(reserved_delta), 0) FROM stock_movements "
        "WHERE order_id = $1 AND reason = 'release'",
        order_id,
    )
    return int(n)


async def test_concurrent_cancels_over_http_each_get_their_own_answer(
    batched: tuple[httpx.AsyncClient, CancelBatcher],
    backends: Backends,
    stock: Stocker,
    uid: str,
) -> None:
    client, batcher = batched
    sku, loc = f"C{uid}", f"w{uid}"
    await stock({sku: {loc: 100}})
    ids = [f"c{uid}-{i}" for i in range(30)]
    await _placed(backends, ids, sku)
    # Already cancelled, shipped (not cancellable) and unknown orders share the batches.
    await client.post(f"/v1/orders/{ids[0]}/cancel")
    pay = {"provider": "manual", "payment_id": f"pay{uid}"}
    paid = await client.post(f"/v1/orders/{ids[1]}/payments", json=pay)
    assert paid.json()["status"] == "paid", paid.text
    for status in ("processing", "shipped"):
        moved = await client.patch(f"/v1/orders/{ids[1]}", json={"status": status})
        assert moved.json()["status"] == status, moved.text
    assert await level(backends.pool, sku, loc) == (98, 56)

    def cancel(order_id: str, i: int) -> Callable[[], Awaitable[httpx.Response]]:
        headers = {"Idempotency-Key": f"k{uid}-{i}"} if i % 2 else {}
        body = {"reason": f"r{i}"} if i % 3 else None
        return partial(client.post, f"/v1/orders/{order_id}/cancel", json=body, headers=headers)

    targets = [*ids, f"nobody{uid}"]
    answers = await race(*(cancel(o, i) for i, o in enumerate(targets)))
    for i, (order_id, r) in enumerate(zip(targets, answers, strict=True)):
        assert isinstance(r, httpx.Response), r
        if order_id == ids[1]:
            assert (r.status_code, r.json()["code"]) == (409, "invalid_transition")
        elif order_id == f"nobody{uid}":
            assert (r.status_code, r.json()["code"]) == (404, "not_found")
        else:
            assert r.status_code == 200, r.text
            assert (r.json()["id"], r.json()["status"]) == (order_id, "cancelled")
            assert all(x["status"] == "released" for x in r.json()["reservations"])
            if i > 0:
                assert r.json()["cancel_reason"] == (f"r{i}" if i % 3 else None)
    assert batcher.largest > 1  # decided together, not one by one
    assert batcher.batches < len(targets)
    # Every cancelled order's two units came back once; the shipped one's stayed out.
    assert await level(backends.pool, sku, loc) == (98, 0)
    for order_id in ids:
        assert await _released(backends.pool, order_id) == (0 if order_id == ids[1] else 2)

    # The keyed requests again: the same answers, replayed from their keys.
    again = await race(*(cancel(o, i) for i, o in enumerate(targets) if i % 2))
    assert_replayed(answers[1::2], again)
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_one_order_cancelled_by_many_at_once_gives_its_units_back_once(
    batched: tuple[httpx.AsyncClient, CancelBatcher],
    backends: Backends,
    stock: Stocker,
    uid: str,
) -> None:
    client, batcher = batched
    sku, loc = f"D{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    await _placed(backends, [f"d{uid}"], sku, 3)
    answers = await race(*(partial(client.post, f"/v1/orders/d{uid}/cancel") for _ in range(12)))
    for r in answers:
        assert isinstance(r, httpx.Response), r
        assert (r.status_code, r.json()["status"]) == (200, "cancelled")
    assert batcher.largest == 1  # one order's cancels never share a batch
    assert await level(backends.pool, sku, loc) == (10, 0)
    assert await _released(backends.pool, f"d{uid}") == 3
    events = await backends.pool.fetchval(
        "SELECT count(*) FROM events WHERE type = 'order.cancelled' "
        "AND data -> 'order' ->> 'id' = $1",
        f"d{uid}",
    )
    assert events == 1
    await assert_invariants(backends.pool)


async def test_batched_cancels_race_payments_of_the_same_orders(
    batched: tuple[httpx.AsyncClient, CancelBatcher],
    backends: Backends,
    stock: Stocker,
    uid: str,
) -> None:
    client, _ = batched
    sku, loc = f"P{uid}", f"w{uid}"
    await stock({sku: {loc: 50}})
    ids = [f"p{uid}-{i}" for i in range(10)]
    await _placed(backends, ids, sku)
    contenders = []
    for order_id in ids:
        contenders.append(partial(client.post, f"/v1/orders/{order_id}/cancel"))
        contenders.append(
            partial(
                client.post,
                f"/v1/orders/{order_id}/payments",
                json={"provider": "manual", "payment_id": f"pay-{order_id}"},
            )
        )
    answers = await race(*contenders)
    assert all(isinstance(a, httpx.Response) for a in answers), answers
    for order_id in ids:
        status = await backends.pool.fetchval("SELECT status FROM orders WHERE id = $1", order_id)
        # Paid then cancelled, or cancelled then the payment refused or set aside for
        # review: never paid with its units given back.
        assert status in ("cancelled", "needs_review"), status
        assert await _released(backends.pool, order_id) == 2
    assert await level(backends.pool, sku, loc) == (50, 0)
    await assert_invariants(backends.pool)


async def test_a_cancel_that_breaks_its_batch_is_run_alone(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"B{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    ids = [f"b{uid}-{i}" for i in range(4)]
    await _placed(backends, ids, sku, 1)
    batcher = CancelBatcher(lambda: backends)
    reqs = [CancelOrder(i) for i in ids]
    # A reason PostgreSQL cannot store (a NUL character): the batch's update fails whole.
    reqs[2] = CancelOrder(ids[2], "bad\x00reason")
    counted = RESTORED_UNITS.labels("cancel")._value.get()
    results = await asyncio.gather(*(batcher.cancel(r, "t") for r in reqs), return_exceptions=True)
    assert [isinstance(r, OrderRecord) for r in results] == [True, True, False, True]
    # Counted once committed: not for the failed batch, once for each cancel run alone.
    assert RESTORED_UNITS.labels("cancel")._value.get() - counted == 3
    assert not isinstance(results[2], OrderRecord | NotFound | InvalidTransition)
    assert await level(backends.pool, sku, loc) == (10, 1)
    assert await backends.pool.fetchval("SELECT status FROM orders WHERE id = $1", ids[2]) == (
        "pending"
    )
    # Alone, a refusal is an outcome like in a batch.
    assert isinstance(await batcher.alone(backends, CancelOrder(f"x{uid}"), "t"), NotFound)
    await assert_invariants(backends.pool)


async def test_a_key_answered_elsewhere_replays_that_answer(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku = f"K{uid}"
    await stock({sku: {f"w{uid}": 5}})
    await _placed(backends, [f"k{uid}-0", f"k{uid}-1"], sku, 1)
    await backends.pool.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status_code, content_type, "
        "body) VALUES ($1, 'taken', 'f', 200, 'application/json', '\\x00')",
        f"owner{uid}",
    )
    batcher = CancelBatcher(lambda: backends)

    async def keyed(key: str, order_id: str) -> object:
        claim = Claim(owner=f"owner{uid}", key=key, fingerprint="f")
        claim.render = _answer_of
        token = open_claim(claim)
        try:
            return await batcher.cancel(CancelOrder(order_id), "t")
        finally:
            close_claim(token)

    fresh, taken = await asyncio.gather(
        keyed("new", f"k{uid}-0"), keyed("taken", f"k{uid}-1"), return_exceptions=True
    )
    assert isinstance(fresh, OrderRecord)
    assert isinstance(taken, KeyAnswered)
    # The key's owner was answered elsewhere: this request changed nothing.
    assert await backends.pool.fetchval("SELECT status FROM orders WHERE id = $1", f"k{uid}-1") == (
        "pending"
    )
    stored = await backends.pool.fetchval(
        "SELECT status_code FROM idempotency_keys WHERE scope = $1 AND key = 'new'", f"owner{uid}"
    )
    assert stored == 200


def _answer_of(outcome: CancelOutcome) -> Answer:
    status = 200 if isinstance(outcome, OrderRecord) else 409
    return Answer(status, "application/json", b"{}")
