"""Webhook delivery by the worker loops (API.md "Delivery"), against real PostgreSQL and a
real HTTP receiver on loopback: Standard Webhooks signatures checked by the
``standardwebhooks`` package, retries with the same ``webhook-id``, per-endpoint seq order,
isolation of slow endpoints, SSRF at delivery time, delete and deactivate, replay.

Events are written straight into the outbox (as the stock transactions write them) and
numbered by the real sequencer; waiting is bounded polling of real state."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from datetime import UTC

import pytest
from prometheus_client import REGISTRY
from standardwebhooks import Webhook, WebhookVerificationError

from stockguard.config import Settings
from stockguard.service import catalogue, webhook_endpoints
from stockguard.service.uow import Backends
from stockguard.store.db import connect_pool
from stockguard.workers import loops
from stockguard.workers.loops import start_workers, stop_workers
from tests.webhook_receiver import (
    Received,
    Receiver,
    add_events,
    create_endpoint,
    delivering,
    delivery_rows,
    eventually,
    hook_settings,
    numbered,
    statuses,
)

pytestmark = pytest.mark.usefixtures("no_endpoints_after")


def deliveries_total(outcome: str) -> float:
    value = REGISTRY.get_sample_value("stockguard_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


def runs(worker: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "stockguard_worker_runs_total", {"worker": worker, "outcome": outcome}
    )
    return value or 0.0


def oldest_age(endpoint_id: str) -> float | None:
    return REGISTRY.get_sample_value(
        "stockguard_webhook_oldest_undelivered_seconds", {"endpoint": endpoint_id}
    )


async def all_in(backends: Backends, endpoint_id: str, ids: list[str], status: str) -> None:
    async def done() -> bool:
        found = await statuses(backends.pool, endpoint_id)
        return all(found.get(i) == status for i in ids)

    await eventually(done, f"{len(ids)} deliveries to be {status}")


def mine(receiver: Receiver, path: str, ids: list[str]) -> list[str]:
    """The webhook ids this path received, in arrival order, of these events only."""
    wanted = set(ids)
    return [i for i in receiver.ids(path) if i in wanted]


async def test_each_event_is_posted_once_signed_per_standard_webhooks(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    endpoint, secret = await create_endpoint(backends, receiver.url("/signed"), ["stock.*"])
    ids = await add_events(backends.pool, 3, tag=uid)
    other = await add_events(backends.pool, 1, type_="order.placed", tag=uid)
    seqs = await numbered(backends, ids + other)
    before = deliveries_total("delivered")
    async with delivering(backends, hook_settings(settings)):
        await all_in(backends, endpoint, ids, "delivered")

    got = [r for r in receiver.at("/signed") if r.webhook_id in set(ids)]
    assert [r.webhook_id for r in got] == ids  # once each, in seq order
    assert other[0] not in receiver.ids("/signed")  # "stock.*" does not take order events
    occurred = {
        r["event_id"]: r["occurred_at"]
        for r in await backends.pool.fetch(
            "SELECT event_id, occurred_at FROM events WHERE event_id = ANY($1)", ids
        )
    }
    hook = Webhook(secret)
    for n, r in enumerate(got, start=1):
        payload = hook.verify(r.body, r.headers)  # raises unless the signature is right
        assert payload == {
            "id": r.webhook_id,
            "seq": seqs[r.webhook_id],
            "type": "stock.changed",
            "occurred_at": occurred[r.webhook_id]
            .astimezone(UTC)
            .isoformat()
            .replace("+00:00", "Z"),
            "data": {"sku": f"T{uid}-{n}", "n": n},
        }
        assert r.headers["content-type"] == "application/json"
        assert abs(int(r.headers["webhook-timestamp"]) - time.time()) < 60
        with pytest.raises(WebhookVerificationError):
            hook.verify(r.body.replace(b'"n":', b'"n": '), r.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(f"whsec_{'A' * 43}=").verify(got[0].body, got[0].headers)
    rows = await delivery_rows(backends.pool, endpoint)
    for i in ids:
        assert rows[i]["attempts"] == 1
        assert rows[i]["last_status_code"] == 200
        assert rows[i]["last_error"] is None
        assert rows[i]["delivered_at"] is not None
    assert deliveries_total("delivered") - before >= 3


async def test_a_receiver_failing_three_times_gets_the_event_four_times_with_one_id(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    receiver.on("/flaky", lambda _r, before: 500 if before < 3 else 200)
    endpoint, secret = await create_endpoint(backends, receiver.url("/flaky"))
    ids = await add_events(backends.pool, 1, tag=uid)
    await numbered(backends, ids)
    retries, delivered = deliveries_total("retry"), deliveries_total("delivered")
    async with delivering(backends, hook_settings(settings)):
        await all_in(backends, endpoint, ids, "delivered")

    got = receiver.at("/flaky")
    assert [r.webhook_id for r in got] == ids * 4
    assert len({r.body for r in got}) == 1  # the same event each time
    for r in got:
        Webhook(secret).verify(r.body, r.headers)
    assert [b.at - a.at >= 0.05 for a, b in itertools.pairwise(got)] == [True] * 3
    row = (await delivery_rows(backends.pool, endpoint))[ids[0]]
    assert (row["attempts"], row["status"], row["last_status_code"]) == (4, "delivered", 200)
    assert row["last_error"] is None
    assert deliveries_total("retry") - retries == 3
    assert deliveries_total("delivered") - delivered == 1


async def test_deliveries_go_in_seq_order_and_wait_behind_a_failing_head(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    first: list[str] = []

    def head_fails_twice(r: Received, _before: int) -> int:
        if not first:
            first.append(r.webhook_id)
        return 503 if r.webhook_id == first[0] and len(receiver.ids("/ordered")) <= 2 else 200

    receiver.on("/ordered", head_fails_twice)
    endpoint, _ = await create_endpoint(backends, receiver.url("/ordered"))
    ids = await add_events(backends.pool, 10, tag=f"{uid}a")
    ids += await add_events(backends.pool, 10, tag=f"{uid}b")
    seqs = await numbered(backends, ids)
    by_seq = sorted(ids, key=lambda i: seqs[i])
    async with delivering(backends, hook_settings(settings)):
        await all_in(backends, endpoint, ids, "delivered")
    # The head is tried three times before anything behind it goes; then seq order.
    assert mine(receiver, "/ordered", ids) == [by_seq[0]] * 3 + by_seq[1:]


async def test_a_spent_schedule_fails_the_delivery_and_the_queue_moves_on(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    ids = await add_events(backends.pool, 3, tag=uid)
    poison = ids[0]
    receiver.on("/poison", lambda r, _b: 500 if r.webhook_id == poison else 204)
    endpoint, _ = await create_endpoint(backends, receiver.url("/poison"))
    await numbered(backends, ids)
    failed = deliveries_total("failed")
    async with delivering(backends, hook_settings(settings, webhook_retry_schedule="0.05,0.1")):
        await all_in(backends, endpoint, ids[1:], "delivered")
    rows = await delivery_rows(backends.pool, endpoint)
    assert rows[poison]["status"] == "failed"
    assert rows[poison]["attempts"] == 3  # the first try and one per scheduled retry
    assert (rows[poison]["last_status_code"], rows[poison]["last_error"]) == (500, "HTTP 500")
    assert mine(receiver, "/poison", ids) == [poison] * 3 + ids[1:]
    assert deliveries_total("failed") - failed == 1


async def test_a_slow_endpoint_delays_neither_another_endpoint_nor_the_stock_path(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    release = threading.Event()
    receiver.on("/slow", lambda _r, _b: 200 if release.wait(20) else 500)
    slow, _ = await create_endpoint(backends, receiver.url("/slow"))
    fast, _ = await create_endpoint(backends, receiver.url("/fast"))
    ids = await add_events(backends.pool, 5, tag=uid)
    await numbered(backends, ids)
    try:
        async with delivering(backends, hook_settings(settings, webhook_timeout_seconds=25.0)):
            await all_in(backends, fast, ids, "delivered")
            assert mine(receiver, "/slow", ids) == ids[:1]  # still answering the first
            # The stock path does not wait for any delivery either.
            started = time.monotonic()
            await catalogue.put_location(backends, f"l{uid}", "l", 1, True, "t")
            await catalogue.put_sku(backends, f"S{uid}", "s")
            await catalogue.adjust_stock(
                backends, catalogue.Adjustment(f"S{uid}", f"l{uid}", "received", delta=5), "t"
            )
            assert time.monotonic() - started < 2.0
            assert mine(receiver, "/slow", ids) == ids[:1]
            release.set()
            await all_in(backends, slow, ids, "delivered")
    finally:
        release.set()
    assert mine(receiver, "/slow", ids) == ids
    assert mine(receiver, "/fast", ids) == ids


async def test_deleting_an_endpoint_stops_its_deliveries(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    arrived, release = threading.Event(), threading.Event()

    def block(_r: Received, _b: int) -> int:
        arrived.set()
        release.wait(20)
        return 500

    receiver.on("/gone", block)
    gone, _ = await create_endpoint(backends, receiver.url("/gone"))
    control, _ = await create_endpoint(backends, receiver.url("/control"))
    ids = await add_events(backends.pool, 2, tag=uid)
    await numbered(backends, ids)
    try:
        async with delivering(backends, hook_settings(settings, webhook_timeout_seconds=25.0)):
            await eventually(lambda: asyncio.to_thread(arrived.wait, 0.01), "the first attempt")
            await webhook_endpoints.delete_endpoint(backends, gone, "test")
            release.set()  # the attempt in flight fails; its outcome has nowhere to go
            later = await add_events(backends.pool, 3, tag=f"{uid}x")
            await all_in(backends, control, ids + later, "delivered")
    finally:
        release.set()
    assert mine(receiver, "/gone", ids + later) == ids[:1]
    assert await delivery_rows(backends.pool, gone) == {}


async def test_a_deactivated_endpoint_is_sent_nothing_until_active_again(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    paused, _ = await create_endpoint(backends, receiver.url("/paused"))
    control, _ = await create_endpoint(backends, receiver.url("/control"))
    ids = await add_events(backends.pool, 2, tag=uid)
    await numbered(backends, ids)  # queued for both
    off = webhook_endpoints.EndpointChanges(active=False)
    await webhook_endpoints.update_endpoint(backends, paused, off, "t", allow_private=True)
    later = await add_events(backends.pool, 1, tag=f"{uid}x")
    await numbered(backends, later)  # not queued for the inactive one
    async with delivering(backends, hook_settings(settings)):
        await all_in(backends, control, ids, "delivered")
        assert mine(receiver, "/paused", ids) == []
        assert await statuses(backends.pool, paused) == dict.fromkeys(ids, "pending")
        on = webhook_endpoints.EndpointChanges(active=True)
        await webhook_endpoints.update_endpoint(backends, paused, on, "t", allow_private=True)
        await all_in(backends, paused, ids, "delivered")
        await all_in(backends, control, later, "delivered")
    assert mine(receiver, "/paused", ids + later) == ids


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_private_address_is_refused_at_delivery_time(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str, host: str
) -> None:
    """Created while private URLs were allowed (or DNS said otherwise then): the worker
    checks again before each attempt and never connects."""
    endpoint, _ = await create_endpoint(backends, receiver.url("/private", host))
    ids = await add_events(backends.pool, 1, tag=uid)
    await numbered(backends, ids)
    strict = hook_settings(
        settings, webhook_allow_private_urls=False, webhook_retry_schedule="0.05"
    )
    async with delivering(backends, strict):
        await all_in(backends, endpoint, ids, "failed")
    row = (await delivery_rows(backends.pool, endpoint))[ids[0]]
    assert row["attempts"] == 2
    assert row["last_status_code"] is None
    assert row["last_error"].startswith("refused: url: ")
    assert "private" in row["last_error"]
    assert receiver.at("/private") == []


async def test_redirects_and_timeouts_are_failed_attempts(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    receiver.on("/moved", lambda _r, _b: 307)
    release = threading.Event()
    receiver.on("/late", lambda _r, _b: 200 if release.wait(5) else 504)
    moved, _ = await create_endpoint(backends, receiver.url("/moved"))
    late, _ = await create_endpoint(backends, receiver.url("/late"))
    ids = await add_events(backends.pool, 1, tag=uid)
    await numbered(backends, ids)
    quick = hook_settings(settings, webhook_retry_schedule="0.05", webhook_timeout_seconds=0.3)
    try:
        async with delivering(backends, quick):
            await all_in(backends, moved, ids, "failed")
            await all_in(backends, late, ids, "failed")
    finally:
        release.set()
    rows = await delivery_rows(backends.pool, moved)
    assert (rows[ids[0]]["last_status_code"], rows[ids[0]]["last_error"]) == (307, "HTTP 307")
    assert receiver.at("/redirected") == []  # never followed
    rows = await delivery_rows(backends.pool, late)
    assert rows[ids[0]]["last_error"] == "timeout after 0.3 s"
    assert len(mine(receiver, "/late", ids)) == 2


async def test_replay_sends_delivered_events_again_in_order_with_their_ids(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    endpoint, _ = await create_endpoint(backends, receiver.url("/replay"), ["stock.changed"])
    ids = await add_events(backends.pool, 4, tag=uid)
    seqs = await numbered(backends, ids)
    async with delivering(backends, hook_settings(settings)):
        await all_in(backends, endpoint, ids, "delivered")
        queued = await webhook_endpoints.replay(backends, endpoint, seqs[ids[1]], "t")
        assert queued >= 2  # ids[2:], and any later stock.changed still kept
        await all_in(backends, endpoint, ids, "delivered")
        await eventually(
            lambda: asyncio.sleep(0, len(mine(receiver, "/replay", ids)) == 6), "the replay"
        )
    assert mine(receiver, "/replay", ids) == ids + ids[2:]
    rows = await delivery_rows(backends.pool, endpoint)
    assert [rows[i]["attempts"] for i in ids] == [1, 1, 1, 1]


async def test_two_delivery_loops_send_each_event_once_per_endpoint(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    one, _ = await create_endpoint(backends, receiver.url("/one"))
    two, _ = await create_endpoint(backends, receiver.url("/two"))
    ids = await add_events(backends.pool, 40, tag=uid)
    async with delivering(backends, hook_settings(settings), processes=2) as loops:
        assert len({d.owner for d in loops}) == 2
        await numbered(backends, ids)
        await all_in(backends, one, ids, "delivered")
        await all_in(backends, two, ids, "delivered")
    assert mine(receiver, "/one", ids) == ids
    assert mine(receiver, "/two", ids) == ids


async def test_the_oldest_undelivered_gauge_follows_each_endpoint(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    release = threading.Event()
    receiver.on("/stuck", lambda _r, _b: 200 if release.is_set() else 500)
    stuck, _ = await create_endpoint(backends, receiver.url("/stuck"))
    fine, _ = await create_endpoint(backends, receiver.url("/fine"))
    ids = await add_events(backends.pool, 1, tag=uid)
    await numbered(backends, ids)
    slow_retries = hook_settings(settings, webhook_retry_schedule="0.2,0.2,0.2,0.2,0.2,0.2")
    async with delivering(backends, slow_retries):
        await all_in(backends, fine, ids, "delivered")

        async def gauged() -> bool:
            age = oldest_age(stuck)
            return age is not None and age > 0 and oldest_age(fine) == 0

        await eventually(gauged, "the gauge to show the stuck endpoint's age")
        release.set()
        await all_in(backends, stuck, ids, "delivered")
        await eventually(lambda: asyncio.sleep(0, oldest_age(stuck) == 0), "the gauge at 0")
        await webhook_endpoints.delete_endpoint(backends, stuck, "t")
        await eventually(lambda: asyncio.sleep(0, oldest_age(stuck) is None), "label removed")


async def test_start_workers_runs_the_sequencer_and_the_delivery_loop(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    endpoint, _ = await create_endpoint(backends, receiver.url("/wired"))
    ids = await add_events(backends.pool, 2, tag=uid)
    tasks = start_workers(backends, hook_settings(settings, event_sequence_interval_seconds=0.02))
    try:
        await all_in(backends, endpoint, ids, "delivered")
    finally:
        await stop_workers(tasks)
    assert mine(receiver, "/wired", ids) == ids
    assert (
        await backends.pool.fetchval(
            "SELECT count(*) FROM webhook_endpoints WHERE lease_owner IS NOT NULL"
        )
        == 0
    )  # a stopping worker gives its leases back


async def test_one_process_serves_at_most_its_concurrency_of_endpoints_at_once(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str
) -> None:
    release = threading.Event()
    receiver.on("/busy", lambda _r, _b: 200 if release.wait(20) else 500)
    busy, _ = await create_endpoint(backends, receiver.url("/busy"))
    ids = await add_events(backends.pool, 1, tag=uid)
    await numbered(backends, ids)
    one_at_a_time = hook_settings(settings, webhook_concurrency=1, webhook_timeout_seconds=25.0)
    try:
        async with delivering(backends, one_at_a_time):
            await eventually(
                lambda: asyncio.sleep(0, mine(receiver, "/busy", ids) == ids), "the busy one"
            )
            waiting, _ = await create_endpoint(backends, receiver.url("/waiting"))
            later = await add_events(backends.pool, 1, tag=f"{uid}x")
            await numbered(backends, later)
            await all_in(backends, busy, later, "pending")
            assert mine(receiver, "/waiting", later) == []  # its turn comes after busy's
            release.set()
            await all_in(backends, waiting, later, "delivered")
            await all_in(backends, busy, ids + later, "delivered")
    finally:
        release.set()


async def test_a_failing_pass_is_counted_and_the_delivery_loop_goes_on(
    backends: Backends, settings: Settings, receiver: Receiver, uid: str, migrated: str
) -> None:
    endpoint, _ = await create_endpoint(backends, receiver.url("/after"))
    ids = await add_events(backends.pool, 1, tag=uid)
    await numbered(backends, ids)
    errors = runs("delivery", "error")
    impatient_pool = await connect_pool(migrated, min_size=1, max_size=4, lock_timeout_ms=50)
    impatient = Backends(impatient_pool, backends.cache)
    try:
        async with backends.pool.acquire() as conn:
            locked = conn.transaction()
            await locked.start()
            await conn.execute("LOCK TABLE webhook_endpoints IN ACCESS EXCLUSIVE MODE")
            async with delivering(impatient, hook_settings(settings)):

                async def failing() -> bool:
                    return runs("delivery", "error") >= errors + 2

                await eventually(failing, "passes failing on the locked table")
                assert mine(receiver, "/after", ids) == []
                await locked.rollback()
                await all_in(backends, endpoint, ids, "delivered")
    finally:
        await impatient_pool.close()
    assert mine(receiver, "/after", ids) == ids


async def test_the_sequencer_pass_numbers_more_than_one_batch(
    backends: Backends, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loops, "SEQUENCE_BATCH", 2)
    ids = await add_events(backends.pool, 5, tag=uid)
    wake = asyncio.Event()
    assert await loops.sequence_all(backends, wake) >= 5
    assert wake.is_set()
    unnumbered = await backends.pool.fetchval(
        "SELECT count(*) FROM events WHERE event_id = ANY($1) AND seq IS NULL", ids
    )
    assert unnumbered == 0
