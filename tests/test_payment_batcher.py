"""Group commit of payments (DESIGN.md §10): concurrent payments over HTTP and through the
batcher, released together by a barrier. Every client gets the answer it would have had
alone, in arrival order (a plain payment, the same proof again, a second payment, an
amount mismatch, a late payment, a proof another order of the batch took, a cancelled or
unknown order); an order's stock is committed once; a payment that meets a cancel, the
expiry or another payment ends as one of the states the two could make one after the
other; a batch that fails runs each payment alone, and a payment whose own transaction
fails is still recorded (the failsafe of seed 003)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import asyncpg
import httpx
import pytest

from stockguard.api.app import build_app
from stockguard.config import Settings
from stockguard.domain.errors import (
    InvalidTransition,
    NotFound,
    PaymentReused,
    StockguardError,
    ValidationFailed,
)
from stockguard.domain.model import OrderStatus
from stockguard.service import orders
from stockguard.service.expiry import expire_order
from stockguard.service.orders import PaymentProof, PayOrder, Placed, PlaceOrder, place_orders
from stockguard.service.payment_batcher import PaymentBatcher
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.orders import OrderRecord
from tests.conftest import Keys, Stocker
from tests.helpers import (
    app_client,
    assert_cache_parity,
    assert_invariants,
    assert_replayed,
    expire_now,
    holding_locks,
    level,
    log_actions,
    make_overdue,
    race,
)

pytestmark = pytest.mark.race

RESERVATIONS_OF = "SELECT 1 FROM reservations WHERE order_id = ANY($1::text[]) FOR UPDATE"


@pytest.fixture
async def batched(
    settings: Settings, backends: Backends, api_keys: Keys
) -> AsyncIterator[tuple[httpx.AsyncClient, PaymentBatcher]]:
    """A client of an app of its own, so its batcher's counters are this test's."""
    app = build_app(settings.model_copy(update={"order_batching": True}), backends)
    batcher = app.state.payment_batcher
    assert isinstance(batcher, PaymentBatcher)
    async with app_client(app, api_keys.service) as c:
        yield c, batcher


async def _placed(
    backends: Backends, ids: list[str], sku: str, quantity: int = 2, total: int | None = None
) -> None:
    wanted = [PlaceOrder(i, ((sku, quantity),), total_amount=total) for i in ids]
    results = await place_orders(backends, wanted, "t")
    assert all(isinstance(r, Placed) for r in results), results


async def _committed_logs(pool: asyncpg.Pool, order_id: str) -> int:
    return await _count(
        pool, "order_inventory_logs", "order_id = $1 AND action = 'COMMITTED'", order_id
    )


async def _events(pool: asyncpg.Pool, event_type: str, order_id: str) -> int:
    return await _count(
        pool, "events", "type = $1 AND data -> 'order' ->> 'id' = $2", event_type, order_id
    )


async def _count(pool: asyncpg.Pool, table: str, where: str, *args: object) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args))


async def test_concurrent_payments_over_http_each_get_their_own_answer(
    batched: tuple[httpx.AsyncClient, PaymentBatcher],
    backends: Backends,
    stock: Stocker,
    uid: str,
) -> None:
    client, batcher = batched
    sku, loc = f"Y{uid}", f"w{uid}"
    await stock({sku: {loc: 100}})
    ids = [f"y{uid}-{i}" for i in range(30)]
    await _placed(backends, ids, sku, total=1000)
    # Orders in every state a payment can meet share the batches:
    cancelled, already, twice, mismatch, late, clash_a, clash_b = ids[:7]
    await orders.cancel_order(backends, cancelled, "t")
    await orders.pay_order(backends, already, PaymentProof("manual", f"a{uid}"), "t")
    await orders.pay_order(backends, twice, PaymentProof("manual", f"t{uid}"), "t")
    await expire_now(backends, late)
    assert await level(backends.pool, sku, loc) == (100, 56)

    def proof_of(order_id: str) -> dict[str, object]:
        if order_id == already:
            return {"provider": "manual", "payment_id": f"a{uid}"}  # the same proof again
        if order_id == twice:
            return {"provider": "manual", "payment_id": f"other{uid}"}  # a second payment
        if order_id == mismatch:
            return {"provider": "stripe", "payment_id": f"pi_m{uid}", "amount": 999}
        if order_id in (clash_a, clash_b):
            return {"provider": "stripe", "payment_id": f"pi_clash{uid}"}  # one proof, two orders
        return {"provider": "stripe", "payment_id": f"pi_{order_id}", "amount": 1000}

    def pay(order_id: str, i: int) -> Callable[[], Awaitable[httpx.Response]]:
        headers = {"Idempotency-Key": f"k{uid}-{i}"} if i % 2 else {}
        path = f"/v1/orders/{order_id}/payments"
        return partial(client.post, path, json=proof_of(order_id), headers=headers)

    targets = [*ids, f"nobody{uid}"]
    answers = await race(*(pay(o, i) for i, o in enumerate(targets)))
    got: dict[str, tuple[int, str]] = {}
    for order_id, r in zip(targets, answers, strict=True):
        assert isinstance(r, httpx.Response), r
        got[order_id] = (r.status_code, r.json()["status" if r.is_success else "code"])
    assert got.pop(cancelled) == (409, "invalid_transition")
    assert got.pop(f"nobody{uid}") == (404, "not_found")
    assert got.pop(already) == (200, "paid")
    assert got.pop(twice) == (200, "needs_review")
    assert got.pop(mismatch) == (200, "needs_review")
    assert got.pop(late) == (200, "paid")  # reserved again, then committed
    # The proof goes to whichever of the two orders came first; the other is refused.
    assert sorted([got.pop(clash_a), got.pop(clash_b)]) == [(200, "paid"), (409, "conflict")]
    assert set(got.values()) == {(200, "paid")}
    assert batcher.largest > 1  # decided together, not one by one
    assert batcher.batches < len(targets)

    # Every order paid now holds committed stock, committed once; nothing was released.
    for order_id in ids[1:]:
        order = await orders.get_order(backends, order_id)
        if order.status == OrderStatus.PAID:
            assert {r.status.value for r in order.reservations} >= {"committed"}
            assert all(r.status.value != "reserved" for r in order.reservations)
            assert await _committed_logs(backends.pool, order_id) == 1
            assert await _events(backends.pool, "order.paid", order_id) == 1
    assert await level(backends.pool, sku, loc) == (100, 58)  # the late order holds 2 again
    assert "INCONSISTENCY_DETECTED" in await log_actions(backends.pool, twice)
    assert "INCONSISTENCY_DETECTED" in await log_actions(backends.pool, mismatch)

    # The keyed requests again: the same answers, replayed from their keys.
    again = await race(*(pay(o, i) for i, o in enumerate(targets) if i % 2))
    assert_replayed(answers[1::2], again)
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_one_order_paid_by_many_at_once_commits_its_stock_once(
    batched: tuple[httpx.AsyncClient, PaymentBatcher],
    backends: Backends,
    stock: Stocker,
    uid: str,
) -> None:
    client, batcher = batched
    sku, loc = f"Z{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    await _placed(backends, [f"z{uid}", f"zz{uid}"], sku, 3)
    same = {"provider": "manual", "payment_id": f"m{uid}"}
    answers = await race(
        *(partial(client.post, f"/v1/orders/z{uid}/payments", json=same) for _ in range(12))
    )
    for r in answers:
        assert isinstance(r, httpx.Response), r
        assert (r.status_code, r.json()["status"]) == (200, "paid")
    assert batcher.largest == 1  # one order's payments never share a batch
    # Different proofs for one order: the first pays it, every later one is set aside.
    answers = await race(
        *(
            partial(
                client.post,
                f"/v1/orders/zz{uid}/payments",
                json={"provider": "manual", "payment_id": f"zz{uid}-{i}"},
            )
            for i in range(6)
        )
    )
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in answers)
    assert (
        await backends.pool.fetchval("SELECT status FROM orders WHERE id = $1", f"zz{uid}")
        == "needs_review"
    )
    for order_id in (f"z{uid}", f"zz{uid}"):
        assert await _committed_logs(backends.pool, order_id) == 1
        assert await _events(backends.pool, "order.paid", order_id) == 1
    assert await level(backends.pool, sku, loc) == (10, 6)
    await assert_invariants(backends.pool)


async def test_batched_payments_race_the_expiry_of_their_orders(
    batched: tuple[httpx.AsyncClient, PaymentBatcher],
    backends: Backends,
    stock: Stocker,
    uid: str,
) -> None:
    """Overdue orders paid while the expiry takes them: paid with their stock committed
    (reserved again if the expiry came first) or, when it is gone, set aside for review;
    never paid with their units given back."""
    client, _ = batched
    sku, loc = f"E{uid}", f"w{uid}"
    await stock({sku: {loc: 30}})
    ids = [f"e{uid}-{i}" for i in range(10)]
    await _placed(backends, ids, sku)
    for order_id in ids:
        await make_overdue(backends.pool, order_id)
    contenders: list[Callable[[], Awaitable[object]]] = []
    for order_id in ids:
        contenders.append(
            partial(
                client.post,
                f"/v1/orders/{order_id}/payments",
                json={"provider": "manual", "payment_id": f"pay-{order_id}"},
            )
        )
        contenders.append(partial(expire_order, backends, order_id))
    outcomes = await race(*contenders)
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    for order_id in ids:
        order = await orders.get_order(backends, order_id)
        assert order.status == OrderStatus.PAID, order.status
        assert sum(r.quantity for r in order.reservations if r.status.value == "committed") == 2
    assert await level(backends.pool, sku, loc) == (30, 20)
    await assert_invariants(backends.pool)


async def test_decide_payments_answers_each_as_it_would_alone(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """The service call itself, with refusals the HTTP model keeps out."""
    sku = f"D{uid}"
    await stock({sku: {f"w{uid}": 5}})
    await _placed(backends, [f"d{uid}-0", f"d{uid}-1"], sku, 1)

    async def body(uow: UnitOfWork) -> list[OrderRecord | StockguardError]:
        return await orders.decide_payments(
            uow,
            [
                PayOrder(f"d{uid}-0", PaymentProof("manual", "")),
                PayOrder(f"d{uid}-1", PaymentProof("manual", f"p{uid}")),
                PayOrder(f"nobody{uid}", PaymentProof("manual", f"q{uid}")),
            ],
        )

    empty, paid, missing = await run(backends, "t", body, operation="test")
    assert isinstance(empty, ValidationFailed)
    assert isinstance(paid, OrderRecord)
    assert paid.status == OrderStatus.PAID
    assert isinstance(missing, NotFound)
    # A proof recorded on another order is refused, in a batch as alone.
    batcher = PaymentBatcher(lambda: backends)
    reused = await batcher.pay(PayOrder(f"d{uid}-0", PaymentProof("manual", f"p{uid}")), "t")
    assert isinstance(reused, PaymentReused)
    assert isinstance(
        await batcher.alone(
            backends, PayOrder(f"d{uid}-0", PaymentProof("manual", f"p{uid}")), "t"
        ),
        PaymentReused,
    )
    await orders.cancel_order(backends, f"d{uid}-0", "t")
    gone = await batcher.pay(PayOrder(f"d{uid}-0", PaymentProof("manual", f"r{uid}")), "t")
    assert isinstance(gone, InvalidTransition)
    await assert_invariants(backends.pool)


async def test_a_payment_whose_transaction_fails_is_recorded_all_the_same(
    backends: Backends, impatient: Backends, stock: Stocker, uid: str
) -> None:
    """One order's reservations are locked elsewhere past the lock timeout: its batch
    fails, the others are paid alone, and it is recorded paid with its stock left for the
    recovery worker (never released); alone in its batch, the same."""
    sku, loc = f"F{uid}", f"w{uid}"
    await stock({sku: {loc: 20}})
    ids = [f"f{uid}-{i}" for i in range(4)]
    await _placed(backends, [*ids, f"g{uid}"], sku, 1)
    batcher = PaymentBatcher(lambda: impatient, lanes=1)  # the four in one batch

    def request(order_id: str) -> PayOrder:
        return PayOrder(order_id, PaymentProof("stripe", f"pi_{order_id}"))

    async with holding_locks(backends.pool, RESERVATIONS_OF, [ids[2], f"g{uid}"]):
        results = await _results(batcher, [request(o) for o in ids])
        alone = await _results(batcher, [request(f"g{uid}")])
    assert [isinstance(r, OrderRecord) for r in results] == [True, True, False, True]
    assert batcher.batches == 0  # the batch of four failed: each was run alone
    assert isinstance(results[2], asyncpg.LockNotAvailableError)
    assert isinstance(alone[0], asyncpg.LockNotAvailableError)
    for order_id in (ids[2], f"g{uid}"):
        order = await orders.get_order(backends, order_id)
        assert (order.status, order.payment_id) == (OrderStatus.PAID, f"pi_{order_id}")
        assert [r.status.value for r in order.reservations] == ["reserved"]
        assert "INCONSISTENCY_DETECTED" in await log_actions(backends.pool, order_id)
    assert await level(backends.pool, sku, loc) == (20, 5)
    await assert_invariants(backends.pool)


async def _results(
    batcher: PaymentBatcher, requests: list[PayOrder]
) -> list[OrderRecord | StockguardError | BaseException]:
    return list(
        await asyncio.gather(*(batcher.pay(r, "t") for r in requests), return_exceptions=True)
    )
