"""The two transports: :class:`Client` (blocking, ``httpx.Client``) and
:class:`AsyncClient` (``httpx.AsyncClient``). Each method is a builder of
:mod:`stockguard_client._calls` bound to the client's ``_send``, so both clients have
exactly the same methods, arguments and answers."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import httpx

from stockguard_client import _calls as api
from stockguard_client._retry import RetryPolicy
from stockguard_client.errors import ConnectionFailed
from stockguard_client.models import ApiKey, Event, Location, Order, Page, Sku, Transfer

__all__ = ["AsyncClient", "Client"]

__version__ = "0.1.0"

P = ParamSpec("P")
T = TypeVar("T")
Item = TypeVar("Item")


def _headers(api_key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {api_key}",
        "User-Agent": f"stockguard-client-python/{__version__}",
        "Accept": "application/json",
    }


def _no_answer(call: api.Call[Any], exc: Exception) -> ConnectionFailed:
    problem = {"code": "connection_failed", "detail": f"{type(exc).__name__}: {exc}"}
    return ConnectionFailed(0, problem, idempotency_key=call.idempotency_key)


def _request_args(call: api.Call[Any]) -> dict[str, Any]:
    args: dict[str, Any] = {"params": call.params, "headers": call.headers()}
    if call.body is not None:
        args["json"] = call.body
    return args


def _sync(build: Callable[P, api.Call[T]]) -> Callable[Concatenate[Client, P], T]:
    @functools.wraps(build)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._send(build(*args, **kwargs))

    return method


def _async(
    build: Callable[P, api.Call[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    @functools.wraps(build)
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._send(build(*args, **kwargs))

    return method


class Client:
    """A blocking client. ``Client(base_url, api_key)``; use it as a context manager or
    call :meth:`close`. Every POST carries an ``Idempotency-Key`` (yours, or a new UUID
    reused by the client's own retries); 503 ``busy``/``cache_unavailable`` and lost
    connections are retried as :class:`~stockguard_client._retry.RetryPolicy` says."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        max_retries: int = 3,
        backoff: float = 0.25,
        max_delay: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = RetryPolicy(max_retries=max_retries, backoff=backoff, max_delay=max_delay)
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: api.Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **_request_args(call))
            except httpx.TransportError as exc:
                delay = self.retry.after_no_answer(call, attempt, exc)
                if delay is None:
                    raise _no_answer(call, exc) from exc
            else:
                delay = self.retry.after_answer(call, attempt, response)
                if delay is None:
                    return call.result(response)
            time.sleep(delay)
            attempt += 1

    def _pages(self, page_of: Callable[[str | None], api.Call[Page[Item]]]) -> Iterator[Item]:
        after: str | None = None
        while True:
            page = self._send(page_of(after))
            yield from page.items
            if page.next is None:
                return
            after = page.next

    put_location = _sync(api.put_location)
    list_locations = _sync(api.list_locations)
    put_channel = _sync(api.put_channel)
    get_channel = _sync(api.get_channel)
    put_sku = _sync(api.put_sku)
    get_sku = _sync(api.get_sku)
    list_skus = _sync(api.list_skus)
    adjust_stock = _sync(api.adjust_stock)
    adjust_batch = _sync(api.adjust_batch)
    set_safety_stock = _sync(api.set_safety_stock)
    get_availability = _sync(api.get_availability)
    place_order = _sync(api.place_order)
    get_order = _sync(api.get_order)
    list_orders = _sync(api.list_orders)
    pay_order = _sync(api.pay_order)
    cancel_order = _sync(api.cancel_order)
    set_order_status = _sync(api.set_order_status)
    delete_order = _sync(api.delete_order)
    extend_order = _sync(api.extend_order)
    create_return = _sync(api.create_return)
    list_returns = _sync(api.list_returns)
    create_transfer = _sync(api.create_transfer)
    receive_transfer = _sync(api.receive_transfer)
    cancel_transfer = _sync(api.cancel_transfer)
    get_transfer = _sync(api.get_transfer)
    list_transfers = _sync(api.list_transfers)
    list_events = _sync(api.list_events)
    create_api_key = _sync(api.create_api_key)
    list_api_keys = _sync(api.list_api_keys)
    revoke_api_key = _sync(api.revoke_api_key)
    verify = _sync(api.verify)
    recover_inventory = _sync(api.recover_inventory)
    list_needs_review = _sync(api.list_needs_review)
    list_paid_uncommitted = _sync(api.list_paid_uncommitted)
    list_movements = _sync(api.list_movements)
    list_inventory_logs = _sync(api.list_inventory_logs)
    explain = _sync(api.explain)
    reconcile_cache = _sync(api.reconcile_cache)
    ready = _sync(api.ready)
    create_webhook_endpoint = _sync(api.create_webhook_endpoint)
    list_webhook_endpoints = _sync(api.list_webhook_endpoints)
    get_webhook_endpoint = _sync(api.get_webhook_endpoint)
    update_webhook_endpoint = _sync(api.update_webhook_endpoint)
    delete_webhook_endpoint = _sync(api.delete_webhook_endpoint)
    ping_webhook_endpoint = _sync(api.ping_webhook_endpoint)
    list_webhook_deliveries = _sync(api.list_webhook_deliveries)
    replay_webhook_endpoint = _sync(api.replay_webhook_endpoint)

    def iter_orders(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Order]:
        """Every order (of ``status``), oldest first, page by page."""
        return self._pages(
            lambda after: api.list_orders(status=status, limit=page_size, after=after)
        )

    def iter_skus(self, *, page_size: int = 100) -> Iterator[Sku]:
        return self._pages(lambda after: api.list_skus(limit=page_size, after=after))

    def iter_locations(self, *, page_size: int = 100) -> Iterator[Location]:
        return self._pages(lambda after: api.list_locations(limit=page_size, after=after))

    def iter_transfers(
        self, *, status: str | None = None, page_size: int = 100
    ) -> Iterator[Transfer]:
        return self._pages(
            lambda after: api.list_transfers(status=status, limit=page_size, after=after)
        )

    def iter_api_keys(self, *, page_size: int = 100) -> Iterator[ApiKey]:
        return self._pages(lambda after: api.list_api_keys(limit=page_size, after=after))

    def iter_events(
        self, *, after: int | None = None, types: Sequence[str] = (), page_size: int = 100
    ) -> Iterator[Event]:
        """Every event with ``seq > after`` that exists now, oldest first; it ends when
        the feed is caught up (remember the last ``seq`` and call again later)."""
        while True:
            page = self._send(api.list_events(after=after, limit=page_size, types=types))
            yield from page.items
            if page.next is None:
                return
            after = page.next


