"""Bad input over a real HTTP connection: what schemathesis cannot generate.

A real uvicorn server (in this process, on the test backends, with the protocol class that
``stockguard serve`` uses) is spoken to with raw bytes: non-ASCII and NUL header bytes,
duplicate JSON keys, huge bodies and heads, odd path segments, cursors, webhook signatures.
Every answer is problem+json with the expected status, never a 5xx, the connection stays
usable (a 500 drops keep-alive), and nothing in PostgreSQL or Redis changed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
import uvicorn
from pydantic import SecretStr

from stockguard import strictjson
from stockguard.api import recovery, webhooks
from stockguard.api.app import build_app
from stockguard.api.headers import MAX_HEADER_BYTES, TRANSPORT_BYTES, CappedHttpToolsProtocol
from stockguard.api.routes import router
from stockguard.api.strict import StrictJSONRoute
from stockguard.config import Settings
from stockguard.service import orders
from stockguard.service.orders import PlaceOrder
from stockguard.service.uow import Backends
from stockguard.store import keys
from tests.conftest import Keys, Servers, Stocker
from tests.test_cli import _free_port, _stop, _subprocess_env
from tests.test_payments import (
    RAZORPAY_SECRET,
    STRIPE_SECRET,
    razorpay_event,
    razorpay_signed,
    stripe_event,
    stripe_signed,
)

PROBLEM = "application/problem+json"


# ------------------------------------------------------------ a real server, raw bytes


@pytest.fixture(scope="module")
async def address(settings: Settings, backends: Backends) -> AsyncIterator[tuple[str, int]]:
    configured = settings.model_copy(
        update={
            "stripe_webhook_secret": SecretStr(STRIPE_SECRET),
            "razorpay_webhook_secret": SecretStr(RAZORPAY_SECRET),
        }
    )
    config = uvicorn.Config(
        build_app(configured, backends),
        host="127.0.0.1",
        port=0,
        http=CappedHttpToolsProtocol,
        lifespan="off",
        log_level="critical",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # startup, not a race: uvicorn offers no event to wait on
        assert not task.done(), task
        await asyncio.sleep(0.01)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    yield host, port
    server.should_exit = True
    await task


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(lines[0].split()[1]), headers, body)


def raw_request(
    method: str,
    target: bytes | str,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes | None = None,
    *,
    auth: str | None = None,
) -> bytes:
    target = target.encode() if isinstance(target, str) else target
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"host: stockguard.test"]
    if auth is not None:
        lines.append(b"authorization: Bearer " + auth.encode())
    lines += [name + b": " + value for name, value in headers or []]
    if body is not None:
        lines += [b"content-type: application/json", b"content-length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


class Connection:
    """One keep-alive connection: send raw requests, read answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, request: bytes) -> Answer:
        self.writer.write(request)
        await self.writer.drain()
        return await _read_answer(self.reader)

    async def still_alive(self) -> None:
        """A 500 (or any close) drops keep-alive: the next request must still be served."""
        answer = await self.send(raw_request("GET", "/healthz"))
        assert (answer.status, answer.json()) == (200, {"ok": True})


@contextlib.asynccontextmanager
async def connect(address: tuple[str, int]) -> AsyncIterator[Connection]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield Connection(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def assert_problem(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:500])
    assert answer.headers["content-type"] == PROBLEM, answer.headers
    body = answer.json()
    assert isinstance(body, dict)
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert (body["status"], body["code"]) == (status, code), body
    assert body["type"] == f"https://stockguard.dev/problems/{code}"
    assert b"Traceback" not in answer.body
    return body


async def send_one(address: tuple[str, int], request: bytes) -> Answer:
    """Send on a fresh connection; the connection must still serve afterwards."""
    async with connect(address) as conn:
        answer = await conn.send(request)
        assert answer.status < 500, answer.body[:500]
        if answer.headers.get("connection") != "close":
            await conn.still_alive()
        return answer


# ------------------------------------------------------------ "nothing changed"

