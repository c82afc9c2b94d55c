"""The fast lanes of the flooded routes (api/fast_lane.py): the plain case is answered
there, everything else is handed on to the FastAPI route, and an app with the lanes answers
every request byte for byte as the same app without them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from stockguard.api.app import build_app
from stockguard.api.fast_lane import FastLane
from stockguard.config import Settings
from stockguard.service.uow import Backends
from tests.conftest import Keys, Stocker
from tests.helpers import app_client, assert_cache_parity, assert_invariants

JSON = {"Content-Type": "application/json"}


@dataclass
class Pair:
    lanes: httpx.AsyncClient  # the app as served
    plain: httpx.AsyncClient  # the same app without its lanes
    place: FastLane
    cancel: FastLane
    pay: FastLane

    def counts(self) -> tuple[int, int, int, int]:
        p, c = self.place, self.cancel
        return p.taken, p.handed_on, c.taken, c.handed_on

    def paid(self) -> tuple[int, int]:
        return self.pay.taken, self.pay.handed_on


def _without_lanes(app: FastAPI) -> FastAPI:
    app.router.routes[:] = [r for r in app.router.routes if not isinstance(r, FastLane)]
    return app


@pytest.fixture(params=[True, False], ids=["batched", "unbatched"])
async def pair(
    request: pytest.FixtureRequest, settings: Settings, backends: Backends, api_keys: Keys
) -> AsyncIterator[Pair]:
    s = settings.model_copy(update={"order_batching": request.param})
    app = build_app(s, backends)
    place, cancel, pay = app.state.fast_lanes
    plain = _without_lanes(build_app(s, backends))
    async with app_client(app, api_keys.service) as a, app_client(plain, api_keys.service) as b:
        yield Pair(a, b, place, cancel, pay)


async def _same(
    pair: Pair, path: str, *, content: bytes | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    """The request sent to both apps: the same status, headers and bytes."""
    got = await pair.lanes.post(path, content=content, headers=headers)
    want = await pair.plain.post(path, content=content, headers=headers)
    assert got.status_code == want.status_code, (got.text, want.text)
    assert got.content == want.content
    assert sorted(got.headers.items()) == sorted(want.headers.items())
    return got


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


async def test_plain_orders_and_cancels_take_the_lane_and_answer_as_the_route(
    pair: Pair, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"FL{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    order = {"id": f"fl{uid}", "lines": [{"sku": sku, "quantity": 2}]}

    placed = await pair.lanes.post("/v1/orders", content=_body(order), headers=JSON)
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] == "pending"
    assert pair.counts() == (1, 0, 0, 0)
    # The same order again: 200 with the order as stored, the same from either app.
    again = await _same(pair, "/v1/orders", content=_body(order), headers=JSON)
    assert again.status_code == 200
    assert again.json()["id"] == order["id"]
    # Refused by the use case in the lane: its own shortage, the route's bytes.
    greedy = {"id": f"fl{uid}-x", "lines": [{"sku": sku, "quantity": 4}]}
    short = await _same(pair, "/v1/orders", content=_body(greedy), headers=JSON)
    assert short.status_code == 409
    assert short.json()["type"].endswith("out_of_stock")
    unknown = {"id": f"fl{uid}-u", "lines": [{"sku": f"NO{uid}", "quantity": 1}]}
    assert (await _same(pair, "/v1/orders", content=_body(unknown), headers=JSON)).is_error
    assert pair.counts() == (4, 0, 0, 0)

    # A cancel without a body, with a reason; an unknown order; charset in the type.
    gone = await pair.lanes.post(f"/v1/orders/{order['id']}/cancel")
    assert gone.status_code == 200, gone.text
    assert gone.json()["status"] == "cancelled"
    twice = await _same(
        pair,
        f"/v1/orders/{order['id']}/cancel",
        content=_body({"reason": "changed my mind"}),
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert twice.json()["status"] == "cancelled"
    missing = await _same(pair, f"/v1/orders/none{uid}/cancel")
    assert missing.status_code == 404
    assert pair.counts() == (4, 0, 3, 0)
    assert (
        await backends.pool.fetchval("SELECT count(*) FROM orders WHERE id LIKE $1", f"fl{uid}%")
        == 1
    )
    await assert_invariants(backends.pool)
    await assert_cache_parity(backends, [sku])


# Input the lane does not take: the FastAPI route answers it, as it would without the lane.
ORDER_REFUSALS: list[tuple[bytes | None, dict[str, str] | None]] = [
    (b"{", JSON),  # not JSON
    (b'{"lines": [], "lines": []}', JSON),  # a key twice (strictjson)
    (b'{"lines": []}', JSON),  # no line
    (b'{"lines": [{"sku": "A", "quantity": 0}]}', JSON),  # the model refuses it
    (b'{"lines": [{"sku": "A", "quantity": "1"}]}', JSON),  # strict: no string numbers
    (b'{"lines": [{"sku": "A", "quantity": 1}], "colour": "red"}', JSON),  # unknown field
    (b"[1, 2]", JSON),  # not an object
    (b'{"lines": [{"sku": "A", "quantity": 1}]}', {"Content-Type": "text/plain"}),
    (b'{"lines": [{"sku": "A", "quantity": 1}]}', None),  # no content type
    (b"", JSON),  # no body
    (b"[" * 5000 + b"]" * 5000, JSON),  # too deep
]


@pytest.mark.parametrize(("content", "headers"), ORDER_REFUSALS)
async def test_orders_the_lane_does_not_take_are_answered_by_the_route(
    pair: Pair, content: bytes | None, headers: dict[str, str] | None
) -> None:
    refused = await _same(pair, "/v1/orders", content=content, headers=headers)
    assert refused.status_code in (400, 415, 422), refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert pair.counts() == (0, 1, 0, 0)


CANCEL_REFUSALS: list[tuple[str, bytes | None, dict[str, str] | None]] = [
    ("...", None, None),  # only dots: not an order id
    ("x" * 300, None, None),  # too long
    ("o1", b'{"reason": 5}', JSON),
    ("o1", b'{"reason": "x", "why": 1}', JSON),
    ("o1", b"null", JSON),
    ("o1", b'{"reason": "x"}', {"Content-Type": "text/plain"}),
    ("o1", b"{", JSON),
]


@pytest.mark.parametrize(("order_id", "content", "headers"), CANCEL_REFUSALS)
async def test_cancels_the_lane_does_not_take_are_answered_by_the_route(
    pair: Pair, order_id: str, content: bytes | None, headers: dict[str, str] | None, uid: str
) -> None:
    path = f"/v1/orders/{order_id}{uid if order_id == 'o1' else ''}/cancel"
    refused = await _same(pair, path, content=content, headers=headers)
    assert refused.status_code in (404, 415, 422), refused.text
    assert pair.counts()[2:] == (0, 1)


async def test_without_a_key_the_lane_is_never_reached(
    pair: Pair, settings: Settings, backends: Backends
) -> None:
    order = _body({"lines": [{"sku": "A", "quantity": 1}]})
    for path in ("/v1/orders", "/v1/orders/o1/cancel", "/v1/orders/o1/payments"):
        anonymous = await pair.lanes.post(
            path, content=order, headers={**JSON, "Authorization": ""}
        )
        assert anonymous.status_code == 401
    assert pair.counts() == (0, 0, 0, 0)
    assert pair.paid() == (0, 0)
    # Other methods and paths are not the lanes': they are never asked.
    await pair.lanes.get("/v1/orders/o1")
    await pair.lanes.post("/v1/orders/o1/status", content=b"{}", headers=JSON)
    await pair.lanes.get("/v1/orders/o1/payments")
    assert pair.counts() == (0, 0, 0, 0)
    assert pair.paid() == (0, 0)


async def test_a_keyed_order_in_the_lane_is_replayed_by_either_app(
    pair: Pair, stock: Stocker, uid: str
) -> None:
    sku = f"FK{uid}"
    await stock({sku: {f"w{uid}": 3}})
    order = _body({"lines": [{"sku": sku, "quantity": 1}]})  # no id: the key makes it one
    keyed = {**JSON, "Idempotency-Key": f"k{uid}"}
    first = await pair.lanes.post("/v1/orders", content=order, headers=keyed)
    assert first.status_code == 201, first.text
    assert pair.counts() == (1, 0, 0, 0)
    for client in (pair.lanes, pair.plain):
        replayed = await client.post("/v1/orders", content=order, headers=keyed)
        assert replayed.content == first.content
        assert replayed.headers["idempotent-replayed"] == "true"
    assert pair.counts() == (1, 0, 0, 0)  # replays are answered before any route


async def test_plain_payments_take_the_lane_and_answer_as_the_route(
    pair: Pair, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku = f"FP{uid}"
    await stock({sku: {f"w{uid}": 5}})
    for n in (1, 2):
        order = {"id": f"fp{uid}-{n}", "lines": [{"sku": sku, "quantity": 1}], "total_amount": 500}
        assert (await pair.lanes.post("/v1/orders", content=_body(order), headers=JSON)).is_success
    proof = {"provider": "stripe", "payment_id": f"pi_{uid}", "amount": 500}
    first = await pair.lanes.post(
        f"/v1/orders/fp{uid}-1/payments", content=_body(proof), headers=JSON
    )
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "paid"
    assert [r["status"] for r in first.json()["reservations"]] == ["committed"]
    assert pair.paid() == (1, 0)
    # The same proof again: the order as it is, from either app.
    again = await _same(pair, f"/v1/orders/fp{uid}-1/payments", content=_body(proof), headers=JSON)
    assert again.json() == first.json()
    # The proof for another order: refused with the same bytes by either app.
    reused = await _same(pair, f"/v1/orders/fp{uid}-2/payments", content=_body(proof), headers=JSON)
    assert reused.status_code == 409
    missing = await _same(
        pair, f"/v1/orders/none{uid}/payments", content=_body(proof), headers=JSON
    )
    assert missing.status_code == 404
    assert pair.paid() == (4, 0)
    assert (
        await backends.pool.fetchval("SELECT status FROM orders WHERE id = $1", f"fp{uid}-2")
        == "pending"
    )
    await assert_invariants(backends.pool)
    await assert_cache_parity(backends, [sku])


PAYMENT_REFUSALS: list[tuple[str, bytes | None, dict[str, str] | None]] = [
    ("...", _body({"provider": "manual", "payment_id": "p"}), JSON),  # not an order id
    ("o1", None, None),  # no body
    ("o1", b"{}", JSON),  # the model refuses it
    ("o1", _body({"provider": "paypal", "payment_id": "p"}), JSON),
    ("o1", _body({"provider": "manual", "payment_id": "p", "amount": "5"}), JSON),
    ("o1", _body({"provider": "manual", "payment_id": "p"}), {"Content-Type": "text/plain"}),
    ("o1", b"{", JSON),
]


@pytest.mark.parametrize(("order_id", "content", "headers"), PAYMENT_REFUSALS)
async def test_payments_the_lane_does_not_take_are_answered_by_the_route(
    pair: Pair, order_id: str, content: bytes | None, headers: dict[str, str] | None, uid: str
) -> None:
    path = f"/v1/orders/{order_id}{uid if order_id == 'o1' else ''}/payments"
    refused = await _same(pair, path, content=content, headers=headers)
    assert refused.status_code in (404, 415, 422), refused.text
    assert pair.paid() == (0, 1)
