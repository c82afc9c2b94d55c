"""Event retention (``STOCKGUARD_EVENT_RETENTION_DAYS``) by the housekeeping loop: the
oldest events go as a prefix of the feed, in batches, stopping at the first event that
is young or that an endpoint still waits for; ``pruned_through`` only rises, and the feed
answers 410 below it.

Each test runs on a database of its own, built by the migrations: retention removes the
oldest events of the whole feed, which in the shared test database are other tests'."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from stockguard.api.app import build_app
from stockguard.config import Settings
from stockguard.service.uow import Backends
from stockguard.store import keys
from stockguard.store.db import connect_pool
from stockguard.store.migrate import upgrade_async
from stockguard.workers import loops
from stockguard.workers.loops import prune_old_events, start_workers, stop_workers
from tests.conftest import Servers, _with_database
from tests.webhook_receiver import create_endpoint, eventually, hook_settings, numbered


@pytest.fixture
async def own(servers: Servers) -> AsyncIterator[Backends]:
    """Backends on a fresh, migrated database of this test's own (no cache)."""
    name = f"stockguard_retention_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(servers.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = _with_database(servers.admin_url, name)
        await upgrade_async(url)
        pool = await connect_pool(url, min_size=1, max_size=6)
        try:
            yield Backends(pool=pool, cache=None)
        finally:
            await pool.close()
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def add(backends: Backends, count: int, days: float, tag: str) -> list[str]:
    """``count`` stock.changed events that occurred ``days`` ago, numbered."""
    rows = await backends.pool.fetch(
        "INSERT INTO events (type, data, occurred_at) "
        "SELECT 'stock.changed', jsonb_build_object('sku', $1 || i::text), "
        "       now() - make_interval(secs => $2) "
        "FROM generate_series(1, $3) AS i ORDER BY i RETURNING event_id",
        tag,
        days * 86_400,
        count,
    )
    ids = [r["event_id"] for r in rows]
    await numbered(backends, ids)
    return ids


async def kept(backends: Backends, ids: list[str]) -> list[str]:
    rows = await backends.pool.fetch(
        "SELECT event_id FROM events WHERE event_id = ANY($1) ORDER BY seq", ids
    )
    return [r["event_id"] for r in rows]


async def seq_of(backends: Backends, event_id: str) -> int:
    seq = await backends.pool.fetchval("SELECT seq FROM events WHERE event_id = $1", event_id)
    return int(seq)


async def pruned_through(backends: Backends) -> int:
    return int(await backends.pool.fetchval("SELECT pruned_through FROM event_counter"))


async def test_the_oldest_events_go_up_to_one_still_waited_for_and_the_feed_says_410(
    own: Backends, settings: Settings
) -> None:
    endpoint, _ = await create_endpoint(own, "http://127.0.0.1:9/never")
    old = await add(own, 5, days=2, tag="old")
    young = await add(own, 2, days=0, tag="young")
    waiting = old[3]
    await own.pool.execute(
        "UPDATE webhook_deliveries d SET status = 'delivered' FROM events e "
        "WHERE e.id = d.event_id AND e.event_id <> $1",
        waiting,
    )

    assert await prune_old_events(own, retention_days=1) == 3
    assert await kept(own, old + young) == old[3:] + young  # a prefix went, up to the wait
    horizon = await pruned_through(own)
    assert horizon == await seq_of(own, waiting) - 1
    deliveries = await own.pool.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1", endpoint
    )
    assert deliveries == 4  # the removed events' deliveries went with them

    async with own.pool.acquire() as conn:
        _, admin_key = await keys.create_key(conn, "admin", "retention")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(settings, own)),
        base_url="http://stockguard.test",
        headers={"Authorization": f"Bearer {admin_key}"},
    ) as client:
        expired = await client.get("/v1/events", params={"after": horizon - 1})
        assert expired.status_code == 410
        assert expired.json()["code"] == "events_expired"
        fine = await client.get("/v1/events", params={"after": horizon})
        assert [e["id"] for e in fine.json()["items"]] == old[3:] + young

        # Once nothing waits any more, the rest of the old ones go; the young stay.
        await own.pool.execute("UPDATE webhook_deliveries SET status = 'failed'")
        assert await prune_old_events(own, retention_days=1) == 2
        assert await kept(own, old + young) == young
        assert await pruned_through(own) == await seq_of(own, young[0]) - 1
        assert await prune_old_events(own, retention_days=1) == 0  # nothing more
        after = (await client.get("/v1/events", params={"after": 0})).json()
        assert after["code"] == "events_expired"


async def test_retention_works_in_batches_and_removes_old_pings(
    own: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loops, "PRUNE_BATCH", 2)
    endpoint, _ = await create_endpoint(own, "http://127.0.0.1:9/never", ["order.*"])
    old = await add(own, 5, days=3, tag="old")
    pings = []
    for age in (3, 0):
        row = await own.pool.fetchrow(
            "INSERT INTO events (type, data, endpoint_id, occurred_at) "
            "VALUES ('ping', jsonb_build_object('endpoint_id', $1::text), $1, "
            "        now() - make_interval(days => $2)) RETURNING id, event_id",
            endpoint,
            age,
        )
        assert row is not None
        await own.pool.execute(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id) VALUES ($1, $2)",
            endpoint,
            row["id"],
        )  # pending for ever: a ping whose sender died before recording it
        pings.append(row["event_id"])

    assert await prune_old_events(own, retention_days=1) == 5

    assert await kept(own, old) == []
    assert await kept(own, pings) == pings[1:]
    assert await pruned_through(own) == await own.pool.fetchval(
        "SELECT last_seq FROM event_counter"
    )


async def test_the_housekeeping_loop_applies_the_retention_setting(
    own: Backends, settings: Settings
) -> None:
    old = await add(own, 2, days=8, tag="old")
    young = await add(own, 1, days=6, tag="young")
    tasks = start_workers(own, hook_settings(settings, event_retention_days=7))
    try:

        async def pruned() -> bool:
            return await kept(own, old) == []

        await eventually(pruned, "the housekeeping loop to remove 8-day-old events")
    finally:
        await stop_workers(tasks)
    assert await kept(own, young) == young