_COUNTS = """
SELECT (SELECT count(*) FROM orders) AS orders,
       (SELECT count(*) FROM reservations) AS reservations,
       (SELECT count(*) FROM order_inventory_logs) AS logs,
       (SELECT count(*) FROM stock_movements) AS ledger,
       (SELECT count(*) FROM idempotency_keys) AS idempotency_keys,
       (SELECT count(*) FROM webhook_events) AS webhook_events,
       (SELECT count(*) FROM skus) AS skus,
       (SELECT count(*) FROM locations) AS locations,
       (SELECT count(*) FROM channels) AS channels,
       (SELECT count(*) FROM api_keys WHERE revoked_at IS NULL) AS live_keys,
       (SELECT md5(coalesce(string_agg(sku || '@' || location || '=' || on_hand || '/'
               || reserved, ',' ORDER BY sku, location), '')) FROM inventory_levels) AS levels,
       (SELECT md5(coalesce(string_agg(id || '=' || status, ',' ORDER BY id), ''))
          FROM orders) AS statuses
"""


async def snapshot(pool: asyncpg.Pool, redis: aioredis.Redis, prefix: str) -> dict[str, Any]:
    row = await pool.fetchrow(_COUNTS)
    assert row is not None
    cached = {}
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        cached[key] = await redis.dump(key)
    return {**dict(row.items()), "redis": cached}


@pytest.fixture
async def unchanged(
    backends: Backends, redis_client: aioredis.Redis, servers: Servers
) -> AsyncIterator[None]:
    """The test's refusals change nothing in PostgreSQL or Redis."""
    before = await snapshot(backends.pool, redis_client, servers.redis_prefix)
    yield
    after = await snapshot(backends.pool, redis_client, servers.redis_prefix)
    assert after == before


# ------------------------------------------------------------ webhooks


async def _pending(stock: Stocker, backends: Backends, uid: str) -> str:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    return oid


@pytest.fixture
async def pending(stock: Stocker, backends: Backends, uid: str) -> str:
    return await _pending(stock, backends, uid)


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
@pytest.mark.parametrize("signature", [b"t=1,v1=\xff\xfe", b"\xc3\xa9" * 32, b"\x80"])
async def test_a_non_ascii_webhook_signature_is_invalid_signature(
    address: tuple[str, int], pending: str, unchanged: None, provider: str, signature: bytes
) -> None:
    body = (
        stripe_event("evt_x", pending, "pi_x")
        if provider == "stripe"
        else razorpay_event("payment.captured", pending, "pay_x")
    )
    header = b"stripe-signature" if provider == "stripe" else b"x-razorpay-signature"
    answer = await send_one(
        address, raw_request("POST", f"/v1/webhooks/{provider}", [(header, signature)], body)
    )
    assert_problem(answer, 400, "invalid_signature")


def _signed(provider: str, body: bytes) -> list[tuple[bytes, bytes]]:
    if provider == "stripe":
        return [(b"stripe-signature", stripe_signed(body).encode())]
    return [(b"x-razorpay-signature", razorpay_signed(body).encode())]


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "nested"),
        (b'{"id": "evt_\\ud800", "type": "payment_intent.succeeded", "event": "\\udfff"}', "lone"),
        (b'{"id": "a", "id": "b", "event": "x", "event": "y"}', "duplicate"),
        (b'{"id": "a", "data": ', "truncated"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
    ids=["deep", "surrogate", "duplicate-keys", "truncated", "not-utf8"],
)
async def test_signed_webhook_bodies_that_are_not_one_json_value_are_400(
    address: tuple[str, int],
    pending: str,
    unchanged: None,
    provider: str,
    body: bytes,
    why: str,
) -> None:
    headers = _signed(provider, body)  # signed over the exact bytes
    answer = await send_one(address, raw_request("POST", f"/v1/webhooks/{provider}", headers, body))
    assert_problem(answer, 400, "invalid_signature")


