"""Event retention (``STOCKGUARD_EVENT_RETENTION_DAYS``) by the housekeeping loop: numbered
events past it whose deliveries are done go, in batches; an event some endpoint still
waits for stays; ``pruned_through`` only rises, and the feed answers 410 below it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from stockguard.config import Settings
from stockguard.service.uow import Backends
from stockguard.workers import loops
from stockguard.workers.loops import prune_old_events, start_workers, stop_workers
from tests.webhook_receiver import (
    Receiver,
    add_events,
    create_endpoint,
    eventually,
    hook_settings,
    numbered,
)

pytestmark = pytest.mark.usefixtures("no_endpoints_after")


@pytest.fixture(autouse=True)
async def restore_horizon(backends: Backends) -> AsyncIterator[None]:
    """Put ``pruned_through`` back afterwards: other tests read the feed from seq 0."""
    before = await backends.pool.fetchval("SELECT pruned_through FROM event_counter")
    yield
    await backends.pool.execute("UPDATE event_counter SET pruned_through = $1", before)


async def add_old_events(backends: Backends, count: int, days: float, tag: str) -> list[str]:
    rows = await backends.pool.fetch(
        "INSERT INTO events (type, data, occurred_at) "
        "SELECT 'stock.changed', jsonb_build_object('sku', $1 || i::text), "
        "       now() - make_interval(secs => $2) "
        "FROM generate_series(1, $3) AS i ORDER BY i RETURNING event_id",
        f"OLD{tag}-",
        days * 86_400,
        count,
    )
    return [r["event_id"] for r in rows]


async def kept(backends: Backends, ids: list[str]) -> set[str]:
    rows = await backends.pool.fetch("SELECT event_id FROM events WHERE event_id = ANY($1)", ids)
    return {r["event_id"] for r in rows}


async def pruned_through(backends: Backends) -> int:
    return int(await backends.pool.fetchval("SELECT pruned_through FROM event_counter"))


async def test_old_events_go_unless_a_delivery_waits_and_the_feed_says_410_below(
    backends: Backends, client: httpx.AsyncClient, receiver: Receiver, uid: str
) -> None:
    endpoint, _ = await create_endpoint(backends, receiver.url("/r"), ["stock.changed"])
    old = await add_old_events(backends, 4, days=2, tag=uid)
    recent = await add_events(backends.pool, 1, tag=uid)
    seqs = await numbered(backends, old + recent)
    waiting = old[2]
    await backends.pool.execute(
        "UPDATE webhook_deliveries d SET status = 'delivered' FROM events e "
        "WHERE e.id = d.event_id AND d.endpoint_id = $1 AND e.event_id <> $2",
        endpoint,
        waiting,
    )
    before = await pruned_through(backends)

    removed = await prune_old_events(backends, retention_days=1)

    assert removed >= 3
    assert await kept(backends, old + recent) == {waiting, recent[0]}
    gone_seqs = [seqs[i] for i in old if i != waiting]
    horizon = await pruned_through(backends)
    assert horizon >= max(gone_seqs)
    assert horizon >= before
    deliveries = await backends.pool.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1", endpoint
    )
    assert deliveries == 2  # the removed events' deliveries went with them
    expired = await client.get("/v1/events", params={"after": horizon - 1})
    assert expired.status_code == 410
    assert expired.json()["code"] == "events_expired"
    fine = await client.get("/v1/events", params={"after": horizon, "limit": 500})
    assert fine.status_code == 200
    assert all(e["seq"] > horizon for e in fine.json()["items"])

    # Once the waiting delivery is done it goes too, and the horizon never drops.
    await backends.pool.execute(
        "UPDATE webhook_deliveries SET status = 'failed' WHERE endpoint_id = $1", endpoint
    )
    await prune_old_events(backends, retention_days=1)
    assert await kept(backends, old + recent) == set(recent)
    assert await pruned_through(backends) >= horizon
    await prune_old_events(backends, retention_days=1)  # nothing left to remove
    assert await pruned_through(backends) >= horizon


async def test_retention_works_in_batches_and_removes_old_pings(
    backends: Backends,
    receiver: Receiver,
    uid: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loops, "PRUNE_BATCH", 2)
    endpoint, _ = await create_endpoint(backends, receiver.url("/p"), ["order.*"])
    old = await add_old_events(backends, 5, days=3, tag=uid)
    await numbered(backends, old)
    ping_ids = []
    for age in (3, 0):
        row = await backends.pool.fetchrow(
            "INSERT INTO events (type, data, endpoint_id, occurred_at) "
            "VALUES ('ping', jsonb_build_object('endpoint_id', $1::text), $1, "
            "        now() - make_interval(days => $2)) RETURNING id, event_id",
            endpoint,
            age,
        )
        assert row is not None
        await backends.pool.execute(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id) VALUES ($1, $2)",
            endpoint,
            row["id"],
        )  # pending for ever: a ping whose sender died before recording it
        ping_ids.append(row["event_id"])

    assert await prune_old_events(backends, retention_days=1) >= 5

    assert await kept(backends, old) == set()
    assert await kept(backends, ping_ids) == {ping_ids[1]}


async def test_the_housekeeping_loop_applies_the_retention_setting(
    backends: Backends, settings: Settings, uid: str
) -> None:
    old = await add_old_events(backends, 2, days=8, tag=uid)
    young = await add_old_events(backends, 1, days=6, tag=f"{uid}y")
    await numbered(backends, old + young)
    tasks = start_workers(backends, hook_settings(settings, event_retention_days=7))
    try:

        async def pruned() -> bool:
            return await kept(backends, old) == set()

        await eventually(pruned, "the housekeeping loop to remove 8-day-old events")
    finally:
        await stop_workers(tasks)
    assert await kept(backends, young) == set(young)
