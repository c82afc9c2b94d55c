"""What the transactional outbox costs on placement (issue 9's target: throughput with
events ≥ 90 % of without), measured side by side in one run: the same spread orders and
the same batched hot-SKU orders (200 per transaction), events on and off, alternating,
with the sequencer numbering events in the background as the workers do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from bench.driver import Op, drive
from bench.env import progress
from bench.scenarios import Ctx, _batch_op, _place_op, _show
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.events import sequence_events

__all__ = ["outbox_cost", "webhook_delivery"]

ROUNDS = 2  # on, off, on, off: drift on the machine hits both alike


@contextlib.asynccontextmanager
async def _sequencer(backends: Backends, interval: float = 0.1) -> AsyncIterator[list[int]]:
    """Number events while a cell runs, as the worker loop does; yields [events numbered]."""
    numbered = [0]

    async def loop() -> None:
        while True:
            numbered[0] += await sequence_events(backends.pool, 5000)
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop())
    try:
        yield numbered
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def outbox_cost(ctx: Ctx) -> dict[str, Any]:
    cfg = ctx.cfg
    out: dict[str, Any] = {}

    def spread(b: Backends) -> Op:
        return _place_op(b, lambda: ctx.orders.spread("e"))

    def hot_batch(b: Backends) -> Op:
        return _batch_op(ctx, b, 10 if cfg.smoke else 200)

    shapes: dict[str, Callable[[Backends], Op]] = {"spread": spread, "hot_batch200": hot_batch}
    for shape, make_op in shapes.items():
        for c in cfg.parity_concurrency:
            runs: dict[str, list[float]] = {"on": [], "off": []}
            async with ctx.service(c + 1) as on:
                off = Backends(pool=on.pool, cache=on.cache, cache_mode=on.cache_mode, events=False)
                for _ in range(ROUNDS):
                    for mode, backends in (("on", on), ("off", off)):
                        async with _sequencer(on) as numbered:
                            cell = await drive(
                                make_op(backends),
                                concurrency=c,
                                duration=cfg.duration,
                                warmup=cfg.warmup,
                            )
                        _show(f"outbox {shape} events {mode}", cell)
                        if mode == "on":
                            cell["events_numbered"] = numbered[0]
                        runs[mode].append(cell["ok_per_s"])
            mean = {m: sum(v) / len(v) for m, v in runs.items()}
            ratio = mean["on"] / mean["off"] if mean["off"] else None
            out[f"{shape}_c{c}"] = {
                "orders_per_s_events_on": round(mean["on"], 1),
                "orders_per_s_events_off": round(mean["off"], 1),
                "runs": runs,
                "ratio_on_over_off": None if ratio is None else round(ratio, 3),
                "target": 0.9,
                "met": ratio is not None and ratio >= 0.9,
            }
            got = out[f"{shape}_c{c}"]["ratio_on_over_off"]
            progress(f"outbox {shape} c={c}: events on / off = {got}")
    await _announce(ctx)
    return out


async def _announce(ctx: Ctx) -> None:
    """The runs with events off changed SKUs without saying so: announce every bench SKU's
    levels as they are now (one ``stock.changed`` each, through the normal path), so the
    feed tells the levels again, as ``verify`` checks."""
    skus = sorted(set(ctx.cat.all_skus()))
    async with ctx.service(2) as backends:
        for i in range(0, len(skus), 500):
            chunk = skus[i : i + 500]

            async def touch(uow: UnitOfWork, chunk: list[str] = chunk) -> None:
                await uow.levels.touch_all_at(chunk)

            await run(backends, "bench", touch, operation="bench_announce")


async def webhook_delivery(ctx: Ctx) -> dict[str, Any]:
    """Events per second delivered to one endpoint on a loopback receiver
    (:func:`bench.delivery.delivery_rate`)."""
    from bench.delivery import delivery_rate

    async with ctx.service(4) as backends:
        return await delivery_rate(backends, 100 if ctx.cfg.smoke else 2000)