@pytest.mark.parametrize("provider", ["stripe", "razorpay"])
@pytest.mark.parametrize("body", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"{}"])
async def test_signed_webhook_bodies_that_are_no_object_are_ignored(
    address: tuple[str, int], backends: Backends, pending: str, provider: str, body: bytes
) -> None:
    before = await backends.pool.fetchval("SELECT count(*) FROM order_inventory_logs")
    answer = await send_one(
        address, raw_request("POST", f"/v1/webhooks/{provider}", _signed(provider, body), body)
    )
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) <= {"ignored", "replayed"}
    assert (await orders.get_order(backends, pending)).status.value == "pending"
    assert await backends.pool.fetchval("SELECT count(*) FROM order_inventory_logs") == before


async def test_razorpay_replays_with_fresh_unsigned_event_ids_change_nothing_again(
    address: tuple[str, int], backends: Backends, pending: str, uid: str
) -> None:
    """A cancelled order: the first delivery logs that a refund is due; replays of the same
    signed body (or order.paid of the same payment) under new X-Razorpay-Event-Id headers
    are replays, not new payments."""
    await orders.cancel_order(backends, pending, "t")
    answers = []
    for n, event in enumerate(["payment.captured", "payment.captured", "order.paid"]):
        body = razorpay_event(event, pending, f"pay_{uid}")
        headers = [*_signed("razorpay", body), (b"x-razorpay-event-id", b"evt_%d" % n)]
        answer = await send_one(
            address, raw_request("POST", "/v1/webhooks/razorpay", headers, body)
        )
        answers.append((answer.status, answer.json()))
    assert answers == [
        (200, {"ignored": "order cancelled"}),
        (200, {"replayed": True}),
        (200, {"replayed": True}),
    ]
    refunds = await backends.pool.fetchval(
        "SELECT count(*) FROM order_inventory_logs WHERE order_id = $1 "
        "AND error_reason = 'PAID_AFTER_CANCEL'",
        pending,
    )
    assert refunds == 1
    inbox = await backends.pool.fetch(
        "SELECT event_id FROM webhook_events WHERE provider = 'razorpay' AND order_id = $1",
        pending,
    )
    assert [r["event_id"] for r in inbox] == [f"payment:pay_{uid}"]


async def test_razorpay_events_without_a_payment_are_named_by_their_signed_body(
    address: tuple[str, int], backends: Backends, uid: str
) -> None:
    body = json.dumps({"event": "refund.created", "payload": {}, "n": uid}).encode()
    for n in range(2):
        headers = [*_signed("razorpay", body), (b"x-razorpay-event-id", b"evt_%d" % n)]
        answer = await send_one(
            address, raw_request("POST", "/v1/webhooks/razorpay", headers, body)
        )
        assert answer.status == 200
        assert answer.json() == (
            {"ignored": "event type 'refund.created' is not a payment"}
            if n == 0
            else {"replayed": True}
        )


# ------------------------------------------------------------ JSON bodies


@pytest.mark.parametrize(
    ("method", "path", "body", "key"),
    [
        (
            "POST",
            "/v1/orders",
            '{"lines": [{"sku": "S", "quantity": 1, "quantity": 2}]}',
            "quantity",
        ),
        (
            "POST",
            "/v1/orders",
            '{"id": "a", "id": "b", "lines": [{"sku": "S", "quantity": 1}]}',
            "id",
        ),
        ("PUT", "/v1/skus/S", '{"name": "a", "name": "b"}', "name"),
        ("PUT", "/v1/locations/w", '{"name": "a", "priority": 1, "priority": 2}', "priority"),
        ("POST", "/v1/admin/api-keys", '{"role": "service", "role": "admin", "name": "x"}', "role"),
        ("POST", "/v1/admin/cache/reconcile", '{"repair": false, "repair": true}', "repair"),
    ],
)
async def test_duplicate_json_keys_are_422_naming_the_key(
    address: tuple[str, int],
    api_keys: Keys,
    unchanged: None,
    method: str,
    path: str,
    body: str,
    key: str,
) -> None:
    answer = await send_one(
        address, raw_request(method, path, [], body.encode(), auth=api_keys.admin)
    )
    problem = assert_problem(answer, 422, "validation_error")
    assert problem["detail"] == f"body: duplicate key '{key}'"
    assert problem["errors"] == [
        {"loc": ["body"], "msg": f"duplicate key '{key}'", "type": "json_invalid"}
    ]


