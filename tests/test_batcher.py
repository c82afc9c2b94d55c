"""Group commit of placements (DESIGN.md §10): many concurrent placements over HTTP and
through the batcher, released together by a barrier; every client's answer matches the
data, refusals carry their own shortages, repeats answer 200, and a request that breaks
its batch is run alone without taking the others down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest

from stockguard.api.app import build_app
from stockguard.api.auth import KnownKeys
from stockguard.cache.breaker import CacheBreaker
from stockguard.config import Settings
from stockguard.domain.errors import OutOfStock
from stockguard.service import catalogue
from stockguard.service.batcher import Outcome, PlacementBatcher
from stockguard.service.idempotency import Answer, Claim, KeyAnswered, close_claim, open_claim
from stockguard.service.orders import Placed, PlaceOrder
from stockguard.service.uow import Backends
from stockguard.store import keys
from tests.conftest import Keys, Stocker
from tests.helpers import app_client, assert_cache_parity, assert_invariants, level, race

pytestmark = pytest.mark.race


@pytest.fixture
async def batched(
    settings: Settings, backends: Backends, api_keys: Keys
) -> AsyncIterator[tuple[httpx.AsyncClient, PlacementBatcher]]:
    """A client of an app of its own, so its batcher's counters are this test's."""
    app = build_app(settings.model_copy(update={"order_batching": True}), backends)
    batcher = app.state.batcher
    assert isinstance(batcher, PlacementBatcher)
    async with app_client(app, api_keys.service) as c:
        yield c, batcher


def _order(uid: str, i: int, sku: str) -> dict[str, Any]:
    return {"id": f"o{uid}-{i}", "lines": [{"sku": sku, "quantity": 1 + i % 3}]}


async def test_hot_sku_buyers_over_http_each_get_their_own_answer(
    batched: tuple[httpx.AsyncClient, PlacementBatcher], stock: Stocker, uid: str
) -> None:
    client, batcher = batched
    sku, loc = f"H{uid}", f"w{uid}"
    units = 40
    await stock({sku: {loc: units}})
    bodies = [_order(uid, i, sku) for i in range(120)]
    post = client.post

    async def buy(body: dict[str, Any]) -> httpx.Response:
        return await post("/v1/orders", json=body, headers={"Idempotency-Key": body["id"]})

    answers = await race(*(partial(buy, b) for b in bodies))
    assert all(isinstance(a, httpx.Response) for a in answers), answers
    responses: list[httpx.Response] = answers  # type: ignore[assignment]
    won = [b for b, r in zip(bodies, responses, strict=True) if r.status_code == 201]
    for b, r in zip(bodies, responses, strict=True):
        assert r.status_code in (201, 409), r.text
        wanted = b["lines"][0]["quantity"]
        if r.status_code == 201:
            assert r.json()["id"] == b["id"]
            assert r.json()["lines"][0]["quantity"] == wanted
        else:
            problem = r.json()
            assert problem["code"] == "out_of_stock"
            (short,) = problem["shortages"]
            assert short["sku"] == sku
            assert short["requested"] == wanted
            assert short["available"] < wanted
    sold = sum(b["lines"][0]["quantity"] for b in won)
    assert await level(client_pool(batched), sku, loc) == (units, sold)
    assert units - sold < 3  # refused only when what was left could not fit
    stored = await client_pool(batched).fetch("SELECT id FROM orders WHERE id LIKE $1", f"o{uid}-%")
    assert {r["id"] for r in stored} == {b["id"] for b in won}
    assert batcher.largest > 1  # they were decided together, not one by one
    assert batcher.batches < len(bodies)

    # The same requests again: the same answers, replayed from their keys.
    again = await race(*(partial(buy, b) for b in bodies))
    for first, second in zip(responses, again, strict=True):
        assert isinstance(second, httpx.Response)
        assert (second.status_code, second.content) == (first.status_code, first.content)
        assert second.headers.get("Idempotent-Replayed") == "true"

    # Without keys: the winners' ids answer 200 with their orders, decided in batches.
    repeats = await race(*(partial(post, "/v1/orders", json=b) for b in won))
    for b, repeat in zip(won, repeats, strict=True):
        assert isinstance(repeat, httpx.Response)
        assert repeat.status_code == 200, repeat.text
        assert repeat.json()["id"] == b["id"]
    assert await level(client_pool(batched), sku, loc) == (units, sold)
    await assert_cache_parity(batcher_backends(batched), [sku])
    await assert_invariants(client_pool(batched))


def batcher_backends(batched: tuple[httpx.AsyncClient, PlacementBatcher]) -> Backends:
    backends: Backends = batched[1]._backends()
    return backends


def client_pool(batched: tuple[httpx.AsyncClient, PlacementBatcher]) -> Any:
    return batcher_backends(batched).pool


async def test_same_id_twice_at_once_one_201_one_200_and_other_content_conflicts(
    batched: tuple[httpx.AsyncClient, PlacementBatcher], stock: Stocker, uid: str
) -> None:
    client, _ = batched
    sku = f"D{uid}"
    await stock({sku: {f"w{uid}": 10}})
    body = {"id": f"d{uid}", "lines": [{"sku": sku, "quantity": 2}]}
    other = {"id": f"d{uid}", "lines": [{"sku": sku, "quantity": 3}]}
    sent = (body, body, other)
    answers = await race(*(partial(client.post, "/v1/orders", json=b) for b in sent))
    codes = [a.status_code for a in answers if isinstance(a, httpx.Response)]
    # Whichever content came first is placed; the same content again answers 200 with
    # it, the other content is a conflict.
    if codes[2] == 201:
        assert codes == [409, 409, 201]
        held = 3
    else:
        assert sorted(codes[:2]) == [200, 201], answers
        assert codes[2] == 409
        held = 2
    for a, code in zip(answers, codes, strict=True):
        assert isinstance(a, httpx.Response)
        if code == 409:
            assert a.json()["code"] == "conflict"
        else:
            assert a.json()["lines"][0]["quantity"] == held
    assert await level(client_pool(batched), sku, f"w{uid}") == (10, held)


async def test_unknown_channel_in_a_batch_is_refused_alone(
    batched: tuple[httpx.AsyncClient, PlacementBatcher], stock: Stocker, uid: str
) -> None:
    client, _ = batched
    sku = f"U{uid}"
    await stock({sku: {f"w{uid}": 10}})
    bodies = [{"id": f"u{uid}-{i}", "lines": [{"sku": sku, "quantity": 1}]} for i in range(5)]
    bodies[2]["channel"] = f"nochannel{uid}"
    answers = await race(*(partial(client.post, "/v1/orders", json=b) for b in bodies))
    codes = [a.status_code for a in answers if isinstance(a, httpx.Response)]
    assert codes == [201, 201, 422, 201, 201]
    assert await level(client_pool(batched), sku, f"w{uid}") == (10, 4)


async def test_lone_request_goes_at_once_in_a_batch_of_its_own(
    batched: tuple[httpx.AsyncClient, PlacementBatcher], stock: Stocker, uid: str
) -> None:
    client, batcher = batched
    sku = f"A{uid}"
    await stock({sku: {f"w{uid}": 10}})
    for i in range(3):
        started = time.perf_counter()
        r = await client.post(
            "/v1/orders", json={"id": f"a{uid}-{i}", "lines": [{"sku": sku, "quantity": 1}]}
        )
        assert r.status_code == 201
        assert time.perf_counter() - started < 1.0
    assert (batcher.batches, batcher.decided, batcher.largest) == (3, 3, 1)


def _claimed(uid: str, key: str) -> Claim:
    def render(outcome: Outcome) -> Answer:
        status = 201 if isinstance(outcome, Placed) else 409
        return Answer(status, "application/json", str(status).encode())

    return Claim(owner=f"owner{uid}", key=key, fingerprint="f", render=render)


async def _with_claim(batcher: PlacementBatcher, claim: Claim, req: PlaceOrder) -> Outcome:
    token = open_claim(claim)
    try:
        return await batcher.place(req, "t")
    finally:
        close_claim(token)


async def test_keys_of_a_batch_are_stored_with_its_effect_and_a_taken_key_replays(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku = f"K{uid}"
    await stock({sku: {f"w{uid}": 2}})
    # Another transaction answered key k1 already.
    await backends.pool.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status_code, content_type, "
        "body) VALUES ($1, 'k1', 'f', 201, 'application/json', '\\x00')",
        f"owner{uid}",
    )
    batcher = PlacementBatcher(lambda: backends)
    claims = [_claimed(uid, f"k{i}") for i in range(4)]
    reqs = [PlaceOrder(f"k{uid}-{i}", ((sku, 1),)) for i in range(4)]
    results = await asyncio.gather(
        *(_with_claim(batcher, c, r) for c, r in zip(claims, reqs, strict=True)),
        return_exceptions=True,
    )
    assert isinstance(results[0], Placed)
    assert isinstance(results[1], KeyAnswered)
    assert isinstance(results[2], Placed)
    assert isinstance(results[3], OutOfStock)
    assert (batcher.batches, batcher.largest) == (1, 4)
    rows = await backends.pool.fetch(
        "SELECT key, status_code, body FROM idempotency_keys WHERE scope = $1 ORDER BY key",
        f"owner{uid}",
    )
    assert [(r["key"], r["status_code"], bytes(r["body"])) for r in rows] == [
        ("k0", 201, b"201"),
        ("k1", 201, b"\x00"),
        ("k2", 201, b"201"),
        ("k3", 409, b"409"),
    ]
    assert [c.answer.status if c.answer else None for c in claims] == [201, None, 201, 409]
    assert all(c.done for c in claims)


async def test_a_request_that_breaks_its_batch_is_run_alone(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku = f"B{uid}"
    await stock({sku: {f"w{uid}": 10}})
    batcher = PlacementBatcher(lambda: backends)
    reqs = [PlaceOrder(f"b{uid}-{i}", ((sku, 1),)) for i in range(5)]
    # An amount PostgreSQL cannot store: the batch's insert fails as a whole.
    reqs[3] = PlaceOrder(f"b{uid}-3", ((sku, 1),), total_amount=2**70, currency="EUR")
    results = await asyncio.gather(*(batcher.place(r, "t") for r in reqs), return_exceptions=True)
    assert [type(r).__name__ for r in results][:3] == ["Placed"] * 3
    assert isinstance(results[4], Placed)
    assert not isinstance(results[3], Placed)
    assert await level(backends.pool, sku, f"w{uid}") == (10, 4)


async def test_sold_out_buyers_are_refused_from_the_cache_without_a_batch(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 1}})
    batcher = PlacementBatcher(lambda: backends)
    first = await asyncio.gather(
        *(batcher.place(PlaceOrder(f"s{uid}-{i}", ((sku, 1),)), "t") for i in range(3))
    )
    assert sum(isinstance(r, Placed) for r in first) == 1
    batches = batcher.batches
    winner = next(r for r in first if isinstance(r, Placed))
    # Buyers arriving together, judged together from the cache: new ones are refused; the
    # winner's id again is answered with its order and a used key with its answer, by a
    # batch (the cache alone cannot know them).
    await backends.pool.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status_code, content_type, "
        "body) VALUES ($1, 'used', 'f', 201, 'application/json', '\\x00')",
        f"owner{uid}",
    )
    later, *others, repeated, keyed = await asyncio.gather(
        batcher.place(PlaceOrder(f"s{uid}-x", ((sku, 2),)), "t"),
        *(batcher.place(PlaceOrder(f"s{uid}-z{i}", ((sku, 1),)), "t") for i in range(3)),
        batcher.place(PlaceOrder(winner.order.id, ((sku, 1),)), "t"),
        _with_claim(batcher, _claimed(uid, "used"), PlaceOrder(f"s{uid}-k", ((sku, 1),))),
        return_exceptions=True,
    )
    assert isinstance(later, OutOfStock)
    assert later.extra["shortages"] == [{"sku": sku, "requested": 2, "available": 0}]
    assert all(isinstance(o, OutOfStock) for o in others)
    assert isinstance(repeated, Placed)
    assert not repeated.created
    assert isinstance(keyed, KeyAnswered)
    assert batcher.batches == batches + 1  # the repeats' batch; the others from the cache
    batches = batcher.batches
    # Units come back: the next buyer is not refused from a stale memory.
    await catalogue.adjust_stock(
        backends, catalogue.Adjustment(sku=sku, location=loc, reason="received", delta=2), "t"
    )
    again = await batcher.place(PlaceOrder(f"s{uid}-y", ((sku, 2),)), "t")
    assert isinstance(again, Placed)
    assert batcher.batches == batches + 1


async def test_batching_off_places_one_by_one(
    settings: Settings, backends: Backends, api_keys: Keys, stock: Stocker, uid: str
) -> None:
    app = build_app(settings.model_copy(update={"order_batching": False}), backends)
    assert app.state.batcher is None
    sku = f"O{uid}"
    await stock({sku: {f"w{uid}": 1}})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://stockguard.test",
        headers={"Authorization": f"Bearer {api_keys.service}"},
    ) as c:
        body = {"id": f"off{uid}", "lines": [{"sku": sku, "quantity": 1}]}
        first = await c.post("/v1/orders", json=body, headers={"Idempotency-Key": f"off{uid}"})
        again = await c.post("/v1/orders", json=body)
        refused = await c.post("/v1/orders", json={**body, "id": f"off2{uid}"})
    assert (first.status_code, again.status_code, refused.status_code) == (201, 200, 409)


async def test_a_failure_of_every_request_fails_the_whole_batch(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku = f"F{uid}"
    await stock({sku: {f"w{uid}": 10}})
    broken = Backends(
        backends.pool,
        backends.cache,
        backends.cache_mode,
        backends.redis_timeout,
        CacheBreaker(cooldown=60),
    )
    broken.breaker.failed()  # the cache failed a moment ago: strict mode refuses to write
    batcher = PlacementBatcher(lambda: broken)
    results = await asyncio.gather(
        *(batcher.place(PlaceOrder(f"f{uid}-{i}", ((sku, 1),)), "t") for i in range(3)),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == ["CacheUnavailable"] * 3
    await batcher.drain()
    assert await level(backends.pool, sku, f"w{uid}") == (10, 0)
    with pytest.raises(ValueError, match="at least 1"):
        PlacementBatcher(lambda: backends, lanes=0)


async def test_a_key_revoked_through_one_process_is_refused_by_another_within_a_second(
    settings: Settings, backends: Backends, api_keys: Keys, uid: str
) -> None:
    first, second = build_app(settings, backends), build_app(settings, backends)
    async with backends.pool.acquire() as conn:
        made, clear = await keys.create_key(conn, "service", f"revoked{uid}")
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://stockguard.test",
            headers={"Authorization": f"Bearer {clear}"},
        )
        for app in (first, second)
    ]
    async with clients[0] as one, clients[1] as other:
        assert (await other.get("/v1/locations")).status_code == 200
        known = _known_keys(second)
        lookups = known.lookups
        for _ in range(20):  # a known key: no database round trip each time
            assert (await other.get("/v1/locations")).status_code == 200
        assert known.lookups - lookups <= 2
        revoked = await one.delete(
            f"/v1/admin/api-keys/{made.id}",
            headers={"Authorization": f"Bearer {api_keys.admin}"},
        )
        assert revoked.status_code == 204, revoked.text
        deadline = time.monotonic() + 1.0
        status = 200
        while status == 200 and time.monotonic() < deadline:
            status = (await other.get("/v1/locations")).status_code
        assert status == 401
        assert (await one.get("/v1/locations")).status_code == 401


def _known_keys(app: Any) -> KnownKeys:
    known: KnownKeys = app.state.known_keys
    return known
