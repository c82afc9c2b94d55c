"""Webhook delivery rate to a local receiver: ``python -m bench.delivery [--events N]``.

One endpoint on a loopback receiver (a uvicorn server in a process of its own, answering
204 at once, HTTP/1.1 keep-alive), N events written in one transaction, then:

- ``delivery``: the events are numbered first, then one delivery loop sends them all
  (the per-endpoint seq order makes this one attempt at a time: the rate is one HTTP
  round trip plus a lease renewal and an outcome write per event);
- ``end_to_end``: the sequencer loop and the delivery loop run together from the moment
  the events commit, as in ``stockguard worker``.

Prints one JSON document on stdout. Servers as ``python -m bench`` (a fresh database,
loopback only). :func:`delivery_rate` is the scenario function for a ``Ctx`` run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import uvicorn

from bench.env import bench_env, progress
from stockguard.config import Settings
from stockguard.service.uow import Backends
from stockguard.service.webhook_endpoints import NewEndpoint, create_endpoint
from stockguard.store.db import connect_pool
from stockguard.workers.delivery import Deliverer
from stockguard.workers.loops import sequence_all

__all__ = ["delivery_rate", "main"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Counter:
    """A minimal ASGI receiver: reads the body, answers 204."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = bool(message.get("more_body"))
        self.count += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def _receiver() -> Iterator[str]:
    """The receiver in a process of its own (in a thread here it would share this
    process's GIL with the delivery loop and measure that instead)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen([sys.executable, "-m", "bench.delivery", "--receive", str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        proc.terminate()
        proc.wait(10)


async def _write_events(backends: Backends, count: int) -> None:
    await backends.pool.execute(
        "INSERT INTO events (type, data) SELECT 'stock.changed', "
        "jsonb_build_object('sku', 'BENCH-' || i::text, 'on_hand', i, 'reserved', 0, "
        "'unavailable', 0, 'safety_stock', 0, 'available', i, "
        "'locations', jsonb_build_object('main', i)) "
        "FROM generate_series(1, $1) AS i",
        count,
    )


async def _pending(backends: Backends, endpoint_id: str) -> int:
    """Events not numbered yet plus deliveries not made yet."""
    return int(
        await backends.pool.fetchval(
            "SELECT (SELECT count(*) FROM events WHERE seq IS NULL AND type <> 'ping') "
            "     + (SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 "
            "        AND status = 'pending')",
            endpoint_id,
        )
    )


@contextlib.asynccontextmanager
async def _loops(backends: Backends, settings: Settings, sequencer: bool) -> AsyncIterator[None]:
    wake = asyncio.Event()
    tasks = [asyncio.create_task(Deliverer(backends, settings, wake).run())]

    async def sequence() -> None:
        while True:
            await sequence_all(backends, wake)
            await asyncio.sleep(settings.event_sequence_interval_seconds)

    if sequencer:
        tasks.append(asyncio.create_task(sequence()))
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _drained(backends: Backends, endpoint_id: str, patience: float) -> None:
    deadline = time.monotonic() + patience
    while await _pending(backends, endpoint_id):
        if time.monotonic() > deadline:
            raise RuntimeError("deliveries still pending")
        await asyncio.sleep(0.01)


async def delivery_rate(backends: Backends, events: int) -> dict[str, Any]:
    """Events per second delivered to one loopback endpoint (see the module docstring)."""
    settings = Settings(webhook_allow_private_urls=True, webhook_poll_interval_seconds=0.05)
    out: dict[str, Any] = {"events": events, "endpoints": 1}
    with _receiver() as url:
        made = await create_endpoint(
            backends, NewEndpoint(url, ["stock.*"]), "bench", allow_private=True
        )
        endpoint = made.endpoint.id
        try:
            await _write_events(backends, events)
            await sequence_all(backends)
            started = time.perf_counter()
            async with _loops(backends, settings, sequencer=False):
                await _drained(backends, endpoint, 600)
            seconds = time.perf_counter() - started
            out["delivery"] = {"seconds": round(seconds, 3), "per_s": round(events / seconds, 1)}
            progress(f"webhook delivery: {events} events in {seconds:.2f} s")

            await _write_events(backends, events)
            started = time.perf_counter()
            async with _loops(backends, settings, sequencer=True):
                await _drained(backends, endpoint, 600)
            seconds = time.perf_counter() - started
            out["end_to_end"] = {
                "seconds": round(seconds, 3),
                "per_s": round(events / seconds, 1),
            }
            progress(f"webhook end to end: {events} events in {seconds:.2f} s")
        finally:
            await backends.pool.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint)
    return out


async def _main(events: int) -> dict[str, Any]:
    async with bench_env(secrets.token_hex(4)) as env:
        pool = await connect_pool(env.database_url, min_size=2, max_size=8)
        try:
            return await delivery_rate(Backends(pool=pool, cache=None), events)
        finally:
            await pool.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__)
    p.add_argument("--events", type=int, default=2000, help="events per measurement")
    p.add_argument("--receive", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.receive is not None:  # the receiver process
        uvicorn.run(_Counter(), host="127.0.0.1", port=args.receive, log_level="warning")
        return 0
    print(json.dumps(asyncio.run(_main(args.events)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