async def test_duplicate_keys_refused_on_an_adjustment_and_an_order_for_real_stock(
    address: tuple[str, int], api_keys: Keys, stock: Stocker, uid: str, backends: Backends
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    before = await snapshot_of_sku(backends.pool, sku)
    adjustment = f'{{"location": "{loc}", "reason": "received", "delta": 1, "delta": 50}}'
    order = f'{{"lines": [{{"sku": "{sku}", "quantity": 5, "quantity": 1}}]}}'
    requests = ((f"/v1/skus/{sku}/adjustments", adjustment), ("/v1/orders", order))
    for n, (path, body) in enumerate(requests):
        answer = await send_one(
            address,
            raw_request(
                "POST",
                path,
                [(b"idempotency-key", f"{uid}-{n}".encode())],
                body.encode(),
                auth=api_keys.admin,
            ),
        )
        assert_problem(answer, 422, "validation_error")
    assert await snapshot_of_sku(backends.pool, sku) == before


async def snapshot_of_sku(pool: asyncpg.Pool, sku: str) -> tuple[Any, ...]:
    row = await pool.fetchrow(
        "SELECT (SELECT sum(on_hand) FROM inventory_levels WHERE sku = $1), "
        "(SELECT sum(reserved) FROM inventory_levels WHERE sku = $1), "
        "(SELECT count(*) FROM stock_movements WHERE sku = $1), "
        "(SELECT count(*) FROM order_lines WHERE sku = $1)",
        sku,
    )
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"name": "\\ud800"}', "a string holds a lone UTF-16 surrogate"),
        (b'{"name": "x\\udc00y"}', "a string holds a lone UTF-16 surrogate"),
        (b'{"name": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "the JSON is nested too deeply"),
        (b'{"name": "\xff"}', "the body is not UTF-8"),
    ],
    ids=["lone-high", "lone-low", "deep", "not-utf8"],
)
async def test_bodies_no_store_can_hold_are_422(
    address: tuple[str, int], api_keys: Keys, unchanged: None, uid: str, body: bytes, why: str
) -> None:
    answer = await send_one(
        address, raw_request("PUT", f"/v1/skus/S{uid}", [], body, auth=api_keys.admin)
    )
    assert assert_problem(answer, 422, "validation_error")["detail"] == f"body: {why}"


async def test_a_surrogate_pair_is_a_character_not_a_refusal(
    address: tuple[str, int], api_keys: Keys, uid: str, backends: Backends
) -> None:
    answer = await send_one(
        address,
        raw_request(
            "PUT", f"/v1/skus/S{uid}", [], b'{"name": "\\ud83d\\ude00"}', auth=api_keys.admin
        ),
    )
    assert answer.status == 201
    assert (
        await backends.pool.fetchval("SELECT name FROM skus WHERE code = $1", f"S{uid}")
        == "\U0001f600"
    )


async def test_a_megabyte_of_unknown_fields_is_a_small_quick_422(
    address: tuple[str, int], api_keys: Keys, unchanged: None
) -> None:
    fields = ",".join(f'"{n:x}":0' for n in range(95_000))
    body = f'{{"lines": [{{"sku": "S", "quantity": 1}}], {fields}}}'.encode()
    assert len(body) < 1_048_576
    started = time.monotonic()
    answer = await send_one(
        address, raw_request("POST", "/v1/orders", [], body, auth=api_keys.admin)
    )
    elapsed = time.monotonic() - started
    problem = assert_problem(answer, 422, "validation_error")
    assert problem["detail"] == "body: an object has more than 256 keys"
    assert len(answer.body) < 2_000
    assert elapsed < 1.0, elapsed


