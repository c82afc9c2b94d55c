"""A real HTTP receiver for webhook tests: a threaded ``http.server`` on loopback that
records every request it gets (at arrival, before answering) and answers as each path's
behaviour says (a status, after sleeping or blocking if the test wants). Plus the
fixtures and helpers the webhook tests share: events written straight into the outbox,
numbered by the real sequencer, endpoints removed after each test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

from stockguard.config import Settings
from stockguard.service.uow import Backends
from stockguard.workers.delivery import Deliverer
from stockguard.workers.loops import sequence_all, stop_workers

POLL_TIMEOUT = 30.0

# (the request, how many requests this path had before it) -> the status to answer
Behaviour = Callable[["Received", int], int]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def on(self, path: str, behaviour: Behaviour) -> None:
        self.behaviours[path] = behaviour

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def ids(self, path: str) -> list[str]:
        return [r.webhook_id for r in self.at(path)]

    def _answer(self, request: Received) -> int:
        with self.lock:
            before = sum(1 for r in self.received if r.path == request.path)
            self.received.append(request)
        behaviour = self.behaviours.get(request.path)
        return 200 if behaviour is None else behaviour(request, before)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            request = Received(
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                at=time.monotonic(),
            )
            status = receiver._answer(request)
            with contextlib.suppress(OSError):  # the sender may be gone (killed, timed out)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("location", receiver.url("/redirected"))
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet

    return Handler


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Server(ThreadingHTTPServer):
        daemon_threads = True  # a handler blocked by a test never holds the run up
        block_on_close = False

    server = Server(("127.0.0.1", 0), lambda *a: _handler(holder[0])(*a))
    receiver = Receiver(server)
    holder.append(receiver)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


@pytest.fixture
async def no_endpoints_after(backends: Backends) -> AsyncIterator[None]:
    """Number what earlier tests left unnumbered first (so it is not sent to this test's
    endpoints), and remove every endpoint (with its deliveries) after the test: other
    tests' events must not queue up for endpoints that no longer listen."""
    await sequence_all(backends)
    yield
    await backends.pool.execute("DELETE FROM webhook_endpoints")


def hook_settings(settings: Settings, **changes: object) -> Settings:
    """The test settings with loopback receivers allowed and every wait short."""
    update: dict[str, object] = {
        "webhook_allow_private_urls": True,
        "webhook_retry_schedule": "0.05,0.05,0.05,0.05,0.05",
        "webhook_timeout_seconds": 2.0,
        "webhook_lease_seconds": 3.5,
        "webhook_poll_interval_seconds": 0.05,
    }
    update.update(changes)
    # As Settings requires: a lease outlasts an attempt (model_copy does not validate).
    timeout = float(update["webhook_timeout_seconds"])  # type: ignore[arg-type]
    lease = float(update["webhook_lease_seconds"])  # type: ignore[arg-type]
    update["webhook_lease_seconds"] = max(lease, timeout + 1.5)
    return settings.model_copy(update=update)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll real state until ``check`` holds; fail after POLL_TIMEOUT seconds."""
    deadline = time.monotonic() + POLL_TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {POLL_TIMEOUT}s waiting for {what}")
        await asyncio.sleep(0.02)


async def add_events(
    pool: asyncpg.Pool, count: int, type_: str = "stock.changed", tag: str = ""
) -> list[str]:
    """``count`` events written by one committed transaction, as the outbox writes them;
    their public ids in insert order."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "INSERT INTO events (type, data) "
            "SELECT $1, jsonb_build_object('sku', $2 || i::text, 'n', i) "
            "FROM generate_series(1, $3) AS i ORDER BY i RETURNING event_id",
            type_,
            f"T{tag}-",
            count,
        )
    return [r["event_id"] for r in rows]


async def numbered(backends: Backends, event_ids: list[str]) -> dict[str, int]:
    """Run the real sequencer until these events have their seq; event id -> seq."""
    seqs: dict[str, int] = {}

    async def done() -> bool:
        await sequence_all(backends)
        rows = await backends.pool.fetch(
            "SELECT event_id, seq FROM events WHERE event_id = ANY($1) AND seq IS NOT NULL",
            event_ids,
        )
        seqs.update({r["event_id"]: r["seq"] for r in rows})
        return len(seqs) == len(event_ids)

    await eventually(done, "the sequencer to number the events")
    return seqs


async def delivery_rows(pool: asyncpg.Pool, endpoint_id: str) -> dict[str, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT e.event_id, d.seq, d.status, d.attempts, d.last_status_code, d.last_error, "
        "       d.delivered_at FROM webhook_deliveries d JOIN events e ON e.id = d.event_id "
        "WHERE d.endpoint_id = $1",
        endpoint_id,
    )
    return {r["event_id"]: r for r in rows}


async def statuses(pool: asyncpg.Pool, endpoint_id: str) -> dict[str, str]:
    return {k: r["status"] for k, r in (await delivery_rows(pool, endpoint_id)).items()}


@contextlib.asynccontextmanager
async def delivering(
    backends: Backends, settings: Settings, processes: int = 1
) -> AsyncIterator[list[Deliverer]]:
    """The sequencer and ``processes`` delivery loops (each with its own lease owner, as
    separate worker processes would be) run until the block ends."""
    wake = asyncio.Event()
    loops = [Deliverer(backends, settings, wake) for _ in range(processes)]

    async def sequencer() -> None:
        while True:
            with contextlib.suppress(asyncpg.PostgresError):  # e.g. a test's table lock
                await sequence_all(backends, wake)
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(d.run()) for d in loops]
    tasks.append(asyncio.create_task(sequencer()))
    try:
        yield loops
    finally:
        await stop_workers(tasks)


async def create_endpoint(
    backends: Backends, url: str, events: list[str] | None = None
) -> tuple[str, str]:
    """An endpoint made through the service (loopback allowed); (id, secret)."""
    from stockguard.service.webhook_endpoints import NewEndpoint, create_endpoint

    made = await create_endpoint(
        backends, NewEndpoint(url, events or ["*"]), "test", allow_private=True
    )
    return made.endpoint.id, made.secret