class AsyncClient:
    """The same as :class:`Client`, for asyncio: every method is a coroutine and the
    ``iter_*`` methods are async iterators."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        max_retries: int = 3,
        backoff: float = 0.25,
        max_delay: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = RetryPolicy(max_retries=max_retries, backoff=backoff, max_delay=max_delay)
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: api.Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, **_request_args(call))
            except httpx.TransportError as exc:
                delay = self.retry.after_no_answer(call, attempt, exc)
                if delay is None:
                    raise _no_answer(call, exc) from exc
            else:
                delay = self.retry.after_answer(call, attempt, response)
                if delay is None:
                    return call.result(response)
            await asyncio.sleep(delay)
            attempt += 1

    async def _pages(
        self, page_of: Callable[[str | None], api.Call[Page[Item]]]
    ) -> AsyncIterator[Item]:
        after: str | None = None
        while True:
            page = await self._send(page_of(after))
            for item in page.items:
                yield item
            if page.next is None:
                return
            after = page.next

    put_location = _async(api.put_location)
    list_locations = _async(api.list_locations)
    put_channel = _async(api.put_channel)
    get_channel = _async(api.get_channel)
    put_sku = _async(api.put_sku)
    get_sku = _async(api.get_sku)
    list_skus = _async(api.list_skus)
    adjust_stock = _async(api.adjust_stock)
    adjust_batch = _async(api.adjust_batch)
    set_safety_stock = _async(api.set_safety_stock)
    get_availability = _async(api.get_availability)
    place_order = _async(api.place_order)
    get_order = _async(api.get_order)
    list_orders = _async(api.list_orders)
    pay_order = _async(api.pay_order)
    cancel_order = _async(api.cancel_order)
    set_order_status = _async(api.set_order_status)
    delete_order = _async(api.delete_order)
    extend_order = _async(api.extend_order)
    create_return = _async(api.create_return)
    list_returns = _async(api.list_returns)
    create_transfer = _async(api.create_transfer)
    receive_transfer = _async(api.receive_transfer)
    cancel_transfer = _async(api.cancel_transfer)
    get_transfer = _async(api.get_transfer)
    list_transfers = _async(api.list_transfers)
    list_events = _async(api.list_events)
    create_api_key = _async(api.create_api_key)
    list_api_keys = _async(api.list_api_keys)
    revoke_api_key = _async(api.revoke_api_key)
    verify = _async(api.verify)
    recover_inventory = _async(api.recover_inventory)
    list_needs_review = _async(api.list_needs_review)
    list_paid_uncommitted = _async(api.list_paid_uncommitted)
    list_movements = _async(api.list_movements)
    list_inventory_logs = _async(api.list_inventory_logs)
    explain = _async(api.explain)
    reconcile_cache = _async(api.reconcile_cache)
    ready = _async(api.ready)
    create_webhook_endpoint = _async(api.create_webhook_endpoint)
    list_webhook_endpoints = _async(api.list_webhook_endpoints)
    get_webhook_endpoint = _async(api.get_webhook_endpoint)
    update_webhook_endpoint = _async(api.update_webhook_endpoint)
    delete_webhook_endpoint = _async(api.delete_webhook_endpoint)
    ping_webhook_endpoint = _async(api.ping_webhook_endpoint)
    list_webhook_deliveries = _async(api.list_webhook_deliveries)
    replay_webhook_endpoint = _async(api.replay_webhook_endpoint)

    def iter_orders(
        self, *, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Order]:
        return self._pages(
            lambda after: api.list_orders(status=status, limit=page_size, after=after)
        )

    def iter_skus(self, *, page_size: int = 100) -> AsyncIterator[Sku]:
        return self._pages(lambda after: api.list_skus(limit=page_size, after=after))

    def iter_locations(self, *, page_size: int = 100) -> AsyncIterator[Location]:
        return self._pages(lambda after: api.list_locations(limit=page_size, after=after))

    def iter_transfers(
        self, *, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Transfer]:
        return self._pages(
            lambda after: api.list_transfers(status=status, limit=page_size, after=after)
        )

    def iter_api_keys(self, *, page_size: int = 100) -> AsyncIterator[ApiKey]:
        return self._pages(lambda after: api.list_api_keys(limit=page_size, after=after))

    async def iter_events(
        self, *, after: int | None = None, types: Sequence[str] = (), page_size: int = 100
    ) -> AsyncIterator[Event]:
        while True:
            page = await self._send(api.list_events(after=after, limit=page_size, types=types))
            for event in page.items:
                yield event
            if page.next is None:
                return
            after = page.next