async def test_many_bad_fields_list_twenty_errors_and_their_count(
    address: tuple[str, int], api_keys: Keys, unchanged: None
) -> None:
    extra = ",".join(f'"f{n}": 0' for n in range(100))
    lines = ",".join(f'{{"sku": "S", "quantity": 1, {extra}}}' for _ in range(100))
    body = f'{{"lines": [{lines}]}}'.encode()
    answer = await send_one(
        address, raw_request("POST", "/v1/orders", [], body, auth=api_keys.admin)
    )
    problem = assert_problem(answer, 422, "validation_error")
    assert len(problem["errors"]) == 20
    assert problem["error_count"] == 10_000
    assert problem["errors"][0]["loc"] == ["body", "lines", "0", "f0"]
    assert len(answer.body) < 10_000


# ------------------------------------------------------------ ids, codes, paths


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("POST", "/v1/admin/orders/%00/recover-inventory", 422),
        ("POST", "/v1/admin/orders/a%00b/recover-inventory", 422),
        ("GET", "/v1/orders/%00", 422),
        ("GET", "/v1/orders/" + "o" * 65, 422),
        ("GET", "/v1/orders/..", 422),
        ("GET", "/v1/orders/%2E", 422),
        ("GET", "/v1/orders/a%20b", 422),
        ("POST", "/v1/orders/%00/cancel", 422),
        ("PATCH", "/v1/orders/%00", 422),
        ("DELETE", "/v1/orders/%00", 422),
        ("GET", "/v1/admin/orders/%00/inventory-logs", 422),
        ("GET", "/v1/admin/movements?order_id=%00", 422),
        ("GET", "/v1/admin/movements?sku=%00", 422),
        ("GET", "/v1/skus/..", 422),
        ("GET", "/v1/skus/%2E%2E", 422),
        ("GET", "/v1/skus/.", 422),
        ("GET", "/v1/skus/%00", 422),
        ("GET", "/v1/skus/" + "s" * 65, 422),
        ("GET", "/v1/channels/..", 422),
        ("GET", "/v1/channels/%2e", 422),
        ("GET", "/v1/channels/UPPER", 422),
        ("GET", "/v1/availability?sku=..", 422),
        ("GET", "/v1/availability?sku=a&channel=..", 422),
        ("DELETE", "/v1/admin/api-keys/%00", 404),
        ("POST", "/v1/admin/orders/no-such-order/recover-inventory", 404),
        ("GET", "/v1/orders/no-such-order", 404),
    ],
)
async def test_bad_ids_in_paths_and_filters_are_refused(
    address: tuple[str, int], api_keys: Keys, unchanged: None, method: str, target: str, status: int
) -> None:
    body = b"{}" if method in ("POST", "PATCH") and "recover" not in target else None
    answer = await send_one(address, raw_request(method, target, [], body, auth=api_keys.admin))
    assert_problem(answer, status, "validation_error" if status == 422 else "not_found")


@pytest.mark.parametrize("code", [".", "..", "...", "a" * 65])
async def test_codes_that_are_only_dots_or_too_long_are_refused_in_paths_and_bodies(
    address: tuple[str, int], api_keys: Keys, unchanged: None, uid: str, code: str
) -> None:
    ok_loc = f"w{uid}"
    quoted = "".join(f"%{b:02X}" for b in code.encode())  # no client normalises this away
    requests = [
        ("PUT", f"/v1/locations/{quoted}", {"name": "x"}),
        ("PUT", f"/v1/channels/{quoted}", {"name": "x"}),
        ("PUT", f"/v1/skus/{quoted}", {"name": "x"}),
        ("PUT", f"/v1/channels/c{uid}", {"name": "x", "locations": [code]}),
        ("POST", "/v1/orders", {"lines": [{"sku": code, "quantity": 1}]}),
        ("POST", "/v1/orders", {"id": code, "lines": [{"sku": "S", "quantity": 1}]}),
        ("POST", "/v1/orders", {"lines": [{"sku": "S", "quantity": 1}], "channel": code}),
        (
            "POST",
            "/v1/orders",
            {"lines": [{"sku": "S", "quantity": 1}], "preferred_locations": [code]},
        ),
        (
            "POST",
            f"/v1/skus/S{uid}/adjustments",
            {"location": code, "reason": "received", "delta": 1},
        ),
        (
            "POST",
            f"/v1/skus/{quoted}/adjustments",
            {"location": ok_loc, "reason": "received", "delta": 1},
        ),
    ]
    for method, target, payload in requests:
        answer = await send_one(
            address,
            raw_request(method, target, [], json.dumps(payload).encode(), auth=api_keys.admin),
        )
        assert_problem(answer, 422, "validation_error")


