"""Strict validation (API.md "Validation is strict"): every bad input is 422
``validation_error`` problem+json and changes nothing; the bounds themselves are accepted."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import level
from tests.test_api_problems import assert_problem, order_count


def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _line(sku: str, quantity: object = 1) -> dict[str, object]:
    return {"sku": sku, "quantity": quantity}


# Each case: (id, function of the SKU -> order body). All are refused before any stock moves.
BAD_ORDERS: list[tuple[str, object]] = [
    ("quantity 0", lambda s: {"lines": [_line(s, 0)]}),
    ("quantity negative", lambda s: {"lines": [_line(s, -1)]}),
    ("quantity 1_000_001", lambda s: {"lines": [_line(s, 1_000_001)]}),
    ("quantity string", lambda s: {"lines": [_line(s, "3")]}),
    ("quantity float", lambda s: {"lines": [_line(s, 3.0)]}),
    ("quantity true", lambda s: {"lines": [_line(s, True)]}),
    ("quantity null", lambda s: {"lines": [_line(s, None)]}),
    ("quantity missing", lambda s: {"lines": [{"sku": s}]}),
    ("no lines", lambda s: {"lines": []}),
    ("lines missing", lambda s: {}),
    ("lines not a list", lambda s: {"lines": _line(s)}),
    ("501 lines", lambda s: {"lines": [_line(s)] * 501}),
    ("sku with space", lambda s: {"lines": [_line(s), _line("a b")]}),
    ("sku with slash", lambda s: {"lines": [_line(s), _line("x/y")]}),
    ("sku 65 chars", lambda s: {"lines": [_line(s), _line("A" * 65)]}),
    ("sku empty", lambda s: {"lines": [_line(s), _line("")]}),
    ("sku not a string", lambda s: {"lines": [_line(s), {"sku": 12, "quantity": 1}]}),
    ("unknown field", lambda s: {"lines": [_line(s)], "note": "hi"}),
    ("unknown line field", lambda s: {"lines": [{**_line(s), "price": 3}]}),
    ("ttl 0", lambda s: {"lines": [_line(s)], "reservation_ttl_seconds": 0}),
    ("ttl 86401", lambda s: {"lines": [_line(s)], "reservation_ttl_seconds": 86_401}),
    ("ttl string", lambda s: {"lines": [_line(s)], "reservation_ttl_seconds": "900"}),
    ("order id with space", lambda s: {"id": "a b", "lines": [_line(s)]}),
    ("order id 65 chars", lambda s: {"id": "o" * 65, "lines": [_line(s)]}),
    ("channel uppercase", lambda s: {"lines": [_line(s)], "channel": "WEB"}),
    ("preferred location uppercase", lambda s: {"lines": [_line(s)], "preferred_locations": ["A"]}),
    ("allow_split string", lambda s: {"lines": [_line(s)], "allow_split": "yes"}),
    ("total_amount negative", lambda s: {"lines": [_line(s)], "total_amount": -1}),
    ("total_amount float", lambda s: {"lines": [_line(s)], "total_amount": 9.99}),
    ("currency 4 letters", lambda s: {"lines": [_line(s)], "currency": "EURO"}),
    ("currency digits", lambda s: {"lines": [_line(s)], "currency": "978"}),
    ("body is a list", lambda s: [{"lines": [_line(s)]}]),
]


@pytest.mark.parametrize("make", [c[1] for c in BAD_ORDERS], ids=[c[0] for c in BAD_ORDERS])
async def test_bad_order_is_refused_and_nothing_changes(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str, make: object
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 1_000_000}})
    assert callable(make)
    body = make(sku)
    r = await client.post("/v1/orders", json=body)
    problem = assert_problem(r, 422, "validation_error")
    assert isinstance(problem.get("errors", []), list)
    assert await level(backends.pool, sku, loc) == (1_000_000, 0)
    assert await order_count(backends.pool, sku) == 0


async def test_unknown_channel_is_refused_and_nothing_changes(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    r = await client.post("/v1/orders", json={"lines": [_line(sku)], "channel": f"nope{uid}"})
    assert_problem(r, 422, "validation_error")
    assert await level(backends.pool, sku, loc) == (5, 0)
    assert await order_count(backends.pool, sku) == 0


async def test_malformed_json_is_a_validation_error(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    for raw in (
        b'{"lines": [{"sku": "' + sku.encode() + b'", "quantity": 1}',
        b"not json",
        b"",
        b'{"lines": [{"sku": "' + sku.encode() + b'", "quantity": 1}]}}',
    ):
        r = await client.post(
            "/v1/orders", content=raw, headers={"content-type": "application/json"}
        )
        assert_problem(r, 422, "validation_error")
    assert await level(backends.pool, sku, loc) == (5, 0)
    assert await order_count(backends.pool, sku) == 0


async def test_bounds_are_accepted(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    edge = f"{uid}.A-b_c:" + "z" * (64 - len(uid) - 7)
    assert len(edge) == 64
    await stock({sku: {loc: 1_000_000}, edge: {loc: 1}})
    big = await client.post(
        "/v1/orders", json={"lines": [_line(sku, 1_000_000)], "reservation_ttl_seconds": 86_400}
    )
    assert big.status_code == 201, big.text
    assert big.json()["lines"] == [{"sku": sku, "quantity": 1_000_000}]
    assert await level(backends.pool, sku, loc) == (1_000_000, 1_000_000)
    cancelled = await client.post(f"/v1/orders/{big.json()['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    many = await client.post(
        "/v1/orders",
        json={"id": f"m{uid}", "lines": [_line(sku)] * 500, "reservation_ttl_seconds": 1},
    )
    assert many.status_code == 201, many.text
    assert len(many.json()["lines"]) == 500
    assert await level(backends.pool, sku, loc) == (1_000_000, 500)
    short = await client.post("/v1/orders", json={"id": "o" * 64, "lines": [_line(edge)]})
    assert short.status_code == 201, short.text
    assert short.json()["id"] == "o" * 64


async def test_quantity_above_stock_but_within_bounds_is_out_of_stock_not_invalid(
    client: httpx.AsyncClient, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 1}})
    r = await client.post("/v1/orders", json={"lines": [_line(sku, 1_000_000)]})
    body = assert_problem(r, 409, "out_of_stock")
    assert body["shortages"] == [{"sku": sku, "requested": 1_000_000, "available": 1}]


# ---------------------------------------------------------------- other bodies


async def test_bad_catalogue_writes_are_refused_and_create_nothing(
    client: httpx.AsyncClient, backends: Backends, uid: str
) -> None:
    cases: list[tuple[str, object]] = [
        (f"/v1/locations/W{uid}", {"name": "upper"}),
        (f"/v1/locations/w {uid}", {"name": "space"}),
        (f"/v1/locations/{'w' * 65}", {"name": "long"}),
        (f"/v1/locations/w{uid}", {"name": ""}),
        (f"/v1/locations/w{uid}", {"name": "x", "priority": "1"}),
        (f"/v1/locations/w{uid}", {"name": "x", "active": "true"}),
        (f"/v1/locations/w{uid}", {"name": "x", "colour": "red"}),
        (f"/v1/locations/w{uid}", {}),
        (f"/v1/channels/C{uid}", {"name": "upper", "locations": []}),
        (f"/v1/channels/c{uid}", {"name": "x", "locations": ["UPPER"]}),
        (f"/v1/channels/c{uid}", {"name": "x", "locations": [f"nowhere{uid}"]}),
        (f"/v1/skus/a b{uid}", {"name": "space"}),
        (f"/v1/skus/{'K' * 65}", {"name": "long"}),
        (f"/v1/skus/K{uid}", {"name": 5}),
        (f"/v1/skus/K{uid}", {"name": "x" * 201}),
    ]
    for path, body in cases:
        assert_problem(await client.put(path, json=body), 422, "validation_error")
    found = await backends.pool.fetchval(
        "SELECT (SELECT count(*) FROM locations WHERE code ILIKE $1) "
        "+ (SELECT count(*) FROM channels WHERE code ILIKE $1) "
        "+ (SELECT count(*) FROM skus WHERE code ILIKE $1)",
        f"%{uid}%",
    )
    assert found == 0


async def test_channel_listing_a_location_twice_is_refused(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    loc = f"w{uid}"
    await stock({}, locations={loc: 1})
    r = await client.put(f"/v1/channels/c{uid}", json={"name": "x", "locations": [loc, loc]})
    assert_problem(r, 422, "validation_error")
    assert await backends.pool.fetchval("SELECT 1 FROM channels WHERE code = $1", f"c{uid}") is None


@pytest.mark.parametrize(
    "body",
    [
        {"delta": 1, "set_on_hand": 4, "reason": "received"},
        {"reason": "received"},
        {"delta": 1, "reason": "stolen"},
        {"delta": 1},
        {"delta": "1", "reason": "received"},
        {"delta": 1.0, "reason": "received"},
        {"set_on_hand": -1, "reason": "cycle_count"},
        {"set_on_hand": 3, "reason": "cycle_count", "expected_on_hand": -1},
        {"delta": 1, "reason": "received", "extra": 1},
        {"delta": 1, "reason": "received", "reference": "r" * 201},
        {"delta": 1, "reason": "received", "location": "UPPER"},
        {"delta": 1, "reason": "received", "location": "nowhere"},
    ],
    ids=[
        "delta and set_on_hand",
        "neither",
        "unknown reason",
        "no reason",
        "delta string",
        "delta float",
        "set_on_hand negative",
        "expected_on_hand negative",
        "unknown field",
        "reference too long",
        "location uppercase",
        "unknown location",
    ],
)
async def test_bad_adjustment_is_refused_and_level_unchanged(
    client: httpx.AsyncClient,
    backends: Backends,
    stock: Stocker,
    uid: str,
    body: dict[str, object],
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 7}})
    payload = {"location": loc, **body}
    r = await client.post(f"/v1/skus/{sku}/adjustments", json=payload)
    assert_problem(r, 422, "validation_error")
    assert await level(backends.pool, sku, loc) == (7, 0)
    moves = await backends.pool.fetchval("SELECT count(*) FROM stock_movements WHERE sku = $1", sku)
    assert moves == 1


async def test_bad_payment_status_and_key_bodies(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 3}})
    assert (
        await client.post("/v1/orders", json={"id": f"o{uid}", "lines": [_line(sku)]})
    ).is_success
    for body in (
        {"provider": "paypal", "payment_id": "p"},
        {"provider": "manual", "payment_id": ""},
        {"provider": "manual"},
        {"provider": "manual", "payment_id": "p", "amount": "10"},
        {"provider": "manual", "payment_id": "p", "currency": "EURO"},
    ):
        r = await client.post(f"/v1/orders/o{uid}/payments", json=body)
        assert_problem(r, 422, "validation_error")
    for body in ({"status": "paid"}, {"status": "pending"}, {"status": "SHIPPED"}, {}):
        assert_problem(await client.patch(f"/v1/orders/o{uid}", json=body), 422, "validation_error")
    assert_problem(
        await client.post(f"/v1/orders/o{uid}/cancel", json={"reason": "r" * 501}),
        422,
        "validation_error",
    )
    order = (await client.get(f"/v1/orders/o{uid}")).json()
    assert (order["status"], order["payment"]) == ("pending", None)
    assert await level(backends.pool, sku, loc) == (3, 1)
    for body in ({"role": "root", "name": "x"}, {"role": "admin"}, {"role": "admin", "name": ""}):
        r = await client.post("/v1/admin/api-keys", json=body)
        assert_problem(r, 422, "validation_error")


# ---------------------------------------------------------------- query strings


LISTS = [
    "/v1/skus",
    "/v1/locations",
    "/v1/orders",
    "/v1/admin/movements",
    "/v1/admin/api-keys",
    "/v1/admin/orders/x/inventory-logs",
    "/v1/admin/orders/needs-review",
    "/v1/admin/orders/paid-uncommitted",
]


@pytest.mark.parametrize("path", LISTS)
async def test_list_limits_and_cursors_are_checked(client: httpx.AsyncClient, path: str) -> None:
    for query in (
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=ten",
        "limit=1.5",
        "after=!!!",
        "after=" + _cursor({"a": 1}),
        "after=" + _cursor([1, 2, 3]),
        "after=" + _cursor(None) + "x",
    ):
        r = await client.get(f"{path}?{query}")
        assert_problem(r, 422, "validation_error")
    for query in ("limit=1", "limit=500"):
        r = await client.get(f"{path}?{query}")
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) <= int(query.split("=")[1])


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/v1/skus", 5),
        ("/v1/skus", ["a"]),
        ("/v1/locations", 5),
        ("/v1/skus", "a\u0000"),
        ("/v1/orders", ["not a time", "x"]),
        ("/v1/orders", [1, 2]),
        ("/v1/orders", ["2024-01-01T00:00:00", "x"]),
        ("/v1/orders", ["2024-01-01T00:00:00+00:00", 7]),
        ("/v1/admin/movements", "12"),
        ("/v1/admin/movements", 10**30),
        ("/v1/admin/movements", -1),
        ("/v1/admin/movements", True),
        ("/v1/admin/orders/x/inventory-logs", 1.5),
        ("/v1/admin/orders/x/inventory-logs", 2**63),
        ("/v1/admin/api-keys", "not-a-uuid"),
    ],
)
async def test_cursors_of_the_wrong_kind_are_validation_errors(
    client: httpx.AsyncClient, path: str, cursor: object
) -> None:
    r = await client.get(f"{path}?after={_cursor(cursor)}")
    assert_problem(r, 422, "validation_error")


async def test_unknown_status_filter_is_a_validation_error(client: httpx.AsyncClient) -> None:
    for status in ("lost", "PENDING", "paid,shipped", "needs-review"):
        assert_problem(await client.get(f"/v1/orders?status={status}"), 422, "validation_error")
    for status in ("pending", "paid", "needs_review", "cancelled"):
        r = await client.get(f"/v1/orders?status={status}&limit=5")
        assert r.status_code == 200, r.text
        assert {o["status"] for o in r.json()["items"]} <= {status}


async def test_availability_query_is_checked(client: httpx.AsyncClient, uid: str) -> None:
    for query in ("", "sku=a%20b", "sku=ok&sku=x/y", f"sku=S{uid}&channel=UPPER"):
        assert_problem(await client.get(f"/v1/availability?{query}"), 422, "validation_error")


async def test_idempotency_key_length_is_checked(
    client: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 2}})
    for key in ("", "k" * 256):
        r = await client.post(
            "/v1/orders", json={"lines": [_line(sku)]}, headers={"Idempotency-Key": key}
        )
        assert_problem(r, 422, "validation_error")
    assert await level(backends.pool, sku, loc) == (2, 0)
    ok = await client.post(
        "/v1/orders", json={"lines": [_line(sku)]}, headers={"Idempotency-Key": "k" * 255}
    )
    assert ok.status_code == 201, ok.text
