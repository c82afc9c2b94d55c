"""Idempotency keys and retries against the live server: a 503 ``busy`` retried under
the same key after ``Retry-After``, a lost answer retried under the same key and answered
from the server's store, what is never resent, and the retry bounds."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import LOCK_TIMEOUT_MS, Server, StockHelper, free_port
from sgc_network import AsyncRecordingTransport, RecordingTransport, RowLock, Wire
from stockguard_client import (
    AsyncClient,
    Busy,
    Client,
    ConnectionFailed,
    IdempotencyKeyReused,
    RetryPolicy,
)
from stockguard_client._calls import get_order, place_order, set_order_status


def test_every_post_carries_a_new_idempotency_key(server: Server, stock: StockHelper) -> None:
    sku = stock.sku("KEYS", 5)
    wire = Wire()
    with Client(server.url, server.service_key, transport=RecordingTransport(wire)) as shop:
        shop.place_order([{"sku": sku, "quantity": 1}])
        shop.place_order([{"sku": sku, "quantity": 1}], idempotency_key=f"mine-{sku}")
        shop.get_sku(sku)
    keys = [x.idempotency_key for x in wire.exchanges]
    assert keys[0] is not None
    assert len(keys[0]) == 36  # a UUID
    assert keys[1] == f"mine-{sku}"
    assert keys[2] is None  # reads carry none


def test_busy_is_retried_with_the_same_key_after_retry_after(
    server: Server, stock: StockHelper
) -> None:
    sku = stock.sku("BUSY", 3)
    wire = Wire()
    with RowLock(server.database_url, sku) as lock:
        # The first answer is 503 busy (the server gave up on our lock); release it then.
        transport = RecordingTransport(wire, on_answer=lambda status: lock.release())
        with Client(server.url, server.service_key, transport=transport) as shop:
            started = time.monotonic()
            order = shop.place_order([{"sku": sku, "quantity": 2}], id=f"busy-{sku}")
            took = time.monotonic() - started
    assert [x.status for x in wire.exchanges] == [503, 201]
    first, second = wire.exchanges
    assert first.idempotency_key == second.idempotency_key is not None
    assert first.body == second.body
    assert took >= 1.0 + LOCK_TIMEOUT_MS / 1000 * 0.9  # Retry-After: 1 was honoured
    assert order.status == "pending"
    assert sum(r.quantity for r in order.reservations) == 2
    with Client(server.url, server.service_key) as shop:
        assert shop.get_sku(sku).reserved == 2  # held once


async def test_async_busy_is_retried_with_the_same_key(server: Server, stock: StockHelper) -> None:
    sku = stock.sku("ABUSY", 3)
    wire = Wire()
    with RowLock(server.database_url, sku) as lock:
        transport = AsyncRecordingTransport(wire, on_answer=lambda status: lock.release())
        async with AsyncClient(server.url, server.service_key, transport=transport) as shop:
            order = await shop.place_order([{"sku": sku, "quantity": 1}], id=f"abusy-{sku}")
    assert [x.status for x in wire.exchanges] == [503, 201]
    assert wire.exchanges[0].idempotency_key == wire.exchanges[1].idempotency_key
    assert order.id == f"abusy-{sku}"


def test_busy_until_the_retries_run_out_raises_busy(server: Server, stock: StockHelper) -> None:
    sku = stock.sku("STUCK", 3)
    wire = Wire()
    with RowLock(server.database_url, sku):
        transport = RecordingTransport(wire)
        with (
            Client(server.url, server.service_key, transport=transport, max_retries=1) as shop,
            pytest.raises(Busy) as caught,
        ):
            shop.place_order([{"sku": sku, "quantity": 1}], idempotency_key=f"stuck-{sku}")
    assert [x.status for x in wire.exchanges] == [503, 503]
    assert caught.value.status == 503
    assert caught.value.code == "busy"
    assert caught.value.retry_after == 1.0
    assert caught.value.idempotency_key == f"stuck-{sku}"
    with Client(server.url, server.service_key) as shop:
        assert shop.get_sku(sku).reserved == 0  # nothing changed


def test_a_lost_answer_is_retried_under_the_same_key_and_applied_once(
    server: Server, stock: StockHelper
) -> None:
    sku = stock.sku("LOST", 5)
    wire = Wire()
    transport = RecordingTransport(wire, lose_answers=1)
    with Client(server.url, server.service_key, transport=transport, backoff=0.01) as shop:
        # No order id: only the Idempotency-Key keeps the retry from holding twice.
        order = shop.place_order([{"sku": sku, "quantity": 2}])
        assert [x.status for x in wire.exchanges] == [None, 201]
        assert wire.exchanges[0].idempotency_key == wire.exchanges[1].idempotency_key
        assert shop.get_sku(sku).reserved == 2
        assert [o.id for o in shop.iter_orders() if o.lines[0].sku == sku] == [order.id]


async def test_async_lost_answer_is_retried_under_the_same_key(
    server: Server, stock: StockHelper
) -> None:
    sku = stock.sku("ALOST", 5)
    wire = Wire()
    transport = AsyncRecordingTransport(wire, lose_answers=2)
    async with AsyncClient(
        server.url, server.service_key, transport=transport, backoff=0.01
    ) as shop:
        await shop.place_order([{"sku": sku, "quantity": 3}])
        assert [x.status for x in wire.exchanges] == [None, None, 201]
        assert len({x.idempotency_key for x in wire.exchanges}) == 1
        assert (await shop.get_sku(sku)).reserved == 3


def test_the_same_key_with_another_body_is_refused(server: Server, stock: StockHelper) -> None:
    sku = stock.sku("REUSE", 5)
    with Client(server.url, server.service_key) as shop:
        shop.place_order([{"sku": sku, "quantity": 1}], idempotency_key=f"k-{sku}")
        with pytest.raises(IdempotencyKeyReused) as caught:
            shop.place_order([{"sku": sku, "quantity": 2}], idempotency_key=f"k-{sku}")
        assert caught.value.status == 422
        assert shop.get_sku(sku).reserved == 1


def test_a_patch_whose_answer_was_lost_is_not_resent(server: Server, stock: StockHelper) -> None:
    sku = stock.sku("PATCH", 5)
    with Client(server.url, server.service_key) as shop:
        order = shop.place_order([{"sku": sku, "quantity": 1}], id=f"patch-{sku}")
    wire = Wire()
    transport = RecordingTransport(wire, lose_answers=1)
    with Client(server.url, server.service_key, transport=transport, backoff=0.01) as shop:
        with pytest.raises(ConnectionFailed) as caught:
            shop.set_order_status(order.id, "cancelled")
        assert caught.value.status == 0
        assert caught.value.idempotency_key is None
        assert len(wire.exchanges) == 1
        assert shop.get_order(order.id).status == "cancelled"  # it did apply


def test_no_server_raises_connection_failed_with_the_key() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with (
        Client(nobody, "k", backoff=0.01, max_retries=2) as shop,
        pytest.raises(ConnectionFailed) as caught,
    ):
        shop.place_order([{"sku": "A", "quantity": 1}], idempotency_key="again-later")
    assert caught.value.idempotency_key == "again-later"
    assert "ConnectError" in caught.value.detail
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_reads_are_resent_after_a_lost_answer(server: Server, stock: StockHelper) -> None:
    sku = stock.sku("READ", 1)
    wire = Wire()
    transport = RecordingTransport(wire, lose_answers=1)
    with Client(server.url, server.service_key, transport=transport, backoff=0.01) as shop:
        assert shop.get_sku(sku).on_hand == 1
    assert [x.status for x in wire.exchanges] == [None, 200]


def test_retry_policy_decisions() -> None:
    policy = RetryPolicy(max_retries=2, backoff=0.5, max_delay=4.0)
    post = place_order([{"sku": "A", "quantity": 1}])
    patch = set_order_status("o", "shipped")
    read = get_order("o")
    request = httpx.Request("POST", "http://x/v1/orders")

    def answer(status: int, code: str | None, retry_after: str | None = None) -> httpx.Response:
        headers = {"Retry-After": retry_after} if retry_after else {}
        body = {"code": code} if code else {}
        return httpx.Response(status, json=body, headers=headers, request=request)

    assert policy.after_answer(post, 0, answer(503, "busy", "1")) == 1.0
    assert policy.after_answer(post, 0, answer(503, "cache_unavailable", "30")) == 4.0
    assert 0 <= (policy.after_answer(patch, 1, answer(503, "busy")) or -1) <= 1.0
    assert policy.after_answer(post, 2, answer(503, "busy", "1")) is None  # retries spent
    assert policy.after_answer(post, 0, answer(503, "unavailable")) is None
    assert policy.after_answer(post, 0, answer(409, "out_of_stock")) is None
    assert policy.after_answer(post, 0, httpx.Response(503, text="<html>", request=request)) is None
    lost = httpx.ReadTimeout("lost", request=request)
    assert policy.after_no_answer(post, 0, lost) is not None
    assert policy.after_no_answer(read, 1, lost) is not None
    assert policy.after_no_answer(patch, 0, lost) is None
    assert policy.after_no_answer(post, 2, lost) is None
    assert policy.after_no_answer(post, 0, httpx.UnsupportedProtocol("ftp")) is None