async def test_a_zero_delta_adjustment_is_refused(
    address: tuple[str, int], api_keys: Keys, stock: Stocker, uid: str, backends: Backends
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    before = await snapshot_of_sku(backends.pool, sku)
    body = json.dumps({"location": loc, "reason": "correction", "delta": 0}).encode()
    answer = await send_one(
        address, raw_request("POST", f"/v1/skus/{sku}/adjustments", [], body, auth=api_keys.admin)
    )
    assert assert_problem(answer, 422, "validation_error")["detail"] == (
        "body.delta: Value error, must not be 0"
    )
    assert await snapshot_of_sku(backends.pool, sku) == before


@pytest.fixture
async def spare_key(backends: Backends, uid: str) -> str:
    async with backends.pool.acquire() as conn:
        made, _ = await keys.create_key(conn, "service", f"spare-{uid}")
    return made.id


@pytest.mark.parametrize("form", ["urn:uuid:{}", "{{{}}}", "{}-", "{}\x00"])
async def test_api_key_ids_in_forms_the_driver_refuses_are_404(
    address: tuple[str, int], api_keys: Keys, spare_key: str, unchanged: None, form: str
) -> None:
    odd = form.format(spare_key)
    target = "/v1/admin/api-keys/" + "".join(f"%{b:02X}" for b in odd.encode())
    answer = await send_one(address, raw_request("DELETE", target, auth=api_keys.admin))
    assert_problem(answer, 404, "not_found")
    bare = spare_key.replace("-", "")  # uuid.UUID takes it too
    answer = await send_one(
        address, raw_request("DELETE", f"/v1/admin/api-keys/{bare}", auth=api_keys.admin)
    )
    assert_problem(answer, 404, "not_found")


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/v1/admin/api-keys", "urn:uuid:00000000-0000-0000-0000-000000000000"),
        ("/v1/admin/api-keys", "{00000000-0000-0000-0000-000000000000}"),
        ("/v1/admin/api-keys", 5),
        ("/v1/orders", ["0001-01-01T00:00:00+01:00", "a"]),
        ("/v1/orders", ["9999-12-31T23:59:59-05:00", "a"]),
        ("/v1/orders", ["2026-01-01T00:00:00", "a"]),
        ("/v1/admin/orders/needs-review", ["0001-01-01T00:00:00+14:00", "a"]),
        ("/v1/admin/orders/needs-review", ["9999-12-31T23:59:59-12:00", "a"]),
        ("/v1/admin/orders/needs-review", ["2026-01-01T00:00:00", "a"]),
        ("/v1/admin/orders/paid-uncommitted", ["0001-01-01T00:30:00+01:00", "a"]),
        ("/v1/admin/orders/paid-uncommitted", [1, 2]),
        ("/v1/admin/orders/paid-uncommitted", "x"),
        ("/v1/admin/orders/paid-uncommitted", ["2026-01-01T00:00:00"]),
    ],
)
async def test_cursors_the_api_never_gave_out_are_422(
    address: tuple[str, int], api_keys: Keys, path: str, cursor: Any
) -> None:
    answer = await send_one(
        address, raw_request("GET", f"{path}?after={_cursor(cursor)}", auth=api_keys.admin)
    )
    assert assert_problem(answer, 422, "validation_error")["detail"] == (
        "after: not a cursor this API gave out"
    )


