"""Webhook delivery across real worker processes (``python -m stockguard worker``) against
the test database and a loopback receiver: two workers send each event to each endpoint
exactly once; ``kill -9`` of the worker in the middle of an attempt loses nothing (another
worker sends the event again, with the same ``webhook-id``, once the lease expires)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockguard.service.uow import Backends
from tests.conftest import Servers
from tests.webhook_receiver import (
    Received,
    Receiver,
    add_events,
    create_endpoint,
    delivery_rows,
    eventually,
    statuses,
)

pytestmark = pytest.mark.usefixtures("no_endpoints_after")

LEASE_SECONDS = 2.5


def _env(servers: Servers, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKGUARD_")}
    env.update(
        STOCKGUARD_DATABASE_URL=servers.database_url,
        STOCKGUARD_REDIS_URL=servers.redis_url,
        STOCKGUARD_REDIS_PREFIX=servers.redis_prefix,
        STOCKGUARD_LOG_JSON="true",
        STOCKGUARD_DATA_DIR=str(tmp_path / "data"),
        STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS="true",
        STOCKGUARD_WEBHOOK_RETRY_SCHEDULE="0.05,0.05,0.05",
        STOCKGUARD_WEBHOOK_TIMEOUT_SECONDS="1",
        STOCKGUARD_WEBHOOK_LEASE_SECONDS=str(LEASE_SECONDS),
        STOCKGUARD_WEBHOOK_POLL_INTERVAL_SECONDS="0.05",
        STOCKGUARD_EVENT_SEQUENCE_INTERVAL_SECONDS="0.05",
    )
    return env


class Workers:
    """``python -m stockguard worker`` processes of one test, stopped at its end."""

    def __init__(self, servers: Servers, tmp_path: Path) -> None:
        self.env = _env(servers, tmp_path)
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"worker-{len(self.procs)}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stockguard", "worker"],
                env=self.env,
                cwd=self.tmp_path,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("worker-*.log")))

    def stop(self) -> list[int]:
        codes = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                codes.append(proc.wait(timeout=20))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


@pytest.fixture
def workers(servers: Servers, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(servers, tmp_path)
    try:
        yield started
    finally:
        started.stop()


async def test_two_worker_processes_send_each_event_once_per_endpoint(
    backends: Backends, receiver: Receiver, workers: Workers, uid: str
) -> None:
    one, _ = await create_endpoint(backends, receiver.url("/one"))
    two, _ = await create_endpoint(backends, receiver.url("/two"))
    workers.start()
    workers.start()
    ids: list[str] = []
    for batch in range(6):  # in waves, so the two compete for the leases again and again
        ids += await add_events(backends.pool, 10, tag=f"{uid}-{batch}")

        async def sent(so_far: frozenset[str] = frozenset(ids)) -> bool:
            return len(set(receiver.ids("/one")) & so_far) >= len(so_far) // 2

        await eventually(sent, "half of the events so far at /one")

    async def all_delivered() -> bool:
        assert all(p.poll() is None for p in workers.procs), workers.logs()
        done = [await statuses(backends.pool, e) for e in (one, two)]
        return all(all(s.get(i) == "delivered" for i in ids) for s in done)

    await eventually(all_delivered, "every event delivered to both endpoints")
    assert workers.stop() == [0, 0], workers.logs()
    for path, endpoint in (("/one", one), ("/two", two)):
        got = [i for i in receiver.ids(path) if i in set(ids)]
        assert sorted(got) == sorted(ids)  # each exactly once
        assert got == ids  # and in seq order (one transaction per wave, in order)
        rows = await delivery_rows(backends.pool, endpoint)
        assert {rows[i]["attempts"] for i in ids} == {1}
    assert '"level": "error"' not in workers.logs()


async def test_kill_9_of_the_delivering_worker_loses_no_event(
    backends: Backends, receiver: Receiver, workers: Workers, uid: str
) -> None:
    arrived, killed = threading.Event(), threading.Event()

    def first_blocks_until_the_kill(_r: Received, before: int) -> int:
        if before == 0:
            arrived.set()
            killed.wait(30)
        return 200

    receiver.on("/crash", first_blocks_until_the_kill)
    endpoint, _ = await create_endpoint(backends, receiver.url("/crash"))
    ids = await add_events(backends.pool, 3, tag=uid)
    victim = workers.start()

    async def in_flight() -> bool:
        assert victim.poll() is None, workers.logs()
        return arrived.is_set()

    await eventually(in_flight, "the first attempt to reach the receiver")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    killed.set()
    # The delivery is still pending: the attempt in flight was never recorded.
    assert (await statuses(backends.pool, endpoint))[ids[0]] == "pending"
    workers.start()

    async def delivered() -> bool:
        found = await statuses(backends.pool, endpoint)
        return all(found.get(i) == "delivered" for i in ids)

    await eventually(delivered, "another worker to deliver everything")
    got = [i for i in receiver.ids("/crash") if i in set(ids)]
    assert got == [ids[0], *ids]  # the interrupted one again, same webhook-id; then on
    rows = await delivery_rows(backends.pool, endpoint)
    assert [rows[i]["attempts"] for i in ids] == [1, 1, 1]
    first, again = (r for r in receiver.at("/crash") if r.webhook_id == ids[0])
    assert first.body == again.body
    assert again.at - first.at >= LEASE_SECONDS - 0.5  # only after the lease expired
