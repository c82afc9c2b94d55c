"""Real httpx transports that watch (and can lose) what goes over the wire, and a
PostgreSQL row lock held from the test, for the client's retry tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import httpx


@dataclass
class Exchange:
    method: str
    path: str
    idempotency_key: str | None
    status: int | None  # None: the answer was lost
    body: bytes


@dataclass
class Wire:
    """What a recording transport saw, in order."""

    exchanges: list[Exchange] = field(default_factory=list)

    def record(self, request: httpx.Request, status: int | None) -> None:
        self.exchanges.append(
            Exchange(
                request.method,
                request.url.path,
                request.headers.get("idempotency-key"),
                status,
                request.content,
            )
        )


class RecordingTransport(httpx.HTTPTransport):
    """Sends for real. ``lose_answers``: that many answers are read from the server (the
    request took effect) and then dropped, as if the connection died. ``on_answer`` sees
    every status that does arrive."""

    def __init__(
        self,
        wire: Wire,
        *,
        lose_answers: int = 0,
        on_answer: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.wire = wire
        self.lose_answers = lose_answers
        self.on_answer = on_answer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        if self.lose_answers > 0:
            self.lose_answers -= 1
            self.wire.record(request, None)
            response.close()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        self.wire.record(request, response.status_code)
        if self.on_answer is not None:
            self.on_answer(response.status_code)
        return response


class AsyncRecordingTransport(httpx.AsyncHTTPTransport):
    """:class:`RecordingTransport` for :class:`~stockguard_client.AsyncClient`."""

    def __init__(
        self,
        wire: Wire,
        *,
        lose_answers: int = 0,
        on_answer: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.wire = wire
        self.lose_answers = lose_answers
        self.on_answer = on_answer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        await response.aread()
        if self.lose_answers > 0:
            self.lose_answers -= 1
            self.wire.record(request, None)
            await response.aclose()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        self.wire.record(request, response.status_code)
        if self.on_answer is not None:
            self.on_answer(response.status_code)
        return response


class RowLock:
    """Holds ``FOR UPDATE`` on a SKU's inventory levels in a transaction of its own (a
    thread with its own event loop) until :meth:`release`."""

    def __init__(self, database_url: str, sku: str) -> None:
        self._url = database_url
        self._sku = sku
        self._held = threading.Event()
        self._release = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RowLock:
        self._thread.start()
        if not self._held.wait(30):
            raise TimeoutError("the lock was not taken")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._thread.join(30)

    def release(self) -> None:
        self._release.set()

    def _run(self) -> None:
        asyncio.run(self._hold())

    async def _hold(self) -> None:
        try:
            conn = await asyncpg.connect(self._url)
        except BaseException as exc:
            self._error = exc
            self._held.set()
            return
        try:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT 1 FROM inventory_levels WHERE sku = $1 FOR UPDATE", self._sku
                )
                if not rows:
                    self._error = LookupError(f"no level of {self._sku}")
                self._held.set()
                await asyncio.to_thread(self._release.wait, 30)
        finally:
            await conn.close()