@pytest.mark.parametrize(
    "cursor", [["0001-01-01T00:00:00+00:00", ""], ["9999-12-31T23:59:59+00:00", "z"]]
)
async def test_cursors_at_the_ends_of_time_in_utc_are_served(
    address: tuple[str, int], api_keys: Keys, cursor: Any
) -> None:
    for path in ("/v1/orders", "/v1/admin/orders/needs-review"):
        answer = await send_one(
            address,
            raw_request("GET", f"{path}?after={_cursor(cursor)}&limit=1", auth=api_keys.admin),
        )
        assert answer.status == 200, answer.body
        assert set(answer.json()) == {"items", "next"}


# ------------------------------------------------------------ heads


async def test_headers_over_the_app_limit_are_431(
    address: tuple[str, int], api_keys: Keys, unchanged: None
) -> None:
    big = [(b"x-padding", b"p" * (MAX_HEADER_BYTES + 1))]
    async with connect(address) as conn:
        answer = await conn.send(raw_request("GET", "/v1/skus", big, auth=api_keys.admin))
    problem = assert_problem(answer, 431, "request_header_fields_too_large")
    assert answer.headers["connection"] == "close"
    assert str(MAX_HEADER_BYTES) in problem["detail"]
    long_key = "k" * (MAX_HEADER_BYTES + 1)  # the Authorization header itself
    answer = await send_one(address, raw_request("GET", "/v1/skus", auth=long_key))
    assert_problem(answer, 431, "request_header_fields_too_large")
    long_target = "/v1/skus?after=" + "a" * (MAX_HEADER_BYTES + 1)
    answer = await send_one(address, raw_request("GET", long_target, auth=api_keys.admin))
    assert_problem(answer, 431, "request_header_fields_too_large")


async def test_a_head_over_the_transport_limit_is_431_before_it_ends(
    address: tuple[str, int], api_keys: Keys
) -> None:
    # The head never ends: only a server that stops reading it can answer.
    head = raw_request("GET", "/v1/skus", auth=api_keys.admin)[:-2]
    head += b"authorization-2: " + b"a" * (TRANSPORT_BYTES + 1024)
    async with connect(address) as conn:
        conn.writer.write(head)
        await conn.writer.drain()
        answer = await _read_answer(conn.reader)
        assert await conn.reader.read() == b""  # and closed
    problem = assert_problem(answer, 431, "request_header_fields_too_large")
    assert str(TRANSPORT_BYTES) in problem["detail"]


async def test_a_32_mib_authorization_header_is_not_read_whole(
    address: tuple[str, int],
) -> None:
    chunk = b"a" * (1 << 20)

    async def send_32_mib(conn: Connection) -> Answer:
        conn.writer.write(b"GET /v1/skus HTTP/1.1\r\nhost: t\r\nauthorization: Bearer ")
        for _ in range(32):
            conn.writer.write(chunk)
            await conn.writer.drain()
        conn.writer.write(b"\r\n\r\n")
        await conn.writer.drain()
        return await _read_answer(conn.reader)  # an old server answers only now, 32 MiB on

    async with connect(address) as conn:
        with pytest.raises(ConnectionError):  # the server closed the connection early
            await send_32_mib(conn)
    async with connect(address) as again:
        await again.still_alive()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-bad: a\x00b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nhost: t\r\nbad name: v\r\n\r\n",
        b"GET /he\x00althz HTTP/1.1\r\nhost: t\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["nul-value", "space-in-name", "nul-target", "garbage"],
)
async def test_malformed_requests_are_400_problem_json(
    address: tuple[str, int], head: bytes
) -> None:
    async with connect(address) as conn:
        answer = await conn.send(head)
    assert_problem(answer, 400, "bad_request")
    assert answer.headers["connection"] == "close"


async def test_non_ascii_header_bytes_elsewhere_are_not_a_5xx(
    address: tuple[str, int], api_keys: Keys, unchanged: None
) -> None:
    for auth in (
        b"Bearer \xff\xfe",
        b"B\xe9arer x",
        b"Bearer " + api_keys.admin.encode() + b"\x80",
    ):
        answer = await send_one(address, raw_request("GET", "/v1/skus", [(b"authorization", auth)]))
        assert_problem(answer, 401, "unauthorized")
    odd = [(b"accept", b"\xff"), (b"x-request-id", b"\xc3\x28"), (b"idempotency-key", b"\xff")]
    answer = await send_one(
        address, raw_request("GET", "/v1/skus?limit=1", odd, auth=api_keys.admin)
    )
    assert answer.status == 200


# ------------------------------------------------------------ stockguard serve


def test_stockguard_serve_caps_the_request_head(servers: Servers, tmp_path: Path) -> None:
    """The uvicorn that ``stockguard serve`` runs uses the capped protocol."""
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stockguard", "serve", "--port", str(port), "--no-run-workers"],
            env=_subprocess_env(servers, tmp_path),
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                time.sleep(0.1)  # not listening yet
        with sock:
            sock.sendall(
                b"GET /healthz HTTP/1.1\r\nhost: t\r\nx: " + b"a" * (TRANSPORT_BYTES + 1024)
            )
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 431 "), received[:200]
        assert b"application/problem+json" in received
    finally:
        _stop(proc)


def test_every_route_parses_json_strictly() -> None:
    routes = [*router.routes, *recovery.router.routes, *webhooks.router.routes]
    assert len(routes) >= 30
    assert [getattr(r, "path", r) for r in routes if not isinstance(r, StrictJSONRoute)] == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b'[["\\ud800"]]', "a string holds a lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "a string holds a lone UTF-16 surrogate"),
        (b'[{"a": 1}, {"b": 1, "b": 2}]', "duplicate key 'b'"),
        (
            b"{" + b",".join(b'"%d": 0' % n for n in range(257)) + b"}",
            "an object has more than 256 keys",
        ),
    ],
)
def test_strictjson_refuses_what_no_request_needs(text: bytes, why: str) -> None:
    with pytest.raises(strictjson.RefusedJSON) as refused:
        strictjson.loads(text)
    assert refused.value.msg == why


def test_strictjson_keeps_what_json_keeps() -> None:
    text = b'{"a": ["\\\\ud800", "\\ud83d\\ude00", {"b": null}], "c": 1.5}'
    assert strictjson.loads(text) == {"a": ["\\ud800", "\U0001f600", {"b": None}], "c": 1.5}
    assert strictjson.loads(b"{" + b",".join(b'"%d": 0' % n for n in range(256)) + b"}")


@pytest.mark.parametrize(
    ("target", "detail"),
    [
        ("/v1/skus/..", "sku: must be 1 to 64 characters of A-Z a-z 0-9 . _ : -, not only dots"),
        (
            "/v1/orders/%00",
            "order_id: must be 1 to 64 characters of A-Z a-z 0-9 . _ : -, not only dots",
        ),
        ("/v1/channels/A", "code: must be 1 to 64 characters of a-z 0-9 . _ -, not only dots"),
    ],
)
async def test_a_refused_path_says_what_it_takes(
    address: tuple[str, int], api_keys: Keys, target: str, detail: str
) -> None:
    answer = await send_one(address, raw_request("GET", target, auth=api_keys.admin))
    assert assert_problem(answer, 422, "validation_error")["detail"] == detail


async def test_a_head_sent_in_pieces_under_the_limit_is_served(address: tuple[str, int]) -> None:
    async with connect(address) as conn:
        conn.writer.write(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-part: " + b"p" * 1000)
        await conn.writer.drain()
        with pytest.raises(TimeoutError):  # the server read the piece and waits for the rest
            await asyncio.wait_for(conn.reader.read(1), 0.2)
        answer = await conn.send(b"\r\n\r\n")
        assert (answer.status, answer.json()) == (200, {"ok": True})
        await conn.still_alive()
